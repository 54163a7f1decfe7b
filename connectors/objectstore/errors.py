"""The object-store source's typed errors, and boto errors translated into them."""

from __future__ import annotations

from crmstream.errors import CrmStreamError


class SourceError(CrmStreamError):
    """The source cannot be read at all (missing bucket, access denied, no credentials).

    Not retried: waiting does not fix a bucket policy, and a crash loop would hide the cause.
    """


class TransientSourceError(CrmStreamError):
    """The store did not answer after botocore's retries; the next pass tries again."""


class ObjectReadError(Exception):
    """One object cannot be read to its end: ``kind`` is a bounded metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ObjectChangedError(Exception):
    """The object was replaced or deleted between listing and reading; the next pass sees it."""


# Codes that waiting will not fix: stop with a clear message instead of retrying forever.
_FATAL_CODES = {
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "InvalidToken",
    "ExpiredToken",
    "SignatureDoesNotMatch",
    "PermanentRedirect",
    "403",
}
_CHANGED_CODES = {"NoSuchKey", "PreconditionFailed", "412", "404"}


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def translate(exc: Exception, what: str) -> Exception:
    """A boto error as one of this module's typed errors."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SourceError(f"{what}: no AWS credentials found ({exc})")
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _FATAL_CODES:
            return SourceError(f"{what}: {code}: {message or exc}")
        if code in _CHANGED_CODES:
            return ObjectChangedError(f"{what}: {code}")
    return TransientSourceError(f"{what}: {exc}")
