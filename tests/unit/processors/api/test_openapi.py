"""openapi.yaml says what processors.api.query does: the same enums, limits and formulas."""

from __future__ import annotations

from typing import Any

import yaml

from processors.api.query import (
    CAMPAIGN_PARAMETERS,
    DEFAULT_LIMIT,
    DEFAULT_WINDOW,
    LIST_PARAMETERS,
    MAX_LIMIT,
    MAX_TEXT,
    MAX_WINDOWS,
    RATES,
    TIME_END_MS,
    VENDORS,
    WINDOWS,
    formula,
)
from processors.api.server import OPENAPI
from processors.figures import KEPT, MISSING, NOT_BROKEN_DOWN, OVERFLOW

SPEC: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
SCHEMAS = SPEC["components"]["schemas"]


def deref(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    out: Any = SPEC
    for part in node["$ref"].split("/")[1:]:
        out = out[part]
    return deref(out)


def parameters(path: str) -> dict[str, dict[str, Any]]:
    return {
        p["name"]: p
        for p in (deref(p) for p in SPEC["paths"][path]["get"]["parameters"])
        if p["in"] == "query"
    }


def test_parameters_are_the_ones_parsed() -> None:
    assert set(parameters("/api/campaigns")) == LIST_PARAMETERS
    assert set(parameters("/api/campaigns/{id}")) == CAMPAIGN_PARAMETERS
    window = parameters("/api/campaigns")["window"]["schema"]
    assert window["enum"] == list(WINDOWS) and window["default"] == DEFAULT_WINDOW
    limit = parameters("/api/campaigns")["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, MAX_LIMIT, DEFAULT_LIMIT)
    for name in ("q", "app_id"):
        assert parameters("/api/campaigns")[name]["schema"]["maxLength"] == MAX_TEXT
    assert SCHEMAS["Vendor"]["enum"] == list(VENDORS)
    assert SCHEMAS["EpochMs"]["maximum"] == TIME_END_MS


def test_the_attribution_parameters_are_the_ones_parsed() -> None:
    from processors.attribution_api import PARAMETERS

    assert set(parameters("/api/attribution")) == PARAMETERS


def test_the_range_limit_is_stated() -> None:
    assert f"{MAX_WINDOWS:,}" in SPEC["info"]["description"]
    assert f"{MAX_WINDOWS:,}" in SPEC["components"]["responses"]["BadParameter"]["description"]
    series = SCHEMAS["Campaign"]["allOf"][-1]["properties"]["series"]
    assert series["maxItems"] == MAX_WINDOWS


def test_every_rate_is_documented_with_its_formula() -> None:
    documented = SCHEMAS["Rates"]["properties"]
    assert set(documented) == set(RATES) == set(SCHEMAS["Rates"]["required"])
    for name, schema in documented.items():
        assert formula(name) in schema["description"], name
        assert schema["type"] == ["number", "null"]


def test_a_vendor_is_taken_in_either_case() -> None:
    vendor = deref(parameters("/api/campaigns")["vendor"]["schema"])
    assert vendor["enum"] == [*VENDORS, *(v.lower() for v in VENDORS)]


def test_the_list_states_its_total_and_cursor() -> None:
    listed = SCHEMAS["CampaignList"]["allOf"][1]
    assert {"windows", "total", "next_cursor"} <= set(listed["required"])
    assert "cursor" in parameters("/api/campaigns")


def test_every_figure_path_may_answer_401() -> None:
    assert SPEC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path in SPEC["paths"].values():
        assert path["get"]["responses"]["401"]["$ref"].endswith("/Unauthorized")


def test_a_campaigns_message_rows_are_the_kinds_the_figures_make() -> None:
    row = SCHEMAS["MessageRow"]
    assert row["properties"]["kind"]["enum"] == [KEPT, OVERFLOW, MISSING, NOT_BROKEN_DOWN]
    messages = SCHEMAS["Campaign"]["allOf"][-1]["properties"]["messages"]
    assert "messages" in SCHEMAS["Campaign"]["allOf"][-1]["required"]
    # The bound's largest setting, plus the overflow, no-message and not-broken-down rows.
    assert messages["maxItems"] == 10_000 + 3
