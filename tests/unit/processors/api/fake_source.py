"""A deterministic :class:`processors.api.server.CampaignSource` for the API and page tests.

Seven campaigns of the five vendors, with full-length ids and names (a ``|`` and ``%`` in a key,
markup and quotes in a name, a missing app id, a missing name), one event-level funnel per
minute (send -> delivery -> open -> click, bounces, unsubscribes, unattributed events), and
:meth:`FakeSource.grow` adding minutes, so a test (or a person) can watch the page follow.
Uniques are exact sets here: the union a real source computes from sketches.

Run it to look at the page without Kafka::

    .venv/bin/python -m tests.unit.processors.api.fake_source --port 8089 --grow-every 2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from processors.api.query import CampaignKey, CampaignQuery, ListQuery, TimeRange
from processors.api.server import make_app
from processors.figures import campaign_conversions, conversion_images, merged_breakdown
from processors.records import Breakdown, WindowCounts

BASE_MS = 1_796_029_200_000  # 2026-11-30T09:00:00Z, the first minute of the fixture
MINUTE = 60_000
LG_K = 12
ERROR_BOUND = round(1.04 / 2 ** (LG_K / 2), 5)  # HLL relative standard error at lg_k 12
MAX_MESSAGES = 6  # message ids per window (CRM_STATS_MAX_MESSAGES), small to show the overflow
MAX_VARIANTS = 20  # variant ids per window (CRM_STATS_MAX_VARIANTS)


@dataclass(frozen=True)
class Profile:
    """One campaign of the fixture and how its audience behaves."""

    key: CampaignKey
    name: str | None
    channel: str
    sends: tuple[int, int]  # per minute, inclusive bounds
    delivered: float
    opened: float  # of deliveries
    clicked: float  # of opens
    audience: int
    anonymous: float = 0.0  # share of recipients known by device id only
    first_minute: int = 0
    last_minute: int | None = None  # stops sending after this minute
    # Its message ids: a fixed set, one per minute ("per-minute": a push operation each
    # minute, more than a window keeps), or none (Pinpoint has no definition-level id).
    messages: tuple[str, ...] | str = ("msg-a", "msg-b", "msg-c")
    no_message: float = 0.05  # share of sends without a message id
    # An experiment: the variant ids (a recipient's is fixed), the share of the audience held
    # out (CONTROL events instead of sends), and who converts (CONVERSION events without a
    # variant id, as Leanplum's): of each variant's delivered recipients, of the control group.
    variants: tuple[str, ...] = ()
    holdout: float = 0.0
    converts: tuple[float, ...] = ()
    control_converts: float = 0.0


CAMPAIGNS: tuple[Profile, ...] = (
    Profile(
        CampaignKey("LEANPLUM", "app_5738092841361408_prod", "5629499534213120"),
        "Black Friday | 30% off everything, ends Sunday 23:59 KST (push, variant B, 10% holdout)",
        "PUSH",
        (40, 60),
        0.93,
        0.31,
        0.22,
        4000,
        variants=("A", "B"),
        holdout=0.1,
        converts=(0.06, 0.15),
        control_converts=0.05,
    ),
    Profile(
        CampaignKey(
            "PINPOINT", "3f9a7c1e2b4d4e8f9a0b1c2d3e4f5a6b", "c7a1f0e2d3b44c5a8e9f0a1b2c3d4e5f"
        ),
        "Re-engagement journey: users inactive for 30+ days, email first then SMS fallback",
        "EMAIL",
        (25, 45),
        0.97,
        0.24,
        0.12,
        3000,
        messages=(),
    ),
    Profile(
        CampaignKey(
            "SEGMENT", "leanplum-segment-source-production-eu-west-1", "onboarding/day-3/profile"
        ),
        None,
        "EMAIL",
        (10, 20),
        0.95,
        0.42,
        0.18,
        1500,
        first_minute=20,
    ),
    Profile(
        CampaignKey(
            "FLARELANE",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            "7d4c2e9a-1b3f-4a6d-8e5c-0f9b2a7d6c41",
        ),
        "Price alert <b>\"Aurora\"</b> & 'Nova' restock & price drop <script>alert(1)</script>",
        "PUSH",
        (15, 30),
        0.88,
        0.27,
        0.3,
        2000,
        anonymous=0.4,
    ),
    Profile(
        CampaignKey("AIRSHIP", "ISex_TTJRuarzs9-o_Gkhg", "f1e2d3c4-b5a6-4978-8695-a4b3c2d1e0f9"),
        "Order shipped: your parcel is out for delivery (transactional, all regions)",
        "PUSH",
        (30, 50),
        0.9,
        0.45,
        0.1,
        5000,
        anonymous=0.7,
        messages="per-minute",
        variants=("variant-1", "variant-2"),
        holdout=0.05,
        converts=(0.01, 0.011),
        control_converts=0.01,
    ),
    Profile(
        CampaignKey("AIRSHIP", "", "flash|sale%2 (category: weekend)"),
        None,
        "IN_APP",
        (5, 12),
        1.0,
        0.6,
        0.2,
        800,
        anonymous=1.0,
    ),
    Profile(
        CampaignKey("LEANPLUM", "app_5097471252070400_staging", "4785074604081152"),
        "Welcome series #1 (staging), ended",
        "EMAIL",
        (3, 8),
        0.99,
        0.5,
        0.25,
        300,
        last_minute=29,
    ),
)


@dataclass
class Figures:
    """The events of one window, and their recipients as exact sets."""

    total: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, int] = field(default_factory=dict)
    everyone: set[str] = field(default_factory=set)
    by_type_ids: dict[str, set[str]] = field(default_factory=dict)
    unattributed: int = 0
    updated_at: int = 0
    messages: Breakdown = field(default_factory=Breakdown)
    # The minutes' own windows as a worker counts them (per variant, with sketches).
    minutes: list[WindowCounts] = field(default_factory=list)

    def event(
        self,
        event_type: str,
        channel: str,
        recipient: str | None,
        message: str | None = None,
        variant: str | None = None,
    ) -> None:
        self.messages.add(message, event_type, MAX_MESSAGES)
        if not self.minutes:
            self.minutes.append(WindowCounts(lg_k=LG_K, max_keys={"variant": MAX_VARIANTS}))
        self.minutes[0].apply(None, None, event_type, channel, recipient, {"variant": variant})
        self.total += 1
        self.by_type[event_type] = self.by_type.get(event_type, 0) + 1
        self.by_channel[channel] = self.by_channel.get(channel, 0) + 1
        if recipient is None:
            self.unattributed += 1
        else:
            self.everyone.add(recipient)
            self.by_type_ids.setdefault(event_type, set()).add(recipient)

    def merge(self, other: Figures) -> None:
        self.total += other.total
        for mine, theirs in ((self.by_type, other.by_type), (self.by_channel, other.by_channel)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.everyone |= other.everyone
        for k, ids in other.by_type_ids.items():
            self.by_type_ids.setdefault(k, set()).update(ids)
        self.unattributed += other.unattributed
        self.updated_at = max(self.updated_at, other.updated_at)
        self.minutes.extend(other.minutes)
        # As one larger window would have counted them: the first MAX_MESSAGES ids own rows.
        mine_b, theirs_b = self.messages, other.messages
        for value, counts in theirs_b.kept.items():
            if value not in mine_b.kept and len(mine_b.kept) >= MAX_MESSAGES:
                target = mine_b.overflow
            else:
                target = mine_b.kept.setdefault(value, {})
            for k, v in counts.items():
                target[k] = target.get(k, 0) + v
        for mine, theirs in (
            (mine_b.overflow, theirs_b.overflow),
            (mine_b.missing, theirs_b.missing),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v

    def dump(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "event_type_counts": dict(sorted(self.by_type.items())),
            "channel_counts": dict(sorted(self.by_channel.items())),
            "uniques": {
                "recipients": len(self.everyone),
                "by_event_type": {k: len(v) for k, v in sorted(self.by_type_ids.items())},
                "unattributed": self.unattributed,
                "error_bound": ERROR_BOUND,
                "lg_k": LG_K,
            },
        }


def _minute(profile: Profile, index: int, minute: int, seed: int) -> Figures:
    rng = random.Random(f"{seed}:{index}:{minute}")
    out = Figures(updated_at=BASE_MS + (minute + 1) * MINUTE - 1)

    pick = random.Random(f"message:{seed}:{index}:{minute}")  # apart: the events stay as before

    def recipient() -> str:
        n = rng.randrange(profile.audience)
        return f"device:{index}-{n:05d}" if rng.random() < profile.anonymous else f"user-{n:05d}"

    def message() -> str | None:
        if profile.messages == "per-minute":
            return f"push-{minute:04d}" if pick.random() >= profile.no_message else None
        if not profile.messages or pick.random() < profile.no_message:
            return None
        return pick.choice(profile.messages)

    test = random.Random(f"variant:{seed}:{index}:{minute}")  # apart, as messages

    def arm(who: str) -> int | None:
        """The recipient's variant (an index), None for the control group."""
        if not profile.variants:
            return 0
        share = random.Random(f"arm:{index}:{who}").random()
        if share < profile.holdout:
            return None
        return int((share - profile.holdout) / (1 - profile.holdout) * len(profile.variants))

    for _ in range(rng.randint(*profile.sends)):
        who = recipient()
        msg = message()
        which = arm(who)
        if which is None:
            out.event("CONTROL", profile.channel, who, msg)
            if test.random() < profile.control_converts:
                out.event("CONVERSION", "NONE", who)
            continue
        var = profile.variants[which] if profile.variants else None
        out.event("SEND", profile.channel, who, msg, var)
        if rng.random() >= profile.delivered:
            if rng.random() < 0.6:
                out.event("BOUNCE", profile.channel, who, msg, var)
            continue
        out.event("DELIVERY", profile.channel, who, msg, var)
        if rng.random() < 0.01:
            out.event("UNSUBSCRIBE", profile.channel, who, msg, var)
        if rng.random() < profile.opened:
            for _ in range(1 + (rng.random() < 0.2)):  # some open twice
                out.event("OPEN", profile.channel, who, msg, var)
            if rng.random() < profile.clicked:
                out.event("CLICK", profile.channel, who, msg, var)
        if profile.converts and test.random() < profile.converts[which]:
            out.event("CONVERSION", "NONE", who)
    if rng.random() < 0.3:  # opens a vendor reported with neither user nor device id
        for _ in range(rng.randint(1, 3)):
            out.event("OPEN", profile.channel, None, message())
    return out


