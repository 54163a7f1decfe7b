"""The Faust floor: how fast a Faust agent reads the benchmark's raw topics when it does nothing.

The same Faust settings and event loop as the worker (broker options from
:func:`processors.faust_engine.faust_broker_kwargs`, ``take_events`` batches of
``CRM_WORKER_BATCH_SIZE`` within
``CRM_WORKER_BATCH_WITHIN``), the same generated raw records, and an agent that only counts
them. Whatever it reaches bounds any Faust worker on this machine and broker, crm-stream
included: the difference between this and ``bench.run``'s crm-stream figure is the worker's own
work.

``python -m bench.faust_floor [--events N] [--bootstrap-servers H:P]`` prints records/s and CPU
seconds per million for the agent's process (an embedded Tansu broker unless one is given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import faust

from bench import generate
from bench.run import preload
from crmstream.broker import EmbeddedBroker
from crmstream.resources import tansu_dev_profile
from crmstream.settings import Settings
from crmstream.topics import VENDORS, create_topics, raw_topic
from processors.app import use_event_loop
from processors.faust_engine import faust_broker_kwargs


def measure(bootstrap: str, events: int, partitions: int, workdir: Path) -> dict[str, Any]:
    prefix = f"floor{uuid.uuid4().hex[:6]}."
    env = tansu_dev_profile()
    env.update(
        {
            "CRM_BOOTSTRAP_SERVERS": bootstrap,
            "CRM_TOPIC_PREFIX": prefix,
            "CRM_PARTITIONS": str(partitions),
            "CRM_DATA_DIR": str(workdir),
        }
    )
    settings = Settings.from_env(env)
    use_event_loop(settings.event_loop)  # the worker's loop (CRM_EVENT_LOOP, default uvloop)
    create_topics(settings)
    data = generate.generate(events)
    total = data.total
    preload(bootstrap, prefix, data)

    app = faust.App(
        settings.topic("floor"),
        store="memory://",
        datadir=str(workdir / "faust"),
        web_enabled=False,
        topic_partitions=partitions,
        key_serializer="raw",
        value_serializer="raw",
        **faust_broker_kwargs(settings),
    )
    topic = app.topic(
        *[settings.topic(raw_topic(v)) for v in VENDORS],
        key_serializer="raw",
        value_serializer="raw",
    )
    result: dict[str, Any] = {"events": total}
    state = {"n": 0, "t0": 0.0, "cpu0": 0.0}

    async def count(stream: Any) -> None:
        async for batch in stream.take_events(
            settings.worker_batch_size, within=settings.worker_batch_within_s
        ):
            if state["n"] == 0:
                state["t0"], state["cpu0"] = time.perf_counter(), time.process_time()
            state["n"] += len(batch)
            if state["n"] >= total:
                elapsed = time.perf_counter() - state["t0"]
                cpu = time.process_time() - state["cpu0"]
                result.update(
                    records_per_s=round(state["n"] / elapsed, 1),
                    cpu_s_per_million=round(cpu / state["n"] * 1e6, 1),
                )
                # Stop the worker the way an operator would (app.stop() from inside an agent does
                # not end Worker.execute_from_commandline).
                os.kill(os.getpid(), signal.SIGTERM)
                return

    app.agent(topic, name="count")(count)
    worker = faust.Worker(app, loglevel="warning", quiet=True, override_logging=False)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    asyncio.set_event_loop(asyncio.new_event_loop())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faust_floor")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap-servers", default="")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="faust-floor-"))
    try:
        if args.bootstrap_servers:
            result = measure(args.bootstrap_servers, args.events, args.partitions, workdir)
        else:
            with EmbeddedBroker(log_path=workdir / "tansu.log") as broker:
                result = measure(broker.bootstrap_servers, args.events, args.partitions, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "records_per_s" not in result:
        print(f"the agent did not read all {result['events']} records")
        return 1
    print(
        f"Faust floor (an agent that only counts): {result['events']} raw records, "
        f"{result['records_per_s']:,.0f} records/s, {result['cpu_s_per_million']} CPU s per million"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
