"""The worker's local state: the key layout (:mod:`.keys`), the reserved keys' values
(:mod:`.codecs`) and the windowed tables read and written a batch at a time (:mod:`.table`)."""
