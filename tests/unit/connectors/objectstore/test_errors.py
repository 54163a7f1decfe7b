"""S3 errors typed: configuration errors are not retried, the others are."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from connectors.objectstore.errors import (
    ObjectChangedError,
    SourceError,
    TransientSourceError,
    translate,
)

# --- S3 errors ------------------------------------------------------------------------------


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"}}, "ListObjectsV2")


@pytest.mark.parametrize("code", ["NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "403"])
def test_missing_bucket_and_denied_access_are_not_retried(code: str) -> None:
    err = translate(_client_error(code), "listing s3://b/")
    assert isinstance(err, SourceError)
    assert code in str(err) and "s3://b/" in str(err)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("NoSuchKey", ObjectChangedError),
        ("PreconditionFailed", ObjectChangedError),
        ("SlowDown", TransientSourceError),
        ("InternalError", TransientSourceError),
    ],
)
def test_other_s3_errors_are_typed(code: str, kind: type) -> None:
    assert isinstance(translate(_client_error(code), "reading s3://b/k"), kind)
