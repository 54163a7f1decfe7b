"""The Segment receiver's settings (``CRM_SEGMENT_*``), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connectors.runtime.settings import settings_from_env
from crmstream.errors import ConfigError
from crmstream.settings import (
    Secret,
    parse_duration,
    parse_int,
    parse_port,
    positive,
    setting,
)

CONNECTOR = "segment"
VENDOR = "segment"
RESERVED_PATHS = ("/healthz", "/livez", "/readyz", "/metrics")


def parse_path(text: str) -> str:
    value = text.strip()
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    return value


@dataclass(frozen=True)
class SegmentSettings:
    """The receiver's own settings (``CRM_SEGMENT_*``); Kafka comes from :class:`Settings`."""

    host: str = setting(
        "SEGMENT_HOST",
        "127.0.0.1",
        None,
        "Address the receiver listens on (0.0.0.0 in a container behind an ingress)",
    )
    port: int = setting("SEGMENT_PORT", 8088, parse_port, "Port of the webhook receiver")
    path: str = setting(
        "SEGMENT_PATH", "/segment", parse_path, "URL path Segment's Webhooks destination posts to"
    )
    max_body_bytes: int = setting(
        "SEGMENT_MAX_BODY_BYTES",
        4 * 1024 * 1024,
        positive(parse_int),
        "Largest request body accepted; larger gets 413",
    )
    ack_timeout_s: float = setting(
        "SEGMENT_ACK_TIMEOUT",
        10.0,
        parse_duration,
        "Longest wait for Kafka to acknowledge a request's events before answering 503",
    )
    shared_secret: Secret = setting(
        "SEGMENT_SHARED_SECRET",
        Secret(""),
        None,
        "Webhook shared secret (or CRM_SEGMENT_SHARED_SECRET_FILE); empty accepts unsigned posts",
        secret=True,
    )
    app_id: str = setting(
        "SEGMENT_APP_ID",
        "",
        None,
        "app_id header of the raw records: the Segment source (docs/events.md, Segment)",
    )

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ConfigError("CRM_SEGMENT_HOST", "must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError("CRM_SEGMENT_PORT", f"port out of range: {self.port}")
        if not self.path.startswith("/"):
            raise ConfigError("CRM_SEGMENT_PATH", f"must start with '/', got {self.path!r}")
        if self.path.rstrip("/") in RESERVED_PATHS or self.path == "/":
            raise ConfigError("CRM_SEGMENT_PATH", f"{self.path!r} is reserved")
        if self.max_body_bytes <= 0:
            raise ConfigError("CRM_SEGMENT_MAX_BODY_BYTES", "must be greater than 0")
        if not 0.1 <= self.ack_timeout_s <= 300:
            raise ConfigError(
                "CRM_SEGMENT_ACK_TIMEOUT", "must be between 100ms and 300s (Segment times out)"
            )
        if not isinstance(self.shared_secret, Secret):
            raise ConfigError("CRM_SEGMENT_SHARED_SECRET", "must be a Secret, never a plain str")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> SegmentSettings:
        return settings_from_env(cls, environ, **overrides)
