"""Options of one object-store connector, validated on construction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

from crmstream.errors import ConfigError

RETRY_MODES = ("adaptive", "standard", "legacy")


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStoreSettings:
    """Options of one object-store connector (``crm-stream connect <feed> --help``).

    Validated on construction; a bad value raises :class:`ConfigError` naming the option.
    Credentials are never options: boto3's standard chain (environment, shared config, SSO,
    instance or task role) supplies them.
    """

    source: str  # s3://bucket/prefix or file:///path
    app_id: str | None = None  # TAXONOMY §1: app id for vendors whose payload has none
    endpoint_url: str | None = None  # S3-compatible store (MinIO, moto, Ceph); None = AWS
    region: str | None = None
    poll_interval_s: float = 60.0
    late_days: int = 3  # seed 000: near-midnight events can sit in the neighbouring dt= folder
    once: bool = False  # list until nothing new is left, then exit (demo, tests, batch jobs)
    checkpoint_every: int = 50_000  # rows between mid-file checkpoints
    retry_mode: str = "adaptive"
    max_attempts: int = 10
    project_id: str | None = None  # only this projectid= folder (FlareLane)

    def __post_init__(self) -> None:
        url = urlparse(self.source)
        if url.scheme == "s3":
            if not url.netloc:
                raise ConfigError("--source", f"{self.source!r} has no bucket (s3://bucket/prefix)")
        elif url.scheme == "file":
            if url.netloc not in {"", "localhost"}:
                raise ConfigError("--source", f"{self.source!r}: use file:///absolute/path")
        else:
            raise ConfigError(
                "--source", f"{self.source!r}: expected s3://bucket/prefix or file:///path"
            )
        if self.endpoint_url is not None and urlparse(self.endpoint_url).scheme not in {
            "http",
            "https",
        }:
            raise ConfigError("--endpoint-url", f"{self.endpoint_url!r} is not an http(s) URL")
        if self.poll_interval_s <= 0:
            raise ConfigError("--poll-interval", "must be greater than 0")
        if self.late_days < 0:
            raise ConfigError("--late-days", "must be 0 or more")
        if self.checkpoint_every <= 0:
            raise ConfigError("--checkpoint-every", "must be greater than 0")
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError("--retry-mode", f"must be one of {', '.join(RETRY_MODES)}")
        if self.max_attempts < 1:
            raise ConfigError("--max-attempts", "must be 1 or more")
        if self.project_id is not None and not re.fullmatch(r"[^/]+", self.project_id):
            raise ConfigError("--project-id", "must be a folder name without '/'")
