"""The object-store source's errors, in the connectors' taxonomy
(:mod:`connectors.runtime.errors`), and boto errors translated into them
(:func:`connectors.aws.error_kind`)."""

from __future__ import annotations

from connectors.aws import error_code, error_kind
from connectors.runtime.errors import FatalSourceError, RetriableSourceError, SkippableError


class SourceError(FatalSourceError):
    """The source cannot be read at all (missing bucket, access denied, no credentials).

    Not retried: waiting does not fix a bucket policy, and a crash loop would hide the cause.
    """


class TransientSourceError(RetriableSourceError):
    """The store did not answer after botocore's retries; the next pass tries again."""


class ObjectReadError(SkippableError):
    """One object cannot be read to its end: ``kind`` is a bounded metric label; the object
    becomes a dead letter and is skipped until its ETag changes."""


class ObjectChangedError(Exception):
    """The object was replaced or deleted between listing and reading; the next pass sees it."""


def translate(exc: Exception, what: str) -> Exception:
    """A boto error as one of this module's typed errors."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SourceError(f"{what}: no AWS credentials found ({exc})")
    if isinstance(exc, ClientError):
        kind = error_kind(exc)
        if kind == "fatal":
            message = exc.response.get("Error", {}).get("Message", "")
            return SourceError(f"{what}: {error_code(exc)}: {message or exc}")
        if kind in {"not_found", "changed"}:
            return ObjectChangedError(f"{what}: {error_code(exc)}")
    return TransientSourceError(f"{what}: {exc}")
