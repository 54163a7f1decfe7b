"""The vendor registry: what each vendor feed *is*, declared once (STYLE: "declare what a vendor
is"; Meltano's stream attributes).

Everything that names vendors derives from :data:`VENDORS`: the raw topics
(:mod:`crmstream.topics`), the CLI's choices, the worker's topics and metrics labels. The code
that knows a vendor's record format lives with its half of the pipeline and is registered by
the same name: ``processors.normalize.NORMALIZERS`` / ``EVENT_IDS`` (the normalizer and the
event id, TAXONOMY §6), ``connectors.registry.CONNECTORS`` (how its events arrive) and
``crmdemo.samples.GENERATORS`` (sample events). ``tests/unit/test_vendor_registry.py`` fails when
those, the Avro enums or the Helm chart disagree with this registry. ARCHITECTURE.md has the
checklist for adding a vendor.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VendorSpec:
    """One vendor feed.

    ``name`` is the lowercase name used in topic names (``raw.<name>``), metric labels and the
    CLI; ``symbol`` is the Avro enum symbol and the prefix of canonical event ids
    (``<SYMBOL>:<vendor event id>``, TAXONOMY §1).
    """

    name: str
    symbol: str
    title: str
    arrives: str  # how events reach crm-stream
    event_id: str  # what identifies one event (the raw-topic key), TAXONOMY §6.x

    @property
    def raw_topic(self) -> str:
        return f"raw.{self.name}"


VENDORS: dict[str, VendorSpec] = {
    spec.name: spec
    for spec in (
        VendorSpec(
            "leanplum",
            "LEANPLUM",
            "Leanplum AWS S3 Data Feed",
            "JSON and Parquet files under dt=YYYY-MM-DD/ in a bucket",
            "event_id (§6.1)",
        ),
        VendorSpec(
            "pinpoint",
            "PINPOINT",
            "Amazon Pinpoint event stream",
            "JSON records on Kinesis, or Firehose files on S3",
            "synthesized from event_type, client_id, message or activity id and times [A-10]",
        ),
        VendorSpec(
            "segment",
            "SEGMENT",
            "Leanplum as a Segment source",
            "Segment track events pushed to a webhook",
            "messageId (§6.3)",
        ),
        VendorSpec(
            "flarelane",
            "FLARELANE",
            "FlareLane CRM event export",
            "JSON or Parquet files under projectid=/date= partitions",
            "id, a ULID (§6.4)",
        ),
        VendorSpec(
            "airship",
            "AIRSHIP",
            "Airship Real-Time Data Streaming",
            "an endless NDJSON HTTP stream, resumed by offset",
            "id (§6.5)",
        ),
    )
}

VENDOR_NAMES: tuple[str, ...] = tuple(VENDORS)
