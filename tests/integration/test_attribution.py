"""Conversions and last-touch attribution on the real broker (issue 24 item 2): two workers in
one group with ``CRM_ATTRIBUTION=true`` and a bearer token.

Touches of two vendors (Segment deliveries, Airship sends and a holdout's CONTROL) are raw records
through the raw path, which hands them to the attribution; Segment's ``Order Completed`` is
listed in ``CRM_CONVERSION_EVENTS``. Conversions arrive on ``conversions`` as JSON and as Avro,
with a raw Leanplum ``CONVERSION`` event among them, and four records that are not conversions.
Checked:

* exactly the attributions the rule gives (ids and content), on ``attributions``, keyed by
  campaign: a user touched by two vendors (the later vendor's campaign), a control-group user,
  a conversion after the window, one before any exposure, a repeat of the same name, a second
  name, a replayed conversion id;
* each bad record is one dead letter with its reason at its position;
* ``GET /api/attribution`` answers the same rows from either worker (each holds part of the
  users), filters by name, and refuses a request without the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from crmstream.broker import free_port
from crmstream.kafka import consumer_config
from crmstream.serde import AvroSerde
from crmstream.settings import Settings
from crmstream.topics import create_topics
from processors.api.server import OPENAPI
from processors.app import changelog_specs
from processors.attribution import Conversion, windows_of
from tests.integration.attribution_harness import (
    D,
    Expected,
    H,
    Publisher,
    conversion_json,
    raw_leanplum_conversion,
    raw_touch,
    segment_track,
    wait_for,
)
from tests.integration.harness import WorkerProcess, require_alive
from tests.kafka_helpers import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow(seconds=90)]

TOKEN = "attribution-api-token-0001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


SPEC = OpenAPI.from_file_path(str(OPENAPI))


def api(base: str, params: dict[str, Any], headers: dict[str, str] = AUTH) -> httpx.Response:
    """GET /api/attribution, waiting out 503s; every answer must match openapi.yaml."""
    deadline = time.monotonic() + 90
    args = {k: str(v) for k, v in params.items()}
    while True:
        response = httpx.get(base + "/api/attribution", params=args, headers=headers, timeout=30)
        mimetype = response.headers["content-type"].split(";")[0]
        SPEC.validate_response(
            MockRequest(base, "get", "/api/attribution", args=args),
            MockResponse(response.content, response.status_code, content_type=mimetype),
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(1)


def committed_total(settings: Settings, topic: str) -> int:
    """The worker group's committed offsets on ``topic``, added up (0: none committed)."""
    consumer = Consumer(consumer_config(settings, group_id=settings.topic(settings.app_id)))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in metadata.partitions]
        return sum(max(0, tp.offset) for tp in consumer.committed(tps, timeout=10))
    finally:
        consumer.close()


