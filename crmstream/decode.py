"""``crm-stream decode TOPIC``: an output topic as JSON lines, whatever its Avro wire format.

Each record becomes one line, an envelope around the decoded value::

    {"topic": "crm.events", "partition": 0, "offset": 41, "timestamp": 1732550000000,
     "key": "AIRSHIP:abc", "schema": "CanonicalEvent", "value": {...}}

* ``value`` is the Avro record: enums as their symbol names, timestamps as epoch-ms integers,
  maps as objects; ``null`` (and ``schema`` null) for a tombstone.
* Bytes (the record key, ``DeadLetter.raw`` / ``raw_key``) are strings in the Avro JSON
  encoding's convention: each byte is the character U+0000..U+00FF of the same number, i.e.
  ISO-8859-1. ASCII text such as JSON stays readable, and ``s.encode("latin-1")`` gives the
  exact bytes back (non-ASCII UTF-8 shows as mojibake, but nothing is lost).
* Every character outside printable ASCII (U+0020..U+007E), in bytes and in text alike, is
  written as a JSON ``\\uXXXX`` escape, so each record is one line of plain ASCII: a reader that
  splits on Unicode line breaks (U+0085, U+2028: Python's ``str.splitlines()``) or a terminal
  never sees a raw control character. Any JSON parser reads the same strings back.
* A record that is not decodable is printed with ``"error"`` and its raw ``"bytes"`` instead of
  ``value``, reported on stderr, and makes the exit status 1; the next records still print.

Partitions are assigned manually from offset 0 (no consumer group, nothing committed), so it
never disturbs the worker. Records of different partitions interleave.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from typing import IO, Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from crmstream.errors import BrokerError, SerdeError
from crmstream.kafka import consumer_config, wait_for_kafka
from crmstream.serde import AvroSerde
from crmstream.settings import Settings


def _bytes_as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code > 0xFFFF:  # outside the BMP: a UTF-16 surrogate pair, as JSON spells it
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def json_line(line: dict[str, Any]) -> bytes:
    """One record's JSON line, newline-terminated, in printable ASCII only.

    orjson writes non-ASCII characters raw and escapes only U+0000..U+001F; outside strings its
    output is ASCII, so escaping every other character in place keeps the JSON valid."""
    text = orjson.dumps(line, default=_bytes_as_text).decode()
    return (_NOT_PRINTABLE_ASCII.sub(_escape, text) + "\n").encode("ascii")


def resolve_topic(consumer: Consumer, settings: Settings, name: str) -> str:
    """``name`` as given if it exists, else with ``CRM_TOPIC_PREFIX`` in front."""
    candidates = [name]
    if settings.topic_prefix and not name.startswith(settings.topic_prefix):
        candidates.insert(0, settings.topic(name))
    try:
        existing = consumer.list_topics(timeout=10).topics
    except Exception as exc:  # KafkaException, with librdkafka's reason
        raise BrokerError(f"cannot list topics on {settings.bootstrap_servers}: {exc}") from exc
    for candidate in candidates:
        meta = existing.get(candidate)
        if meta is not None and meta.error is None:
            return candidate
    raise BrokerError(f"no topic {' or '.join(candidates)} on {settings.bootstrap_servers}")


def envelope(msg: Message, serde: AvroSerde) -> tuple[dict[str, Any], str | None]:
    """The JSON line of one record, and the decode error if there was one."""
    value = msg.value()
    _, timestamp = msg.timestamp()
    line: dict[str, Any] = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": timestamp,
        "key": msg.key(),
    }
    if value is None:
        line.update(schema=None, value=None)
        return line, None
    try:
        schema_name, record = serde.decode(value, msg.topic())
    except SerdeError as exc:
        line.update(error=str(exc), bytes=value)
        return line, str(exc)
    line.update(schema=schema_name, value=record)
    return line, None


def run(args: argparse.Namespace, settings: Settings, out: IO[bytes] | None = None) -> int:
    """Print the topic; stop after ``--max`` records or ``--idle-timeout`` quiet seconds."""
    if args.max < 0:
        raise SerdeError("--max must be >= 0")
    if args.idle_timeout < 0:
        raise SerdeError("--idle-timeout must be >= 0")
    sink = out if out is not None else sys.stdout.buffer
    wait_for_kafka(settings)  # else one line, exit 69: not librdkafka's reports and a timeout
    serde = AvroSerde(settings)
    # A throwaway group id: librdkafka wants one, but partitions are assigned and nothing is
    # committed, so the worker's group never sees this reader.
    consumer = Consumer(consumer_config(settings, group_id=f"crm-decode-{uuid.uuid4().hex[:12]}"))
    printed = failed = 0
    try:
        topic = resolve_topic(consumer, settings, args.topic)
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(partitions)])
        last = time.monotonic()
        while not args.max or printed < args.max:
            msg = consumer.poll(0.2)
            if msg is None:
                if not _flush(sink):
                    return 1 if failed else 0
                if args.idle_timeout and time.monotonic() - last >= args.idle_timeout:
                    break
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or not err.retriable():
                    raise BrokerError(f"reading {topic}: {err.str()}")
                continue
            last = time.monotonic()
            line, problem = envelope(msg, serde)
            if problem is not None:
                failed += 1
                print(
                    f"crm-stream decode: {topic}[{msg.partition()}]@{msg.offset()}: {problem}",
                    file=sys.stderr,
                )
            try:
                sink.write(json_line(line))
            except BrokenPipeError:
                return 1 if failed else 0
            printed += 1
        _flush(sink)
    finally:
        consumer.close()
        serde.close()
    return 1 if failed else 0


def _flush(sink: IO[bytes]) -> bool:
    """Flush when the topic goes quiet, not per line; False when the reader went away
    (``| head``), which ends the command without a traceback."""
    try:
        sink.flush()
    except BrokenPipeError:
        return False
    return True
