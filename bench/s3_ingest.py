"""Object-store ingest figures (issue 3): records/s for JSON lines and for Parquet, and the peak
memory while one 2-million-row Leanplum Parquet file is ingested.

    .venv/bin/python -m bench.s3_ingest [--json-records 1000000] [--parquet-rows 2000000]

What it does:

1. Starts the embedded Tansu broker (or uses ``--bootstrap-servers``) and a moto S3 server in a
   child process on 127.0.0.1 (``--store file`` reads a local folder instead).
2. Writes Leanplum feed objects: ``--json-records`` JSON-lines events in files of 50 000 (the
   Leanplum document's JSON file size), and one Parquet file of ``--parquet-rows`` rows in the
   Avro ``Event`` record shape of the same document (row groups of ``--row-group`` rows).
3. Runs the ``leanplum`` connector with ``--once`` in a fresh child process per format, each on its
   own topic prefix, and reads the child's own figures: records, wall seconds from the first
   listing to the last checkpoint (every record acknowledged by Kafka), and ``ru_maxrss`` (peak
   RSS) next to the RSS after imports, before any object was read.

Not a test: it takes minutes and its numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
JSON_FILE_EVENTS = 50_000  # seed 000 "Frequency": a JSON file per hour or about 50 000 events


def _event(i: int, rng: random.Random) -> dict[str, Any]:
    """A Leanplum JSON-feed message event (seed 000 "Email Sent")."""
    campaign = rng.randrange(1, 60)
    return {
        "event_id": f"{uuid.UUID(int=rng.getrandbits(128))}",
        "name": "(Leanplum) Email Send",
        "properties": {
            "user_id": f"user-{rng.randrange(100000):05d}",
            "device_id": f"{rng.getrandbits(64):016X}",
            "message_occurrence_id": f"{rng.getrandbits(60):x}",
            "time": f"2024-03-05 {i % 24:02d}:{i % 60:02d}:{i % 59:02d}.{i % 1000:03d}",
            "name": f"Campaign {campaign} Email",
            "message_id": 5066549580000000 + campaign * 2 + 1,
            "event_type": "Send",
            "channel": "Email",
            "campaign_id": 5066549580000000 + campaign * 2,
            "campaign_name": f"Campaign {campaign}",
            "email_id": f"{rng.getrandbits(96):024x}",
            "link_url": None,
            "link_id": None,
        },
    }


def write_objects(root: Path, json_records: int, parquet_rows: int, row_group: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crmdemo.samplefeeds import leanplum_parquet_row, leanplum_parquet_schema

    rng = random.Random(1)
    json_dir = root / "json" / "dt=2024-03-05"
    json_dir.mkdir(parents=True)
    for f in range(0, json_records, JSON_FILE_EVENTS):
        count = min(JSON_FILE_EVENTS, json_records - f)
        lines = b"".join(orjson.dumps(_event(f + i, rng)) + b"\n" for i in range(count))
        (json_dir / f"part-{f // JSON_FILE_EVENTS:05d}.json").write_bytes(lines)
    parquet_dir = root / "parquet" / "dt=2024-03-05"
    parquet_dir.mkdir(parents=True)
    schema = leanplum_parquet_schema()
    with pq.ParquetWriter(parquet_dir / "part-00000.parquet", schema) as writer:
        for start in range(0, parquet_rows, row_group):
            rows = [
                leanplum_parquet_row(_event(start + i, rng))
                for i in range(min(row_group, parquet_rows - start))
            ]
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def upload(endpoint: str, bucket: str, root: Path) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    config = TransferConfig(multipart_threshold=1 << 34)  # one PUT: moto keeps the ETag simple
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, path.relative_to(root).as_posix(), Config=config)


def _proc_status(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(args: argparse.Namespace) -> int:
    """One connector run in this process; prints its own figures as one JSON line.

    Peak memory is this process's ``VmHWM`` (Linux): ``ru_maxrss`` would not do, since Linux
    carries the parent's high-water mark over ``fork``+``exec`` and the parent has just written
    the Parquet file.
    """
    from connectors.feeds import LEANPLUM
    from connectors.objectstore.settings import ObjectStoreSettings
    from connectors.objectstore.source import ObjectStoreSource
    from crmstream.settings import Settings
    from crmstream.topics import create_topics
    from processors.normalize import EVENT_IDS

    settings = Settings.from_env(
        {
            "CRM_BOOTSTRAP_SERVERS": args.bootstrap_servers,
            "CRM_TOPIC_PREFIX": args.topic_prefix,
            "CRM_REPLICATION_FACTOR": "1",
            "CRM_METRICS_PORT": "0",
        }
    )
    create_topics(settings)
    config = ObjectStoreSettings(source=args.source, endpoint_url=args.endpoint_url, once=True)
    source = ObjectStoreSource(LEANPLUM, config, settings, key_of=EVENT_IDS["leanplum"])
    source.positions = source.checkpoints.load()  # startup, not ingest: timed apart
    baseline = _proc_status("VmRSS")
    started = time.perf_counter()
    stats = source.run()
    seconds = time.perf_counter() - started
    peak = _proc_status("VmHWM")
    print(
        orjson.dumps(
            {
                "records": stats.records,
                "objects": stats.ingested,
                "bytes": stats.bytes,
                "seconds": round(seconds, 2),
                "records_per_s": round(stats.records / seconds),
                "peak_rss_mib": round(peak / 1024, 1),
                "rss_before_ingest_mib": round(baseline / 1024, 1),
            }
        ).decode()
    )
    return 0


def run_child(name: str, source: str, endpoint: str | None, bootstrap: str) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.s3_ingest", "--child",
        "--source", source, "--bootstrap-servers", bootstrap,
        "--topic-prefix", f"bench{uuid.uuid4().hex[:8]}.",
    ]  # fmt: skip
    if endpoint:
        cmd += ["--endpoint-url", endpoint]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json-records", type=int, default=1_000_000)
    parser.add_argument("--parquet-rows", type=int, default=2_000_000)
    parser.add_argument("--row-group", type=int, default=250_000, help="Parquet rows per group")
    parser.add_argument("--store", choices=["moto", "file"], default="moto")
    parser.add_argument("--bootstrap-servers", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint-url", help=argparse.SUPPRESS)
    parser.add_argument("--topic-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    import contextlib

    from crmstream.broker import EmbeddedBroker

    work = Path(tempfile.mkdtemp(prefix="crm-s3-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        bootstrap = args.bootstrap_servers
        if bootstrap is None:
            broker = stack.enter_context(EmbeddedBroker(log_path=work / "tansu.log"))
            bootstrap = broker.bootstrap_servers
        t0 = time.perf_counter()
        write_objects(work / "feed", args.json_records, args.parquet_rows, args.row_group)
        parquet_file = work / "feed" / "parquet" / "dt=2024-03-05" / "part-00000.parquet"
        print(
            f"wrote {args.json_records} JSON-lines events and a {args.parquet_rows}-row Parquet "
            f"file ({parquet_file.stat().st_size / 2**20:.0f} MiB, {args.row_group} rows a "
            f"row group) in {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        endpoint: str | None = None
        if args.store == "moto":
            port = _free_port()
            moto = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stack.callback(moto.wait, 10)
            stack.callback(moto.terminate)
            endpoint = f"http://127.0.0.1:{port}"
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.1)
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            upload(endpoint, "bench-feed", work / "feed")
            sources = {f: f"s3://bench-feed/{f}" for f in ("json", "parquet")}
        else:
            sources = {f: f"file://{work / 'feed' / f}" for f in ("json", "parquet")}
        results = {
            "json-lines": run_child("json-lines", sources["json"], endpoint, bootstrap),
            "parquet": run_child("parquet", sources["parquet"], endpoint, bootstrap),
        }
    broker_name = "embedded Tansu" if not args.bootstrap_servers else bootstrap
    print(f"store: {args.store}; broker: {broker_name}")
    header = ("format", "records", "seconds", "records/s", "peak RSS MiB", "RSS before")
    print(
        f"{header[0]:<12}{header[1]:>10}{header[2]:>10}{header[3]:>12}{header[4]:>15}{header[5]:>12}"
    )
    for name, r in results.items():
        print(
            f"{name:<12}{r['records']:>10}{r['seconds']:>10}{r['records_per_s']:>12}"
            f"{r['peak_rss_mib']:>15}{r['rss_before_ingest_mib']:>12}"
        )
    print(orjson.dumps({"store": args.store, **results}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
