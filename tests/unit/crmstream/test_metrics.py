"""The metric helpers of the per-batch paths (crmstream/metrics.py): what they record is what
``labels()`` and one ``observe`` per amount record."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from crmstream import metrics

BUCKETS = (0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[str, ...]], float]:
    out: dict[tuple[str, tuple[str, ...]], float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.startswith(name) and not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value  # type: ignore[arg-type]
    return out


def _histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    return (
        one,
        Histogram("h", "h", ["vendor"], buckets=BUCKETS, registry=one),
        many,
        Histogram("h", "h", ["vendor"], buckets=BUCKETS, registry=many),
    )


def test_observe_all_records_what_one_observe_per_amount_records() -> None:
    # On a bound, between bounds, above the last one, zero; and a vendor with none at all.
    amounts = [0.0, 0.01, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 7.5]
    one, h1, many, h2 = _histograms()
    for a in amounts:
        h1.labels("a").observe(a)
    h1.labels("b")
    metrics.observe_all(h2.labels("a"), amounts)
    metrics.observe_all(h2.labels("b"), [])
    assert _samples(many, "h") == _samples(one, "h")
    assert _samples(many, "h")[("h_bucket", (("le", "0.01"), ("vendor", "a")))] == 3


def test_observe_many_records_what_n_observes_record() -> None:
    one, h1, many, h2 = _histograms()
    for amount, n in ((0.25, 4), (0.1, 2), (5.0, 1), (0.5, 0)):
        for _ in range(n):
            h1.labels("a").observe(amount)
        metrics.observe_many(h2.labels("a"), amount, n)
    assert _samples(many, "h") == _samples(one, "h")


def test_children_are_the_labelled_children_looked_up_once() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["vendor", "kind"], registry=registry)
    children = metrics.Children(counter)
    assert children("a", "x") is counter.labels("a", "x")
    assert children("a", "x") is children("a", "x")
    assert children("a", "y") is not children("a", "x")
    children("a", "x").inc(2)
    assert registry.get_sample_value("c_total", {"vendor": "a", "kind": "x"}) == 2