def test_conversions_are_credited_to_the_last_touch_across_vendors(
    crm_env_factory: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    envs = [
        crm_env_factory(
            CRM_ATTRIBUTION="true",
            CRM_ATTRIBUTION_WINDOW="3d,Signed Up=1d",
            CRM_CONVERSION_EVENTS="Order Completed",
            CRM_API_TOKEN=TOKEN,
            CRM_API_PORT=str(port),
            CRM_API_URL=f"http://127.0.0.1:{port}",
            CRM_METRICS_PORT=str(free_port()),
            CRM_DATA_DIR=str(tmp_path / f"state-{i}"),
        )
        for i, port in enumerate(ports)
    ]
    envs[1].update({k: envs[0][k] for k in ("CRM_TOPIC_PREFIX", "CRM_APP_ID")})
    settings = Settings.from_env(envs[0])
    create_topics(settings, extra=changelog_specs(settings))
    serde = AvroSerde(settings)
    out = Publisher(settings)
    expected = Expected(windows_of(*settings.attribution_windows()))
    t0 = (time.time_ns() // 1_000_000 - 5 * D) // H * H

    n = 0

    def tch(
        vendor: str, user: str, at: int, campaign: str, kind: str, variant: str | None = None
    ) -> None:
        nonlocal n
        n += 1
        topic, key, raw, touch = raw_touch(vendor, n, user, at, campaign, kind, variant)
        out.publish(topic, [(key, raw)])
        expected.add(user, touch)

    # Through the raw path, which hands the touches to the attribution.
    tch("SEGMENT", "u1", t0, "spring", "DELIVERY", "A")
    tch("AIRSHIP", "u1", t0 + H, "push-1", "SEND", "1")
    tch("AIRSHIP", "u2", t0, "winback", "CONTROL", "1")
    tch("SEGMENT", "u3", t0, "spring", "DELIVERY", "B")
    tch("SEGMENT", "u5", t0, "flash", "DELIVERY")
    tch("SEGMENT", "u6", t0, "news", "DELIVERY")

    workers = [WorkerProcess(env, tmp_path / f"worker-{i}.log") for i, env in enumerate(envs)]
    try:
        for worker in workers:
            worker.start()
        # Every touch held before the conversions come (the rule decides on arrival).
        inputs = settings.topic("attribution-inputs")
        read_topic(
            settings,
            inputs,
            until=lambda records: sum(r.value().count(b'"k":"t"') for r in records) >= 6,
            timeout=180,
        )
        for worker in workers:
            require_alive(worker, "after the touches")

        def conv(user: str, cid: str, name: str, at: int, value: float | None = None) -> Conversion:
            return Conversion(cid, user, name, at, "conversions", value, "USD" if value else None)

        good = [
            conv("u1", "o1", "Order Completed", t0 + 2 * H, 30.25),  # AIRSHIP push-1 (later)
            conv("u1", "o2", "Order Completed", t0 + 3 * H, 5.0),  # a repeat: not counted
            conv("u1", "s1", "Signed Up", t0 + 3 * H),  # a second name: counted
            conv("u1", "o1", "Order Completed", t0 + 2 * H, 30.25),  # the same id again
            conv("u2", "o3", "Order Completed", t0 + H, 10.0),  # control group
            conv("u3", "o4", "Order Completed", t0 + 3 * D + H),  # after the window
            conv("u4", "o5", "Order Completed", t0),  # no exposure at all
        ]
        out.publish(
            "conversions",
            [(c.user_id.encode(), conversion_json(c, with_id=True)) for c in good[:4]],
        )
        avro = serde.encode(
            "Conversion",
            {
                "user_id": "u2",
                "name": "Order Completed",
                "occurred_at": t0 + H,
                "value": 10.0,
                "currency": "USD",
                "conversion_id": "o3",
            },
            settings.topic("conversions"),
        )
        out.publish("conversions", [(b"u2", avro)])
        out.publish(
            "conversions",
            [(c.user_id.encode(), conversion_json(c, with_id=True)) for c in good[5:]],
        )
        for c in good:
            expected.add(c.user_id, c)
        # A vendor's own conversion event, and Segment's listed track event (raw path).
        topic, key, raw, lp = raw_leanplum_conversion("c1", "u5", t0 + H, "flash-lp")
        out.publish(topic, [(key, raw)])
        expected.add("u5", lp)
        out.publish(
            "raw.segment",
            [(b"s2", segment_track("s2", "u6", "order completed", t0 + H, revenue=12))],
        )
        expected.add("u6", Conversion("SEGMENT:s2", "u6", "Order Completed", t0 + H, "SEGMENT"))
        bad = {
            b'{"name":"Order Completed","occurred_at":1}': "missing_user_id",
            b'{"user_id":"u9","name":"x","occurred_at":"last tuesday"}': "invalid_timestamp",
            b'{"user_id":"u9","name":"x","occurred_at":1,"sku":"A-1"}': "invalid_conversion",
            b"<xml/>": "invalid_json",
        }
        landed = out.publish("conversions", [(b"bad", raw) for raw in bad])

        want = expected.attributions()
        assert len(want) == 5  # u1 twice, u2 (control), u5, u6
        topic = settings.topic("attributions")
        got = read_topic(
            settings,
            topic,
            until=lambda records: len(records) >= len(want),
            timeout=180,
        )
        records: dict[str, list[dict[str, Any]]] = {}
        for msg in got:
            _, record = serde.decode(msg.value(), topic)
            assert msg.key() == want[record["attribution_id"]].touch.campaign.encode()
            records.setdefault(record["attribution_id"], []).append({**record, "processed_at": 0})
        assert set(records) == set(want)
        for aid, a in want.items():
            assert all(r == a.record(0) for r in records[aid]), (records[aid], a.record(0))
        # Once each (o1's id came twice: a repeat is not sent again once Kafka acknowledged the
        # first, nor twice in one batch; only a crash can repeat an attribution).
        assert {aid: len(r) for aid, r in records.items()} == dict.fromkeys(want, 1)

        dead = read_topic(
            settings,
            settings.topic("dead-letter"),
            until=lambda records: len(records) >= len(bad),
            timeout=60,
        )
        reasons = {}
        for msg in dead:
            _, record = serde.decode(msg.value(), settings.topic("dead-letter"))
            reasons[record["raw"]] = (
                record["reason"],
                record["source_partition"],
                record["source_offset"],
            )
        assert reasons == {
            raw: (reason, partition, offset)
            for (raw, reason), (partition, offset) in zip(bad.items(), landed, strict=True)
        }

        params = {"from": t0 - D, "to": t0 + 10 * D}
        want_rows = expected.rows()
        for port in ports:
            base = f"http://127.0.0.1:{port}"
            response = api(base, params)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["campaigns"] == want_rows, f"{port}\n{body['campaigns']}\n{want_rows}"
            assert body["conversions"] == 4 and body["control_conversions"] == 1
            # u3 converted after the window of its touch, u4 before any exposure.
            assert (
                body["unattributed"]
                == expected.unattributed()
                == [
                    {
                        "name": "Order Completed",
                        "conversions": 2,
                        "no_exposure": 1,
                        "outside_window": 1,
                    }
                ]
            )
            assert body["unattributed_conversions"] == 2
        first = want_rows[0]
        assert (first["vendor"], first["campaign_id"], first["conversions"]) == (
            "AIRSHIP",
            "push-1",
            2,
        )
        assert first["value"] == {"USD": 30.25}
        named = api(f"http://127.0.0.1:{ports[1]}", {**params, "name": "Signed Up"}).json()
        assert [(r["campaign_id"], r["conversions"]) for r in named["campaigns"]] == [("push-1", 1)]
        assert api(f"http://127.0.0.1:{ports[0]}", params, headers={}).status_code == 401
        assert api(f"http://127.0.0.1:{ports[0]}", {"from": "soon"}).status_code == 400

        # Every stream the workers read gets its positions committed (Faust commits only the
        # partitions it holds acknowledgements for: the attribution paths gave none, so a
        # restart read both topics again from their first offsets).
        streams = [settings.topic(t) for t in ("conversions", "attribution-inputs")]
        streams.append(settings.topic("stats-updates"))
        wait_for(
            lambda: all(committed_total(settings, t) > 0 for t in streams),
            60,
            "committed offsets on " + ", ".join(streams),
        )
    finally:
        for worker in workers:
            worker.stop()
