"""The peers (Quix Streams, Bytewax) run in their own virtualenvs (quixstreams pins an older
confluent-kafka; Bytewax brings its own), which have neither Faust nor aiokafka: the crm-stream
modules they import must not need them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PEERS = ("bench/quix_peer.py", "bench/bytewax_peer.py")
OWN_PACKAGES = ("bench", "crmstream", "connectors", "processors")

PEER_IMPORTS = (
    "bench.progress",
    "crmstream.kafka",
    "crmstream.serde",
    "crmstream.settings",
    "crmstream.topics",
    "processors.normalize",
    "processors.normalize.model",
    "processors.records",
)


def _own_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found.update(n for n in names if n.split(".")[0] in OWN_PACKAGES)
    return found


def test_the_list_covers_what_the_peers_import() -> None:
    for peer in PEERS:
        missing = _own_imports(REPO / peer) - set(PEER_IMPORTS)
        assert not missing, f"{peer} imports {sorted(missing)}: add them to PEER_IMPORTS"


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
