"""crm-stream benchmarks: ``python -m bench.run`` (``make bench``)."""
