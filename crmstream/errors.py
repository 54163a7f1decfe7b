"""Typed errors. A bad record is data (it goes to the dead-letter topic); these are not."""

from __future__ import annotations


class CrmStreamError(Exception):
    """Base of crm-stream's own errors."""


class ConfigError(CrmStreamError):
    """An invalid setting. Stops startup; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class BrokerError(CrmStreamError):
    """Kafka could not be reached or refused an operation we cannot continue without."""


class SerdeError(CrmStreamError):
    """Bytes that are not a record crm-stream can decode, a record that does not fit its schema,
    or a Schema Registry that refused or could not be reached."""
