"""The sample generators, by vendor name (``crmstream.vendors``): an explicit registry."""

from __future__ import annotations

from crmdemo.samples import Generator, airship, flarelane, leanplum, pinpoint, segment

GENERATORS: dict[str, Generator] = {
    "leanplum": leanplum.generate,
    "pinpoint": pinpoint.generate,
    "segment": segment.generate,
    "flarelane": flarelane.generate,
    "airship": airship.generate,
}
