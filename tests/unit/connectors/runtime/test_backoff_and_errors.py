"""The connectors' one back-off, one taxonomy and one reading of botocore's errors."""

from __future__ import annotations

import random

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from connectors.airship.source import AirshipError
from connectors.aws import error_kind
from connectors.objectstore.errors import ObjectReadError, SourceError, TransientSourceError
from connectors.runtime.backoff import Backoff
from connectors.runtime.errors import FatalSourceError, RetriableSourceError, SkippableError


def test_backoff_doubles_with_jitter_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.4, 3.0, rng=random.Random(7))
    delays = [backoff.failed() for _ in range(6)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(3.0, 0.4 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.failures == 6 and not backoff.due()
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.due()


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "Op")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_client_error("ProvisionedThroughputExceededException"), "throttled"),
        (_client_error("SlowDown"), "throttled"),
        (_client_error("ExpiredIteratorException"), "expired_iterator"),
        (_client_error("ResourceNotFoundException"), "not_found"),
        (_client_error("NoSuchKey"), "not_found"),
        (_client_error("PreconditionFailed"), "changed"),
        (_client_error("AccessDeniedException"), "fatal"),
        (_client_error("NoSuchBucket"), "fatal"),
        (_client_error("InternalError"), "aws"),
        (NoCredentialsError(), "fatal"),
        (EndpointConnectionError(endpoint_url="http://x"), "connection"),
        (ValueError("other"), "aws"),
    ],
)
def test_one_reading_of_botocore_errors(exc: Exception, kind: str) -> None:
    assert error_kind(exc) == kind


def test_every_connector_error_has_its_place_in_the_taxonomy() -> None:
    assert issubclass(SourceError, FatalSourceError)
    assert issubclass(AirshipError, FatalSourceError)
    assert issubclass(TransientSourceError, RetriableSourceError)
    assert issubclass(ObjectReadError, SkippableError)
    assert AirshipError(401, "refused").kind == "http_auth"
    assert AirshipError(400, "bad").kind == "http_4xx"
    assert RetriableSourceError("x", kind="throttled").kind == "throttled"
