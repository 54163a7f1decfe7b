"""The Airship RTDS connector against the real replay server on loopback and a real broker.

Every test runs ``AirshipConnector`` (or the ``crm-stream`` process) against
``crmdemo.airship_replay`` and reads ``raw.airship`` back with manually assigned partitions.
Timeouts and back-offs are shortened through the connector's own settings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY

from connectors.airship.settings import AirshipSettings
from connectors.airship.source import AirshipConnector, AirshipError, RunStats
from connectors.runtime.checkpoints import CheckpointStore
from crmdemo.airship_replay import ReplayOptions, ReplayThread
from crmstream.errors import ConfigError
from crmstream.kafka import consumer_config
from crmstream.settings import Secret, Settings
from crmstream.topics import create_topics

pytestmark = pytest.mark.integration

APP_KEY = "app-key-123"
TOKEN = "rtds-token-xyz"
SECRET = "master-secret-abc"


def offset_of(i: int) -> str:
    """Opaque, base64-like offsets (TAXONOMY §4): nothing may compare them as numbers."""
    return base64.urlsafe_b64encode(f"off-{i:06d}".encode()).decode().rstrip("=")


def event(i: int, type_: str = "SEND") -> dict[str, Any]:
    return {
        "id": f"evt-{i:05d}",
        "type": type_,
        "offset": offset_of(i),
        "occurred": "2024-05-01T10:00:00.12Z",
        "processed": "2024-05-01T10:00:01.5Z",
        "device": {"channel": f"ch-{i}", "device_type": "IOS"},
        "body": {"push_id": f"push-{i % 7}"},
    }


def write_events(path: Path, indexes: range, *, append: bool = False) -> list[dict[str, Any]]:
    events = [event(i) for i in indexes]
    with path.open("ab" if append else "wb") as fh:
        for ev in events:
            fh.write(orjson.dumps(ev) + b"\n")
    return events


def consume_raw(settings: Settings, expected: int, timeout: float = 20.0) -> list[Any]:
    """Every record of raw.airship: until ``expected`` arrived, then a short quiet period so
    extras (duplicates) are seen too. Counted by consuming, not by watermark (Tansu)."""
    topic = settings.topic("raw.airship")
    consumer = Consumer(consumer_config(settings, group_id="airship-test-reader"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is None:
                if quiet_until is not None and time.monotonic() >= quiet_until:
                    break
                continue
            if msg.error() is not None:
                continue
            out.append(msg)
            if len(out) >= expected and quiet_until is None:
                quiet_until = time.monotonic() + 0.7
        return out
    finally:
        consumer.close()


def config(url: str, **overrides: Any) -> AirshipSettings:
    values: dict[str, Any] = {
        "app_key": APP_KEY,
        "token": Secret(TOKEN),
        "url": url,
        "start": "EARLIEST",
        "idle_timeout_s": 2.0,
        "backoff_min_s": 0.05,
        "backoff_max_s": 0.2,
        "not_found_retry_s": 0.6,
        "checkpoint_interval_s": 0.2,
        "stop_after_idle_s": 1.5,
    }
    values.update(overrides)
    return AirshipSettings(**values)


def run_connector(cfg: AirshipSettings, settings: Settings, timeout: float = 40.0) -> RunStats:
    async def go() -> RunStats:
        return await asyncio.wait_for(AirshipConnector(cfg, settings).run(), timeout)

    return asyncio.run(go())


def checkpoints(settings: Settings) -> dict[str, dict[str, Any]]:
    return CheckpointStore(settings, "airship").load(idle_timeout=0.5)


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    s = settings_factory()
    create_topics(s)
    return s


def replay(path: Path, **options: Any) -> ReplayThread:
    values: dict[str, Any] = {
        "app_key": APP_KEY,
        "token": TOKEN,
        "master_secret": SECRET,
        "keepalive_s": 0.2,
    }
    values.update(options)
    return ReplayThread(ReplayOptions(path=path, **values))


def ids(messages: list[Any]) -> list[str]:
    return [m.key().decode() for m in messages if m.key() is not None]


def test_start_earliest_keepalives_offset_updates_redirect_and_gzip(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    events = write_events(path, range(20))
    with path.open("ab") as fh:
        fh.write(b"\n")  # a keep-alive inside the stream
        fh.write(b'{"id": "bad-1", "offset": "x", "type": "SEND",}\n')  # seed-style bad JSON
    events += write_events(path, range(20, 25), append=True)

    with replay(path, keepalive_every=7) as server:
        stats = run_connector(config(server.url), settings)
        requests = list(server.requests)

    records = consume_raw(settings, 26)
    assert sorted(ids(records)) == sorted(e["id"] for e in events)
    assert len(records) == 26, "25 events and the invalid line, no keep-alive, no OFFSET_UPDATE"
    invalid = [m for m in records if m.key() is None]
    assert [m.value() for m in invalid] == [b'{"id": "bad-1", "offset": "x", "type": "SEND",}']
    first = next(m for m in records if m.key() == b"evt-00003")
    assert first.value() == orjson.dumps(events[3]), "published unchanged"
    headers = dict(first.headers() or [])
    assert headers["source"] == f"airship:{APP_KEY}#{offset_of(3)}".encode()
    assert headers["vendor"] == b"airship"
    assert not any(b"OFFSET_UPDATE" in m.value() for m in records)

    assert stats.keepalives >= 1 and stats.offset_updates >= 3
    assert stats.invalid_lines == 1 and stats.records == 26
    assert stats.checkpoint == offset_of(24)
    assert checkpoints(settings)[f"{APP_KEY}/events/all"]["resume_offset"] == offset_of(24)
    # The events were processed by Airship on 2024-05-01: the connector reads that far behind.
    behind = _metric("crm_airship_behind_seconds")
    assert behind == pytest.approx(time.time() - 1714557601.5, abs=60)

    # The 307 dance: the same body POSTed again to the same URL, with the cookie it set.
    redirect, replay_post = requests[0], requests[1]
    assert redirect.status == 307 and replay_post.status == 200
    assert replay_post.method == "POST" and replay_post.path == "/api/events"
    assert replay_post.body == redirect.body
    assert "rtds-affinity" in replay_post.cookies and "rtds-affinity" not in redirect.cookies
    assert orjson.loads(replay_post.body) == {"start": "EARLIEST", "enable_offset_updates": True}
    h = replay_post.headers
    assert h["Authorization"] == f"Bearer {TOKEN}"
    assert h["X-UA-Appkey"] == APP_KEY
    assert h["Accept"] == "application/vnd.urbanairship+x-ndjson; version=3;"
    assert "gzip" in h["Accept-Encoding"] and replay_post.gzip, "gzip stream decoded"
    assert stats.redirects == 1


def test_restart_resumes_with_resume_offset(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    write_events(path, range(10))
    with replay(path) as server:
        first = run_connector(config(server.url), settings)
        assert first.checkpoint == offset_of(9)
        write_events(path, range(10, 16), append=True)
        second = run_connector(config(server.url), settings)
        bodies = [orjson.loads(r.body) for r in server.requests if r.status == 200]

    assert bodies[0] == {"start": "EARLIEST", "enable_offset_updates": True}
    # The checkpoint wins over the configured start: resume_offset only, never both.
    assert bodies[1] == {"resume_offset": offset_of(9), "enable_offset_updates": True}
    assert second.records == 6 and second.checkpoint == offset_of(15)
    records = consume_raw(settings, 16)
    assert sorted(ids(records)) == [f"evt-{i:05d}" for i in range(16)]


def _partition_of(event_id: str, count: int) -> int:
    return zlib.crc32(event_id.encode()) % count


def test_partitions_split_the_stream_and_offset_update_advances_the_checkpoint(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    events = write_events(path, range(30))
    # The stream ends with events of partition 1 only: partition 0's connector never receives
    # them, but the OFFSET_UPDATE carries the last offset considered (seed 004).
    tail = [i for i in range(30, 60) if _partition_of(f"evt-{i:05d}", 2) == 1][:3]
    events += [event(i) for i in tail]
    with path.open("ab") as fh:
        for i in tail:
            fh.write(orjson.dumps(event(i)) + b"\n")
    last_zero = max(
        i for i in range(30) if _partition_of(f"evt-{i:05d}", 2) == 0
    )  # last event partition 0 really receives

    with replay(path) as server:
        stats = [
            run_connector(
                config(server.url, subset={"type": "PARTITION", "count": 2, "selection": k}),
                settings,
            )
            for k in (0, 1)
        ]
    records = consume_raw(settings, len(events))
    assert sorted(ids(records)) == sorted(e["id"] for e in events), "two partitions = the stream"
    assert stats[0].records + stats[1].records == len(events)
    saved = checkpoints(settings)
    zero = saved[f"{APP_KEY}/events/partition-0-of-2"]["resume_offset"]
    one = saved[f"{APP_KEY}/events/partition-1-of-2"]["resume_offset"]
    assert one == offset_of(tail[-1])
    assert zero == offset_of(tail[-1]) != offset_of(last_zero), "moved by OFFSET_UPDATE alone"
    assert stats[0].offset_updates >= 1


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"connector": "airship", **labels}) or 0.0


def test_stall_triggers_idle_reconnect_from_checkpoint(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    events = write_events(path, range(12))
    before = {
        "idle": _metric("crm_connector_idle_timeouts_total"),
        "reconnects": _metric("crm_connector_reconnects_total"),
        "errors": _metric("crm_connector_errors_total", kind="idle_timeout"),
        "records": _metric("crm_connector_records_total"),
    }
    with replay(path, stall_after=5, stall_s=4.0) as server:
        stats = run_connector(
            config(server.url, idle_timeout_s=1.0, stop_after_idle_s=2.5), settings
        )
        bodies = [orjson.loads(r.body) for r in server.requests if r.status == 200]
    assert stats.idle_timeouts == 1 and stats.reconnects >= 1
    assert stats.errors.get("idle_timeout") == 1
    # Reconnected from what was checkpointed: the 5th event's offset.
    assert bodies[1]["resume_offset"] == offset_of(4)
    assert _metric("crm_connector_idle_timeouts_total") == before["idle"] + 1
    assert _metric("crm_connector_errors_total", kind="idle_timeout") == before["errors"] + 1
    assert _metric("crm_connector_reconnects_total") >= before["reconnects"] + 1
    assert _metric("crm_connector_records_total") >= before["records"] + 12
    records = consume_raw(settings, 12)
    assert sorted(set(ids(records))) == sorted(e["id"] for e in events)


def test_disconnect_mid_stream_reconnects(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    events = write_events(path, range(15))
    with replay(path, disconnect_after=6, redirect="every") as server:
        stats = run_connector(config(server.url), settings)
        statuses = [r.status for r in server.requests]
    assert stats.reconnects == 1 and stats.errors.get("disconnect") == 1
    assert statuses == [307, 200, 307, 200], "a new 307 dance for every connection"
    records = consume_raw(settings, 15)
    assert sorted(set(ids(records))) == sorted(e["id"] for e in events)


@pytest.mark.parametrize("status", [401, 403, 400])
def test_fatal_statuses_stop_with_a_clear_error(
    settings: Settings, tmp_path: Path, status: int
) -> None:
    path = tmp_path / "events.ndjson"
    write_events(path, range(3))
    with replay(path, fail=(status,), redirect="never") as server:
        started = time.monotonic()
        with pytest.raises(AirshipError) as info:
            run_connector(config(server.url), settings)
        assert len(server.requests) == 1, "no retry"
    assert info.value.status == status
    assert f"HTTP {status}" in str(info.value)
    assert TOKEN not in str(info.value)
    assert time.monotonic() - started < 10


def test_revoked_token_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    write_events(path, range(3))
    with (
        replay(path, redirect="never") as server,
        pytest.raises(AirshipError, match="CRM_AIRSHIP_TOKEN") as info,
    ):
        run_connector(config(server.url, token=Secret("wrong-token-777")), settings)
    assert info.value.status == 401 and "wrong-token-777" not in str(info.value)


def test_402_and_5xx_back_off_and_retry(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    events = write_events(path, range(5))
    with replay(path, fail=(402, 500, 503), redirect="never") as server:
        stats = run_connector(config(server.url, backoff_min_s=0.1, backoff_max_s=0.4), settings)
        times = [r.at for r in server.requests]
        statuses = [r.status for r in server.requests]
    assert statuses == [402, 500, 503, 200]
    assert stats.errors == {"http_402": 1, "http_5xx": 2}
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Jittered exponential: attempt n waits in [min*2^(n-1)/2, min*2^(n-1)], capped at max.
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    assert all(g < 2.0 for g in gaps)
    assert len(consume_raw(settings, 5)) == len(events)


def test_404_retries_slowly(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    write_events(path, range(3))
    # Three 404s take longer than stop_after_idle: waiting for a stream is not being idle.
    with replay(path, fail=(404, 404, 404), redirect="never") as server:
        stats = run_connector(
            config(server.url, not_found_retry_s=0.8, backoff_min_s=0.01, backoff_max_s=0.02),
            settings,
        )
        times = [r.at for r in server.requests]
    assert stats.errors == {"http_404": 3} and stats.records == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.6 for g in gaps[:3]), gaps  # 0.75..1.0 x not_found_retry, not backoff


def test_compliance_stream_uses_basic_auth(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "compliance.ndjson"
    with path.open("wb") as fh:
        for i in range(4):
            ev = event(i, "COMPLIANCE")
            ev["device"] = {"channel": f"ch-{i}", "device_type": "EMAIL" if i % 2 else "SMS"}
            fh.write(orjson.dumps(ev) + b"\n")
    with replay(path, redirect="never") as server:
        cfg = config(
            server.url,
            stream="compliance",
            token=Secret(""),
            master_secret=Secret(SECRET),
            filters=[{"device_types": ["email"]}],
        )
        stats = run_connector(cfg, settings)
        request = server.requests[0]
    assert request.path == "/api/events/general" and request.status == 200
    expected = "Basic " + base64.b64encode(f"{APP_KEY}:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == expected
    assert orjson.loads(request.body)["filters"] == [{"device_types": ["email"]}]
    assert stats.records == 2  # the replay server applies device_types
    assert sorted(ids(consume_raw(settings, 2))) == ["evt-00001", "evt-00003"]
    assert checkpoints(settings)[f"{APP_KEY}/compliance/all"]["resume_offset"] == offset_of(3)


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"CRM_AIRSHIP_FILTERS": "[]"}, "CRM_AIRSHIP_FILTERS"),
        ({"CRM_AIRSHIP_FILTERS": '[{"channels": ["x"]}]'}, "CRM_AIRSHIP_FILTERS"),
        (
            {"CRM_AIRSHIP_SUBSET": '{"type": "PARTITION", "count": 2, "selection": 2}'},
            "CRM_AIRSHIP_SUBSET",
        ),
        ({"CRM_AIRSHIP_RESUME_OFFSET": "abc"}, "CRM_AIRSHIP_RESUME_OFFSET"),
    ],
)
def test_bad_configuration_is_rejected_before_connecting(
    settings: Settings, tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    path = tmp_path / "events.ndjson"
    write_events(path, range(3))
    with replay(path) as server:
        environ = {
            **os.environ,
            "CRM_AIRSHIP_APP_KEY": APP_KEY,
            "CRM_AIRSHIP_TOKEN": TOKEN,
            "CRM_AIRSHIP_URL": server.url,
            "CRM_AIRSHIP_START": "EARLIEST",
            **env,
        }
        environ.update({k: v for k, v in _settings_env(settings).items()})
        proc = subprocess.run(
            [sys.executable, "-m", "crmcli", "connect", "airship"],
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert server.requests == [], "rejected before any request"
    assert proc.returncode == 2, proc.stderr
    assert setting in proc.stderr
    assert TOKEN not in proc.stderr + proc.stdout
    with pytest.raises(ConfigError):
        AirshipSettings.from_env({**environ})


def _settings_env(settings: Settings) -> dict[str, str]:
    return {
        "CRM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CRM_TOPIC_PREFIX": settings.topic_prefix,
        "CRM_PARTITIONS": str(settings.partitions),
        "CRM_REPLICATION_FACTOR": "1",
        "CRM_METRICS_PORT": "0",
        "CRM_DATA_DIR": settings.data_dir,
    }


def test_kill_mid_stream_and_restart_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    events = write_events(path, range(400))
    env = {
        **os.environ,
        **_settings_env(settings),
        "CRM_AIRSHIP_APP_KEY": APP_KEY,
        "CRM_AIRSHIP_TOKEN": TOKEN,
        "CRM_AIRSHIP_CHECKPOINT_INTERVAL": "0.1",
        "CRM_AIRSHIP_BACKOFF_MIN": "0.05",
        "CRM_AIRSHIP_BACKOFF_MAX": "0.2",
        "CRM_AIRSHIP_IDLE_TIMEOUT": "2s",
    }
    cmd = [sys.executable, "-m", "crmcli", "connect", "airship", "--start", "EARLIEST"]
    with replay(path, interval_s=0.02) as server:
        cmd += ["--url", server.url]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Kill mid-stream, once a good part of the stream went through.
            deadline = time.monotonic() + 30
            while server.server.sent < 150 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        saved = checkpoints(settings).get(f"{APP_KEY}/events/all", {})
        assert saved, "no checkpoint before the kill"
        killed_at = saved["resume_offset"]
        assert killed_at != offset_of(399), "killed mid-stream"

        done = subprocess.run(
            [*cmd, "--stop-after-idle", "2s"], env=env, capture_output=True, text=True, timeout=90
        )
        bodies = [orjson.loads(r.body) for r in server.requests if r.status == 200]
    assert done.returncode == 0, done.stderr
    assert bodies[0]["start"] == "EARLIEST"
    assert "start" not in bodies[-1] and bodies[-1]["resume_offset"] not in (None, "")
    records = consume_raw(settings, len(events), timeout=30)
    assert sorted(set(ids(records))) == sorted(e["id"] for e in events), "no event missing"
    assert checkpoints(settings)[f"{APP_KEY}/events/all"]["resume_offset"] == offset_of(399)


def test_sample_feed_through_the_replay_command(settings: Settings, tmp_path: Path) -> None:
    """The bundled sample feed (duplicates, OFFSET_UPDATE lines, malformed lines) served by
    ``crm-stream airship-replay``, as the demo does: every line but OFFSET_UPDATE lands."""
    import random

    from crmdemo.samples import airship as airship_samples
    from crmdemo.samples import campaigns

    rng = random.Random(11)
    sample = airship_samples.generate(rng, 300, campaigns(rng))
    path = tmp_path / "airship.ndjson"
    path.write_bytes(b"".join(value + b"\n" for _key, value in sample.records))

    def is_offset_update(value: bytes) -> bool:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        return isinstance(record, dict) and record.get("type") == "OFFSET_UPDATE"

    expected = sorted(value for _k, value in sample.records if not is_offset_update(value))
    assert len(expected) == len(sample.records) - sample.expected_skips

    env = {**os.environ, "CRM_AIRSHIP_TOKEN": TOKEN, "CRM_AIRSHIP_APP_KEY": APP_KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "crmcli", "airship-replay", str(path), "--keepalive", "0.3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        assert "serving" in banner, banner + (server.stderr.read() if server.stderr else "")
        url = banner.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        stats = run_connector(config(url), settings)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(10)
    records = consume_raw(settings, len(expected))
    assert sorted(m.value() for m in records) == expected
    assert stats.records == len(expected)
    keyed = {m.value(): m.key() for m in records}
    for key, value in sample.records:
        if key is not None and not is_offset_update(value):
            assert keyed[value] == key, "keyed by the event id, as the sample says"


def test_replay_server_answers_like_airship(tmp_path: Path) -> None:
    """The replay server itself: the checks that make the connector tests meaningful."""
    import aiohttp

    path = tmp_path / "events.ndjson"
    write_events(path, range(3))
    bearer = {"Authorization": f"Bearer {TOKEN}", "X-UA-Appkey": APP_KEY}

    async def post(
        url: str, body: Any, headers: dict[str, str], path: str = "/api/events"
    ) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url + path, data=orjson.dumps(body), headers=headers, allow_redirects=False
            ) as resp,
        ):
            text = "" if resp.status == 200 else await resp.text()
            return resp.status, text

    async def get(url: str) -> int:
        # What a generic client would send after rewriting the 307'd POST as a GET.
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/api/events", headers=bearer) as got,
        ):
            return got.status

    with replay(path, redirect="never") as server:
        url = server.url
        checks = {
            "both": asyncio.run(post(url, {"start": "EARLIEST", "resume_offset": "x"}, bearer)),
            "neither": asyncio.run(post(url, {"filters": [{"types": ["SEND"]}]}, bearer)),
            "unknown": asyncio.run(post(url, {"start": "LATEST", "limit": 5}, bearer)),
            "empty": asyncio.run(post(url, {"start": "LATEST", "filters": []}, bearer)),
            "offset": asyncio.run(post(url, {"resume_offset": "nowhere"}, bearer)),
            "no_token": asyncio.run(post(url, {"start": "LATEST"}, {"X-UA-Appkey": APP_KEY})),
            "bearer_on_compliance": asyncio.run(
                post(url, {"start": "LATEST"}, bearer, "/api/events/general")
            ),
        }
        get_status = asyncio.run(get(url))
    for name in ("both", "neither", "unknown", "empty", "offset"):
        assert checks[name][0] == 400, (name, checks[name])
    assert "empty array" in checks["empty"][1] and "limit" in checks["unknown"][1]
    assert checks["no_token"][0] == 401 and checks["bearer_on_compliance"][0] == 401
    assert get_status == 405, "the stream is POST only: a GET cannot open it"


def test_start_latest_skips_the_backlog(settings: Settings, tmp_path: Path) -> None:
    import threading

    path = tmp_path / "events.ndjson"
    write_events(path, range(5))
    with replay(path) as server:

        def append_once_streaming() -> None:
            # New events only after the LATEST stream is open, as in real life.
            deadline = time.monotonic() + 20
            while not any(r.status == 200 for r in server.requests):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
            time.sleep(0.3)
            write_events(path, range(5, 8), append=True)

        later = threading.Thread(target=append_once_streaming, daemon=True)
        later.start()
        stats = run_connector(config(server.url, start="LATEST"), settings)
        later.join(5)
    assert stats.records == 3 and stats.checkpoint == offset_of(7)
    assert sorted(ids(consume_raw(settings, 3))) == ["evt-00005", "evt-00006", "evt-00007"]


def test_sigterm_flushes_and_checkpoints_what_was_published(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "events.ndjson"
    write_events(path, range(400))
    env = {
        **os.environ,
        **_settings_env(settings),
        "CRM_AIRSHIP_APP_KEY": APP_KEY,
        "CRM_AIRSHIP_TOKEN": TOKEN,
        "CRM_AIRSHIP_CHECKPOINT_INTERVAL": "30s",  # only the shutdown writes one
    }
    with replay(path, interval_s=0.02) as server:
        cmd = [sys.executable, "-m", "crmcli", "connect", "airship"]
        cmd += ["--url", server.url, "--start", "EARLIEST"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while server.server.sent < 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    saved = checkpoints(settings)[f"{APP_KEY}/events/all"]["resume_offset"]
    published = sorted(ids(consume_raw(settings, 100)))
    assert 100 <= len(published) < 400, "stopped mid-stream"
    # Everything read was published and acknowledged, and the checkpoint is its last offset.
    assert published == [f"evt-{i:05d}" for i in range(len(published))]
    assert saved == offset_of(len(published) - 1)
    assert f"checkpoint {saved}" in out.decode()
    # The restart resumes after the checkpoint: every event exactly once (issue 14).
    with replay(path, interval_s=0.0) as server:
        done = subprocess.run(
            [*cmd[:-4], "--url", server.url, "--stop-after-idle", "2s"],
            env=env,
            capture_output=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted(ids(consume_raw(settings, 400))) == [f"evt-{i:05d}" for i in range(400)]


class _RedirectingServer:
    """A load balancer that answers the first POST with 307 to ``location`` and a cookie, then
    streams three events to a POST that carries the cookie, then keep-alives."""

    def __init__(self, location: str) -> None:
        from aiohttp import web

        self.location = location
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._web = web
        self.url = ""

    async def _handle(self, request: Any) -> Any:
        web = self._web
        body = await request.read()
        self.requests.append((request.path_qs, dict(request.cookies), body))
        if request.cookies.get("lb") != "pinned":
            response = web.Response(status=307, headers={"Location": self.location})
            response.set_cookie("lb", "pinned")
            return response
        stream = web.StreamResponse(status=200)
        await stream.prepare(request)
        for i in range(3):
            await stream.write(orjson.dumps(event(i)) + b"\n")
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await asyncio.sleep(0.2)
                await stream.write(b"\n")
        return stream

    def __enter__(self) -> _RedirectingServer:
        import threading

        web = self._web
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app)

        async def start() -> str:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            return f"http://127.0.0.1:{port}"

        self._runner = runner
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self.url = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.mark.parametrize(
    ("location", "followed"),
    [
        ("/api/events/pinned?lb=1", "/api/events/pinned?lb=1"),  # same host, another path
        ("http://203.0.113.9:8443/api/events", "/api/events"),  # another host: not followed
    ],
)
def test_307_follows_location_on_the_same_host_with_its_cookie(
    settings: Settings, location: str, followed: str
) -> None:
    with _RedirectingServer(location) as server:
        stats = run_connector(config(server.url), settings)
        requests = list(server.requests)
    (first_path, first_cookies, first_body), (path, cookies, body) = requests[:2]
    assert (first_path, first_cookies) == ("/api/events", {})
    assert (path, cookies, body) == (followed, {"lb": "pinned"}, first_body)
    assert all(p == followed for p, _, _ in requests[1:]), "no loop back through the 307"
    assert stats.redirects == 1
    assert sorted(ids(consume_raw(settings, 3))) == ["evt-00000", "evt-00001", "evt-00002"]
