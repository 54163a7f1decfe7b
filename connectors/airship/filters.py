"""Airship's request filters and subsets, checked as Airship would check them (seed 004), so a
mistake is a configuration error at start-up, not an HTTP 400 later."""

from __future__ import annotations

from typing import Any

# Seed 004 "Request filters": the only attributes a filter object may have ("If an unexpected
# attribute appears ..., a status code 400 response will be returned").
FILTER_FIELDS = frozenset(
    {"device_types", "devices", "latency", "notifications", "types", "users", "predicates"}
)
DEVICE_TYPES = frozenset({"android", "ios", "amazon", "web", "email", "sms", "open"})
# Seed 004 "Compliance request filters": device_types (email, sms) and latency only.
COMPLIANCE_FILTER_FIELDS = frozenset({"device_types", "latency"})
COMPLIANCE_DEVICE_TYPES = frozenset({"email", "sms"})
MATCHERS = frozenset(
    {"equals", "array_contains", "index", "at_least", "at_most", "is_present", "version_matches"}
)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonempty_array(value: Any, where: str) -> list[Any]:
    # Seed 004: "An empty array results in a 400 response."
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a JSON array")
    if not value:
        raise ValueError(f"{where} is an empty array (Airship answers 400 to an empty array)")
    return value


def _string_array(value: Any, where: str, allowed: frozenset[str] | None = None) -> None:
    for i, item in enumerate(_nonempty_array(value, where)):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{where}[{i}] must be a non-empty string")
        if allowed is not None and item not in allowed:
            raise ValueError(f"{where}[{i}] = {item!r} is not one of {', '.join(sorted(allowed))}")


def _id_objects(value: Any, where: str, keys: frozenset[str]) -> None:
    for i, item in enumerate(_nonempty_array(value, where)):
        if not isinstance(item, dict) or not item:
            raise ValueError(f"{where}[{i}] must be an object with {' or '.join(sorted(keys))}")
        unknown = set(item) - keys
        if unknown:
            raise ValueError(f"{where}[{i}] has unknown field(s) {', '.join(sorted(unknown))}")
        for k, v in item.items():
            if not isinstance(v, str) or not v:
                raise ValueError(f"{where}[{i}].{k} must be a non-empty string")


def _notification(value: Any, where: str) -> None:
    # Seed 004: "you should only specify one of push_id or group_id".
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"{where} must be an object with exactly one of push_id, group_id")
    (k, v), *_ = value.items()
    if k not in {"push_id", "group_id"}:
        raise ValueError(f"{where} has unknown field {k!r} (push_id or group_id)")
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where}.{k} must be a non-empty string")


def _matcher(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where} must be a matcher object ({', '.join(sorted(MATCHERS))})")
    unknown = set(value) - MATCHERS
    if unknown:
        raise ValueError(f"{where} has unknown matcher(s) {', '.join(sorted(unknown))}")
    if "array_contains" in value:
        inner = value["array_contains"]
        if not isinstance(inner, dict) or "value" not in inner:
            raise ValueError(f"{where}.array_contains must be an object with a value matcher")
        _matcher(inner["value"], f"{where}.array_contains.value")
    for k in ("at_least", "at_most"):
        if k in value and (isinstance(value[k], bool) or not isinstance(value[k], int | float)):
            raise ValueError(f"{where}.{k} must be a number")
    if "is_present" in value and not isinstance(value["is_present"], bool):
        raise ValueError(f"{where}.is_present must be true or false")
    if "version_matches" in value and not isinstance(value["version_matches"], str):
        raise ValueError(f"{where}.version_matches must be a string")


