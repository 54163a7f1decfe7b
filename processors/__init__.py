"""Raw vendor topics -> canonical events, dedupe, campaign stats, dead letters."""
