"""Typed errors. A bad record is data (it goes to the dead-letter topic); these are not."""

from __future__ import annotations


class CrmStreamError(Exception):
    """Base of crm-stream's own errors. ``crm-stream`` prints one line, ``crm-stream: <message>``,
    and exits with the class's ``exit_code``."""

    exit_code = 1


class ConfigError(CrmStreamError):
    """An invalid setting. Stops startup; the message names the setting."""

    exit_code = 2

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class BrokerError(CrmStreamError):
    """Kafka could not be reached or refused an operation we cannot continue without."""


class KafkaUnreachable(BrokerError):
    """No broker of ``CRM_BOOTSTRAP_SERVERS`` answered in the time allowed. Exit code 69
    (``EX_UNAVAILABLE`` of sysexits.h): a service is missing, not a bug (70) nor a bad
    setting (2 or 78); a supervisor may simply start the process again later."""

    exit_code = 69


class SerdeError(CrmStreamError):
    """Bytes that are not a record crm-stream can decode, a record that does not fit its schema,
    or a Schema Registry that refused or could not be reached."""
