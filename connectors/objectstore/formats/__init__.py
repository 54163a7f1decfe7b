"""The record formats of feed objects: JSON lines, a JSON array, Parquet."""
