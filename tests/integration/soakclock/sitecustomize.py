"""Test-only simulated clock, loaded by a worker process whose PYTHONPATH starts with this folder.

``CRM_TEST_CLOCK_FILE=<path>``: the worker's clock (what a stats window's last update and the
stats and dedupe expiries are measured on, :func:`processors.app.wall_clock_ms`) reads epoch
milliseconds from that file, which the soak test advances through simulated months; and both
expiries run every ``CRM_TEST_EXPIRY_EVERY`` seconds of wall time (default 0.25), instead of an
interval derived from retentions of days. Kafka, Faust and every timeout keep the real time.
"""

from __future__ import annotations

import os

_CLOCK = os.environ.get("CRM_TEST_CLOCK_FILE", "")

if _CLOCK:
    from pathlib import Path

    import processors.app as _app

    _path = Path(_CLOCK)
    _every = float(os.environ.get("CRM_TEST_EXPIRY_EVERY", "0.25"))

    def _simulated_ms() -> int:
        return int(_path.read_text().strip())

    _app.wall_clock_ms = _simulated_ms
    _app.Worker.DEDUPE_EXPIRY_S = _every
    _app.expiry_interval_s = lambda retention_s: _every  # type: ignore[assignment]
    print(f"SIMULATED CLOCK from {_CLOCK}, expiries every {_every}s", flush=True)
