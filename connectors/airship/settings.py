"""The Airship connector's settings (``CRM_AIRSHIP_*``), validated on construction."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from connectors.airship.filters import validate_filters, validate_subset
from crmstream.errors import ConfigError
from crmstream.settings import (
    Secret,
    choice,
    lower_choice,
    parse_bool,
    parse_duration,
    parse_field,
    parse_int,
    positive,
    read_secret,
    setting,
)

ENV_PREFIX = "CRM_AIRSHIP_"


# TAXONOMY §7 "Endpoints / data centres"; the Python library's `url` option takes US, EU or a URL.
BASE_URLS = {"US": "https://connect.urbanairship.com", "EU": "https://connect.asnapieu.com"}
STREAM_PATHS = {"events": "/api/events", "compliance": "/api/events/general"}
ACCEPT = "application/vnd.urbanairship+x-ndjson; version=3;"


def parse_base_url(text: str) -> str:
    """``US``/``EU`` -> the data centre's base URL; anything else must be an http(s) URL."""
    value = text.strip()
    if value.upper() in BASE_URLS:
        return BASE_URLS[value.upper()]
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{text!r} is neither US, EU nor an http(s)://host[:port] URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a base URL has no query or fragment")
    return value.rstrip("/")


_stream = lower_choice(*STREAM_PATHS)
_positive_duration = positive(parse_duration)
_positive_int = positive(parse_int)