NO_CAMPAIGN = Profile(
    CampaignKey("SEGMENT", "segment-source-app-events", ""),
    None,
    "PUSH",
    (5, 10),
    0.9,
    0.3,
    0.1,
    600,
)
"""Traffic of no campaign (events without a campaign id), for the tests that add it."""


class FakeSource:
    """The fixture's campaigns, minute by minute, from :data:`BASE_MS`. Thread-safe: the app
    runs in a server thread while a test grows the data."""

    def __init__(
        self,
        minutes: int = 90,
        seed: int = 15,
        profiles: tuple[Profile, ...] = CAMPAIGNS,
        lag_ms: int = 0,
    ) -> None:
        """``lag_ms``: how far the clock is ahead of the data (data dated in the past)."""
        self.seed = seed
        self.minutes = 0
        self.profiles = profiles
        self.lag_ms = lag_ms
        self._lock = threading.Lock()
        self._data: dict[CampaignKey, dict[int, Figures]] = {p.key: {} for p in profiles}
        self._names = {p.key: p.name for p in profiles}
        self.grow(minutes)

    def grow(self, minutes: int = 1) -> None:
        """Adds the next ``minutes`` minutes of events of every campaign still sending."""
        with self._lock:
            for _ in range(minutes):
                m = self.minutes
                for index, p in enumerate(self.profiles):
                    if m >= p.first_minute and (p.last_minute is None or m <= p.last_minute):
                        self._data[p.key][BASE_MS + m * MINUTE] = _minute(p, index, m, self.seed)
                self.minutes += 1

    def now_ms(self) -> int:
        """The fixture's clock: the last millisecond of its latest minute (plus ``lag_ms``)."""
        return BASE_MS + self.minutes * MINUTE - 1 + self.lag_ms

    def _windows(self, key: CampaignKey, r: TimeRange) -> dict[int, Figures]:
        size = r.window_ms
        out: dict[int, Figures] = {}
        for start, figures in sorted(self._data[key].items()):
            window = start - start % size
            if window in r:
                out.setdefault(window, Figures()).merge(figures)
        return out

    def _campaign(
        self, key: CampaignKey, r: TimeRange
    ) -> tuple[dict[str, Any], dict[int, Figures]]:
        windows = self._windows(key, r)
        totals = Figures()
        for figures in windows.values():
            totals.merge(figures)
        size = r.window_ms
        return {
            "vendor": key.vendor,
            "app_id": key.app_id or None,
            "campaign_id": key.campaign_id or None,
            "campaign_name": self._names[key],
            "first_window_start": min(windows) if windows else None,
            "last_window_end": max(windows) + size if windows else None,
            "updated_at": totals.updated_at or None,
            "totals": totals.dump(),
        }, windows

    async def list_campaigns(self, query: ListQuery) -> list[dict[str, Any]]:
        return self.listed(query.range, query.matches)

    def listed(
        self,
        r: TimeRange,
        matches: Callable[[CampaignKey, str | None], bool],
        keys: Callable[[CampaignKey], bool] = lambda key: True,
    ) -> list[dict[str, Any]]:
        """The campaigns with events in ``r`` that match (and whose key passes ``keys``)."""
        with self._lock:
            out = []
            for key in self._data:
                if keys(key) and matches(key, self._names[key]):
                    campaign, windows = self._campaign(key, r)
                    if windows:
                        out.append(campaign)
            return out

    async def campaign(self, query: CampaignQuery) -> dict[str, Any] | None:
        return self.one(query)

    def one(self, query: CampaignQuery) -> dict[str, Any] | None:
        """The campaign with its series over the query's range; None if unknown."""
        with self._lock:
            if query.key not in self._data:
                return None
            campaign, windows = self._campaign(query.key, query.range)
            size = query.range.window_ms
            campaign["messages"] = merged_breakdown(
                "message",
                (WindowCounts(breakdowns={"message": f.messages}) for f in windows.values()),
                campaign["totals"]["event_type_counts"],
                MAX_MESSAGES,
            )
            minutes = [m for f in windows.values() for m in f.minutes]
            campaign["variants"] = merged_breakdown(
                "variant",
                minutes,
                campaign["totals"]["event_type_counts"],
                {"variant": MAX_VARIANTS},
                lg_k=LG_K,
                converted=conversion_images(minutes, query.key.vendor),
            )
            campaign["conversions"] = campaign_conversions(minutes, query.key.vendor, LG_K)
            campaign["series"] = [
                {"window_start": start, "window_end": start + size, **figures.dump()}
                for start, figures in sorted(windows.items())
            ]
            return campaign

    def keys(self) -> Iterable[CampaignKey]:
        return list(self._data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The web view on the fake campaigns, no Kafka.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--grow-every", type=float, default=2.0, help="seconds per new minute")
    args = parser.parse_args(argv)
    source = FakeSource()

    async def grow(app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(args.grow_every)
                source.grow()

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    app = make_app(source, now_ms=source.now_ms)
    app.cleanup_ctx.append(grow)
    print(f"crm-stream web view on fake data: http://{args.host}:{args.port}/", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
