"""How an object may be compressed; each module reads one codec and types its errors as
:class:`~connectors.objectstore.errors.ObjectReadError`."""