def _duration_or_zero(text: str) -> float:
    return parse_duration(text)


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def _text(text: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class AirshipSettings:
    """One Airship stream connection, validated on construction (see :meth:`validate`)."""

    app_key: str = setting("APP_KEY", "", _text, "Airship app key, sent as X-UA-Appkey")
    token: Secret = setting(
        "TOKEN", Secret(""), None, "RTDS bearer token (or CRM_AIRSHIP_TOKEN_FILE)", secret=True
    )
    master_secret: Secret = setting(
        "MASTER_SECRET",
        Secret(""),
        None,
        "Master secret for the compliance stream's Basic auth (or CRM_AIRSHIP_MASTER_SECRET_FILE)",
        secret=True,
    )
    url: str = setting("URL", BASE_URLS["US"], parse_base_url, "US, EU or a base URL")
    stream: str = setting(
        "STREAM", "events", _stream, "events (/api/events) or compliance (/api/events/general)"
    )
    start: str | None = setting(
        "START",
        None,
        choice("EARLIEST", "LATEST"),
        "EARLIEST or LATEST when there is no checkpoint (default LATEST)",
    )
    resume_offset: str | None = setting(
        "RESUME_OFFSET", None, _text, "Offset to resume after when there is no checkpoint"
    )
    filters: list[dict[str, Any]] | None = setting(
        "FILTERS",
        None,
        _json,
        "JSON array of filter objects (or ..._FILE)",
        json=True,
    )
    subset: dict[str, Any] | None = setting(
        "SUBSET", None, _json, "JSON subset object, SAMPLE or PARTITION (or ..._FILE)", json=True
    )
    enable_offset_updates: bool = setting(
        "OFFSET_UPDATES", True, parse_bool, "Ask for OFFSET_UPDATE events instead of blank lines"
    )
    idle_timeout_s: float = setting(
        "IDLE_TIMEOUT", 90.0, _positive_duration, "Reconnect when no byte arrives for this long"
    )
    connect_timeout_s: float = setting(
        "CONNECT_TIMEOUT", 30.0, _positive_duration, "TCP/TLS connect timeout"
    )
    backoff_min_s: float = setting(
        "BACKOFF_MIN", 1.0, _positive_duration, "First reconnect delay (doubles, with jitter)"
    )
    backoff_max_s: float = setting(
        "BACKOFF_MAX", 60.0, _positive_duration, "Longest reconnect delay"
    )
    not_found_retry_s: float = setting(
        "NOT_FOUND_RETRY", 60.0, _positive_duration, "Delay after a 404 (no data for the app yet)"
    )
    max_redirects: int = setting(
        "MAX_REDIRECTS", 5, _positive_int, "307 re-POSTs allowed per connection attempt"
    )
    checkpoint_interval_s: float = setting(
        "CHECKPOINT_INTERVAL", 1.0, _positive_duration, "How often the checkpoint is written"
    )
    stop_after_idle_s: float = setting(
        "STOP_AFTER_IDLE",
        0.0,
        _duration_or_zero,
        "Exit once no event arrived for this long, everything checkpointed (0: run forever)",
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def endpoint(self) -> str:
        return self.url + STREAM_PATHS[self.stream]

    @property
    def checkpoint_key(self) -> str:
        """One checkpoint per app, stream and subset: PARTITION consumers never share one."""
        subset = self.subset
        if subset is None:
            tag = "all"
        elif subset["type"] == "PARTITION":
            tag = f"partition-{subset['selection']}-of-{subset['count']}"
        else:
            tag = f"sample-{subset['proportion']}"
        return f"{self.app_key}/{self.stream}/{tag}"

    def validate(self) -> None:
        env = ENV_PREFIX
        if not self.app_key:
            raise ConfigError(env + "APP_KEY", "the Airship app key is required (X-UA-Appkey)")
        if self.stream == "events" and not self.token:
            raise ConfigError(
                env + "TOKEN",
                "the events stream needs a bearer token: set CRM_AIRSHIP_TOKEN or "
                "CRM_AIRSHIP_TOKEN_FILE",
            )
        if self.stream == "compliance" and not self.master_secret:
            raise ConfigError(
                env + "MASTER_SECRET",
                "the compliance stream uses Basic auth with the master secret: set "
                "CRM_AIRSHIP_MASTER_SECRET or CRM_AIRSHIP_MASTER_SECRET_FILE",
            )
        if self.start is not None and self.resume_offset is not None:
            # Seed 004 Events request: "Only specify resume_offset if start is absent."
            raise ConfigError(
                env + "RESUME_OFFSET",
                "give start or resume_offset, never both (else HTTP 400)",
            )
        if self.resume_offset == "":
            raise ConfigError(env + "RESUME_OFFSET", "must not be empty")
        if self.filters is not None:
            try:
                validate_filters(self.filters, self.stream)
            except ValueError as exc:
                raise ConfigError(env + "FILTERS", str(exc)) from None
        if self.subset is not None:
            try:
                validate_subset(self.subset)
            except ValueError as exc:
                raise ConfigError(env + "SUBSET", str(exc)) from None
        if self.backoff_min_s > self.backoff_max_s:
            raise ConfigError(env + "BACKOFF_MIN", "must not exceed CRM_AIRSHIP_BACKOFF_MAX")
        if self.stop_after_idle_s < 0:
            raise ConfigError(env + "STOP_AFTER_IDLE", "must be 0 (off) or a positive duration")

    def request_body(self, resume_offset: str | None) -> dict[str, Any]:
        """The request body: documented fields only, ``start`` xor ``resume_offset``."""
        body: dict[str, Any] = {}
        if resume_offset is not None:
            body["resume_offset"] = resume_offset
        else:
            body["start"] = self.start or "LATEST"
        if self.filters is not None:
            body["filters"] = self.filters
        if self.subset is not None:
            body["subset"] = self.subset
        if self.enable_offset_updates:
            # Missing from the Events-request table but shown in the compliance example
            # (TAXONOMY §7): send it and expect OFFSET_UPDATE lines.
            body["enable_offset_updates"] = True
        return body

    def headers(self) -> dict[str, str]:
        if self.stream == "compliance":
            # TAXONOMY §7: the compliance stream takes Basic appKey:masterSecret, never Bearer.
            pair = f"{self.app_key}:{self.master_secret.get()}".encode()
            auth = "Basic " + base64.b64encode(pair).decode()
        else:
            auth = "Bearer " + self.token.get()
        return {
            "Authorization": auth,
            "X-UA-Appkey": self.app_key,
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        }

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        options: Mapping[str, str | None] | None = None,
    ) -> AirshipSettings:
        """Read ``CRM_AIRSHIP_*``; ``options`` (command-line text by field name, or
        ``<field>_file`` for JSON fields) override them. Secrets come only from the
        environment or a file. Raises :class:`ConfigError` naming the variable or option."""
        env = os.environ if environ is None else environ
        opts = {k: v for k, v in (options or {}).items() if v is not None}
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.metadata["env"]
            is_json = f.metadata.get("json", False)
            raw: str | None = None
            source = var
            if f.metadata["secret"]:
                secret = read_secret(env, var)
                if secret is not None:
                    values[f.name] = Secret(secret.get().strip())
                continue
            if is_json and f.name + "_file" in opts:
                source = option_name(f)
                raw = _read_file(source, opts[f.name + "_file"] or "")
            elif f.name in opts:
                source = option_name(f)
                raw = opts[f.name]
            elif var in env:
                raw = env[var]
            elif is_json and env.get(var + "_FILE"):
                source = var + "_FILE"
                raw = _read_file(source, env[source])
            if raw is None:
                continue
            values[f.name] = parse_field(f, source, raw)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str]]:
        """(variable, description) rows for documentation and ``--help``."""
        return [(ENV_PREFIX + f.metadata["env"], f.metadata["doc"]) for f in fields(cls)]


def option_name(f: Field[Any]) -> str:
    """A field's command-line option, derived from its name so that it is declared once:
    ``idle_timeout_s`` -> ``--idle-timeout``; a JSON field takes a file (``--filters-file``)."""
    name = "--" + f.name.removesuffix("_s").replace("_", "-")
    return name + "-file" if f.metadata.get("json", False) else name


def _read_file(setting: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc}") from None
