"""Sample feeds for the push and stream connectors, run in-process: a Segment sender and a
throwaway Kinesis stream (moto). For the demo and the tests; nothing in production imports this.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable

import orjson

from connectors.pinpoint_kinesis import KinesisSettings, KinesisSource, RunStats
from connectors.runtime.kafka import KeyFunction, now_ms
from connectors.segment import BackgroundReceiver, SegmentSettings, signature
from crmstream.errors import CrmStreamError
from crmstream.settings import Secret, Settings


def post_samples(
    url: str,
    records: Iterable[bytes],
    secret: str | None = None,
    *,
    batch_size: int = 1,
    retries: int = 5,
    timeout: float = 30.0,
) -> Tally[int]:
    """POST sample events to a receiver as Segment would; returns ``{status: requests}``.

    ``batch_size > 1`` sends JSON arrays, as Segment's batching does. A record that is not a
    JSON object is sent alone (in a batch it would make the whole array a 400). A 503 is
    retried with back-off, like Segment. With ``secret`` every request is signed.
    """
    import httpx

    values = list(records)
    tally: Tally[int] = Tally()
    bodies: list[bytes] = []
    batch: list[bytes] = []
    for value in values:
        if batch_size > 1 and _is_object(value):
            batch.append(value)
            if len(batch) == batch_size:
                bodies.append(b"[" + b",".join(batch) + b"]")
                batch = []
        else:
            bodies.append(value)
    if batch:
        bodies.append(b"[" + b",".join(batch) + b"]")
    with httpx.Client(timeout=timeout) as client:
        for body in bodies:
            headers = {"Content-Type": "application/json"}
            if secret:
                headers["X-Signature"] = signature(secret, body)
            for attempt in range(retries + 1):
                status = client.post(url, content=body, headers=headers).status_code
                if status != 503 or attempt == retries:
                    break
                time.sleep(min(0.5 * 2**attempt, 5.0))
            tally[status] += 1
    return tally


def _is_object(value: bytes) -> bool:
    try:
        return isinstance(orjson.loads(value), dict)
    except orjson.JSONDecodeError:
        return False


def segment_feed(
    settings: Settings, values: list[bytes], secret: str = "demo-secret"
) -> Tally[int]:
    """Run a receiver on a free loopback port, post ``values`` signed, one per request; returns
    ``{status: requests}``. For ``make demo``: every 200 is one event in the raw topic; a sample
    that is not a JSON object gets 400 and never reaches Kafka, as with a real sender."""
    config = SegmentSettings(port=0, shared_secret=Secret(secret), app_id="demo-segment")
    with BackgroundReceiver(config, settings) as receiver:
        return post_samples(receiver.url, values, secret)


def kinesis_feed(
    settings: Settings, values: list[bytes], key_of: KeyFunction, shards: int = 2
) -> RunStats:
    """Put ``values`` on a throwaway moto Kinesis on loopback and run the connector once.

    For ``make demo`` only: it needs the ``moto[server]`` dev dependency. The stream name is
    fresh each run, so checkpoints of an earlier demo on the same broker never apply.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise CrmStreamError(
            "the Kinesis demo needs moto[server] (pip install 'crm-stream[demo]')"
        ) from exc
    import boto3

    from crmstream.broker import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "kinesis",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
        )
        stream = f"pinpoint-demo-{now_ms()}"
        client.create_stream(StreamName=stream, ShardCount=shards)
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            client.put_records(
                StreamName=stream,
                Records=[
                    {"Data": value, "PartitionKey": str(start + i)} for i, value in enumerate(chunk)
                ],
            )
        config = KinesisSettings(
            stream=stream,
            region="us-east-1",
            endpoint_url=endpoint,
            poll_interval_s=0.05,
            app_id="demo-pinpoint",
        )
        return KinesisSource(config, settings, client=client, key_of=key_of).run(once=True)
    finally:
        server.stop()
