"""What a state directory holds, by table and by kind of file: ``python -m bench.state_breakdown
DIR [DIR ...]``.

Every RocksDB store under each DIR (a directory holding ``CURRENT``) is counted by its files:
SST files by level (read from the store's own metadata, opened read-only next to its writer),
the write-ahead log (``NNNNNN.log``), RocksDB's info logs (``LOG``, ``LOG.old.*``), ``MANIFEST``,
``OPTIONS`` and the rest (``CURRENT``, ``IDENTITY``, ``LOCK``, other files). Stores are grouped
by table: a crm-stream store ``<table>-<partition>.db`` or a Quix Streams store
``<store>/<partition>`` counts under ``<table>``. The sizes are ``st_size``, as the bench's
``state MB / M keys`` adds them up (bench/run.py), so the totals match it.

``--json`` prints the breakdown as JSON instead of a table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

_WAL = re.compile(r"^\d+\.log$")
_SST = re.compile(r"^\d+\.sst$")
_CRM_STORE = re.compile(r"^(?P<table>.+)-\d+\.db$")


def _kind(name: str) -> str:
    if _SST.match(name):
        return "sst"
    if _WAL.match(name):
        return "wal"
    if name == "LOG" or name.startswith("LOG.old."):
        return "info-log"
    if name.startswith("MANIFEST-"):
        return "manifest"
    if name.startswith("OPTIONS-"):
        return "options"
    return "other"


def _table_of(store: Path, root: Path) -> str:
    match = _CRM_STORE.match(store.name)
    if match:
        return match.group("table")
    # Quix Streams: <state dir>/<group>/<store>/<partition>
    if store.name.isdigit() and store.parent != root:
        return store.parent.name
    return store.name


def _sst_levels(store: Path) -> dict[str, int]:
    """SST file name -> level, from the store's metadata (empty if it does not open)."""
    try:
        import rocksdict
    except ImportError:
        return {}
    try:
        options = rocksdict.Options(raw_mode=True)
        db = rocksdict.Rdict(
            str(store), options=options, access_type=rocksdict.AccessType.read_only()
        )
    except Exception:  # another process's layout (column families) or a store mid-creation
        try:
            names = rocksdict.Rdict.list_cf(str(store))
            cfs = {n: rocksdict.Options(raw_mode=True) for n in names if n != "default"}
            db = rocksdict.Rdict(
                str(store),
                options=rocksdict.Options(raw_mode=True),
                column_families=cfs,
                access_type=rocksdict.AccessType.read_only(),
            )
        except Exception:
            return {}
    try:
        return {f["name"].lstrip("/"): int(f["level"]) for f in db.live_files()}
    finally:
        db.close()


def breakdown(root: Path, levels: bool = True) -> dict[str, Any]:
    """``{"total": bytes, "tables": {table: {"stores": n, kind: bytes, ...}}}``; an SST file
    counts under ``sst-L<level>`` (``sst-L?`` when the level is unknown: a file no longer live,
    or levels not read)."""
    tables: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total = 0
    seen: set[Path] = set()
    for current in sorted(root.rglob("CURRENT")):
        store = current.parent
        seen.add(store)
        table = tables[_table_of(store, root)]
        table["stores"] += 1
        sst_level = _sst_levels(store) if levels else {}
        for f in store.iterdir():
            if not f.is_file():
                continue
            size = f.stat().st_size
            kind = _kind(f.name)
            if kind == "sst":
                level = sst_level.get(f.name)
                kind = f"sst-L{'?' if level is None else level}"
                table["sst-files"] += 1
            table[kind] += size
            total += size
    # Files outside any store (offsets files, checkpoints, ...).
    for f in root.rglob("*"):
        if f.is_file() and not any(p in seen for p in f.parents):
            tables["(outside stores)"]["other"] += f.stat().st_size
            total += f.stat().st_size
    return {"total": total, "tables": {k: dict(v) for k, v in sorted(tables.items())}}


def render(name: str, data: dict[str, Any]) -> str:
    kinds = sorted(
        {k for t in data["tables"].values() for k in t if k not in ("stores", "sst-files")}
    )
    mb = 2**20
    head = ["table", "stores", "ssts", *kinds, "total"]
    rows = [head]
    sums: dict[str, int] = defaultdict(int)
    for table, counts in data["tables"].items():
        row = [table, str(counts.get("stores", 0)), str(counts.get("sst-files", 0))]
        for kind in kinds:
            row.append(f"{counts.get(kind, 0) / mb:.2f}")
            sums[kind] += counts.get(kind, 0)
        row.append(f"{sum(counts.get(k, 0) for k in kinds) / mb:.2f}")
        rows.append(row)
    rows.append(
        ["all", "", "", *(f"{sums[k] / mb:.2f}" for k in kinds), f"{data['total'] / mb:.2f}"]
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"{name} (MB)"]
    for r in rows:
        cells = zip(r, widths, strict=True)
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-levels", action="store_true", help="do not open the stores")
    args = p.parse_args(argv)
    out = {str(d): breakdown(d, levels=not args.no_levels) for d in args.dirs}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print("\n\n".join(render(name, data) for name, data in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
