"""The connectors' one reading of botocore's errors (Kinesis and S3 alike).

:func:`error_kind` gives a bounded kind (a metric label and what to do next); each source maps
it onto the taxonomy of :mod:`connectors.runtime.errors`: ``fatal`` stops the connector,
``throttled`` / ``connection`` / ``aws`` back off and retry, ``not_found``,
``expired_iterator`` and ``changed`` are the source's own business.
"""

from __future__ import annotations

# Codes that waiting will not fix: stop with a clear message instead of retrying forever.
FATAL_CODES = frozenset(
    {
        # credentials and permissions, every service
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "UnrecognizedClientException",
        "403",
        # Kinesis server-side encryption
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSNotFoundException",
        "KMSInvalidStateException",
        # S3 buckets
        "NoSuchBucket",
        "InvalidBucketName",
        "PermanentRedirect",
    }
)
THROTTLED_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "KMSThrottlingException",
        "SlowDown",
    }
)
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "NoSuchKey", "404"})
CHANGED_CODES = frozenset({"PreconditionFailed", "412"})


def error_code(exc: BaseException) -> str:
    """The service's error code of a botocore ``ClientError`` (empty for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_kind(exc: BaseException) -> str:
    """``fatal``, ``throttled``, ``not_found``, ``changed``, ``expired_iterator``,
    ``connection`` or ``aws`` (anything else, retried)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.NoRegionError):
        return "fatal"
    if isinstance(exc, bx.ClientError):
        code = error_code(exc)
        if code in THROTTLED_CODES:
            return "throttled"
        if code == "ExpiredIteratorException":
            return "expired_iterator"
        if code in NOT_FOUND_CODES:
            return "not_found"
        if code in CHANGED_CODES:
            return "changed"
        if code in FATAL_CODES:
            return "fatal"
        return "aws"
    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
        return "connection"
    return "aws"
