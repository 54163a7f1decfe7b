"""The Quix peer runs in its own virtualenv (quixstreams pins an older confluent-kafka), which
has neither Faust nor aiokafka: the crm-stream modules it imports must not need them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PEER_IMPORTS = (
    "bench.progress",
    "crmstream.serde",
    "crmstream.settings",
    "crmstream.topics",
    "processors.normalize",
    "processors.normalize.model",
    "processors.records",
)


def test_peer_imports_need_neither_faust_nor_aiokafka() -> None:
    # A None entry in sys.modules makes "import aiokafka" raise ImportError, as if absent.
    code = (
        "import sys\n"
        "for name in ('aiokafka', 'faust', 'mode'):\n"
        "    sys.modules[name] = None\n"
        f"for module in {PEER_IMPORTS!r}:\n"
        "    __import__(module)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