def _predicate(value: Any, where: str) -> None:
    """Seed 004 "JSON Predicate": ``and``/``or`` arrays, ``not``, or ``key`` + ``value``."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where} must be a JSON predicate object")
    unknown = set(value) - {"and", "or", "not", "key", "scope", "value"}
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}")
    forms = [k for k in ("and", "or", "not", "key") if k in value]
    if len(forms) != 1:
        raise ValueError(f"{where} must have exactly one of and, or, not, key")
    form = forms[0]
    if form in {"and", "or"}:
        for i, item in enumerate(_nonempty_array(value[form], f"{where}.{form}")):
            _predicate(item, f"{where}.{form}[{i}]")
    elif form == "not":
        _predicate(value["not"], f"{where}.not")
    else:
        if not isinstance(value["key"], str) or not value["key"]:
            raise ValueError(f"{where}.key must be a non-empty string")
        scope = value.get("scope")
        if scope is not None and not isinstance(scope, str):
            _string_array(scope, f"{where}.scope")
        if "value" not in value:
            raise ValueError(f"{where} needs a value matcher")
        _matcher(value["value"], f"{where}.value")


def validate_filters(filters: Any, stream: str = "events") -> list[dict[str, Any]]:
    """Check ``filters`` as Airship would, so that a mistake is a ConfigError, not a 400 later.

    Raises ValueError naming the offending path (``filters[0].types[2]``).
    """
    compliance = stream == "compliance"
    allowed = COMPLIANCE_FILTER_FIELDS if compliance else FILTER_FIELDS
    device_types = COMPLIANCE_DEVICE_TYPES if compliance else DEVICE_TYPES
    for i, item in enumerate(_nonempty_array(filters, "filters")):
        where = f"filters[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a JSON object")
        unknown = set(item) - allowed
        if unknown:
            raise ValueError(
                f"{where} has unknown field(s) {', '.join(sorted(unknown))}; "
                f"the {stream} stream accepts {', '.join(sorted(allowed))}"
            )
        if "device_types" in item:
            _string_array(item["device_types"], f"{where}.device_types", device_types)
        if "latency" in item and (not is_int(item["latency"]) or item["latency"] < 0):
            raise ValueError(f"{where}.latency must be a non-negative integer (milliseconds)")
        if "types" in item:
            # Any name is let through: new event types appear (seed 004, forward compatibility).
            _string_array(item["types"], f"{where}.types")
        if "devices" in item:
            _id_objects(
                item["devices"], f"{where}.devices", frozenset({"channel", "named_user_id"})
            )
        if "users" in item:
            _id_objects(item["users"], f"{where}.users", frozenset({"contact_id", "named_user_id"}))
        if "notifications" in item:
            # The schema says object; the seed's own request example sends an array of them.
            notes = item["notifications"]
            if isinstance(notes, list):
                for j, note in enumerate(_nonempty_array(notes, f"{where}.notifications")):
                    _notification(note, f"{where}.notifications[{j}]")
            else:
                _notification(notes, f"{where}.notifications")
        if "predicates" in item:
            # Schema: array; the seed's predicate examples also send a single object.
            preds = item["predicates"]
            if isinstance(preds, list):
                for j, pred in enumerate(_nonempty_array(preds, f"{where}.predicates")):
                    _predicate(pred, f"{where}.predicates[{j}]")
            else:
                _predicate(preds, f"{where}.predicates")
    return list(filters)


def validate_subset(subset: Any) -> dict[str, Any]:
    """Seed 004 "Request subset": SAMPLE with a proportion in [0, 1], or PARTITION with
    ``selection`` below ``count``. Raises ValueError."""
    if not isinstance(subset, dict):
        raise ValueError("subset must be a JSON object")
    kind = subset.get("type")
    if kind == "SAMPLE":
        unknown = set(subset) - {"type", "proportion"}
        proportion = subset.get("proportion")
        if isinstance(proportion, bool) or not isinstance(proportion, int | float):
            raise ValueError("subset SAMPLE needs a numeric proportion")
        if not 0 <= proportion <= 1:
            raise ValueError(f"subset proportion {proportion} is outside 0..1")
    elif kind == "PARTITION":
        unknown = set(subset) - {"type", "count", "selection"}
        count, selection = subset.get("count"), subset.get("selection")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("subset PARTITION needs an integer count >= 1")
        if not isinstance(selection, int) or isinstance(selection, bool) or selection < 0:
            raise ValueError("subset PARTITION needs an integer selection >= 0")
        if selection >= count:
            raise ValueError(
                f"subset selection {selection} must be less than count {count} "
                "(Airship answers 400 otherwise)"
            )
    else:
        raise ValueError(f"subset type must be SAMPLE or PARTITION, got {kind!r}")
    if unknown:
        raise ValueError(f"subset has unknown field(s) {', '.join(sorted(unknown))}")
    return dict(subset)
