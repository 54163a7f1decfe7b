"""Source connectors: one per vendor feed, each publishing raw vendor events, unchanged, to its
per-vendor raw topic keyed by the vendor's event id."""
