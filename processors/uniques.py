"""Unique recipients: HyperLogLog sketches from Apache DataSketches, pure (no Faust, no I/O).

**Who is a recipient** (:func:`recipient`): an event's ``user_id``, else its ``device_id``
(anonymous push and in-app events), as the sketch item ``u:<user_id>`` or ``d:<device_id>`` (the
prefix keeps a user id and a device id that happen to be equal apart). An event with neither is
*unattributed*: it counts in the totals and in no unique figure. TAXONOMY.md A-23 defines unique
opens as distinct (message, user); the stats here are per campaign, so a recipient is counted once
per campaign window however many of the campaign's messages it opened, and a recipient known by a
user id in one event and only by a device id in another counts twice.

**Precision**: ``lg_k`` (``CRM_STATS_HLL_LG_K``, default :data:`DEFAULT_LG_K` = 12: 4,096 buckets)
gives a relative standard error of about 1.04/sqrt(2^lg_k), 1.6% at 12 (:func:`error_bound`, as
DataSketches states it for a union). A sketch is exact while it holds few items (DataSketches'
list and set modes: up to 384 distinct recipients at lg_k 12); its compact image then takes ~4
bytes per recipient, and at most ~2 KB at lg_k 12 (HLL_4) beyond that.

**Order does not matter** (what makes the crash guarantee hold for uniques): DataSketches' single
sketch estimator (HIP) depends on the order items arrived in, and after a crash the increments of
two raw partitions may interleave differently. Every image written here carries the sketch's
*out-of-order* flag (a documented bit of the DataSketches HLL serialization format, the one a
union sets), so every estimate is the composite estimator, a function of the registers alone,
and the registers depend only on the set of recipients. A window that counted the same events
therefore has the same estimate, whatever the batches, replays and restarts in between. Updating
a sketch with a recipient it holds already changes nothing, and a union of sketches is the sketch
of the union of their recipients: a range of windows is merged exactly as a union.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import datasketches as ds

DEFAULT_LG_K = 12
MIN_LG_K = 4
MAX_LG_K = 21
TARGET = ds.tgt_hll_type.HLL_4
"""4 bits per bucket: the smallest images (~2 KB at lg_k 12 once past the exact modes)."""

# DataSketches HLL serialization format (HllSketch preamble): byte 5 holds the flags, of which
# 0x10 is "out of order" (set by a union; the estimate is then the composite estimator); the low
# two bits of byte 7 are the mode (0 list, 1 set, 2 HLL).
_FLAGS_BYTE = 5
_OUT_OF_ORDER = 0x10
_MODE_BYTE = 7
_HLL_MODE = 2


def recipient(user_id: str | None, device_id: str | None) -> str | None:
    """The sketch item of an event's recipient: its user id, else its device id, else None."""
    if user_id:
        return "u:" + user_id
    if device_id:
        return "d:" + device_id
    return None


@cache
def error_bound(lg_k: int) -> float:
    """The relative standard error (one sigma) of an estimate at ``lg_k``: DataSketches' a-priori
    bound for a union (the composite estimator), e.g. 0.0162 at 12. Exact modes have none."""
    upper = abs(ds.hll_sketch.get_rel_err(True, True, lg_k, 1))
    lower = abs(ds.hll_sketch.get_rel_err(False, True, lg_k, 1))
    return round(max(upper, lower), 4)


def check_lg_k(lg_k: int) -> int:
    if not MIN_LG_K <= lg_k <= MAX_LG_K:
        raise ValueError(f"lg_k must be in {MIN_LG_K}..{MAX_LG_K}, got {lg_k}")
    return lg_k


def _flagged(image: bytes) -> bytes:
    """``image`` with the out-of-order flag set (see the module docstring)."""
    if image[_FLAGS_BYTE] & _OUT_OF_ORDER:
        return image
    out = bytearray(image)
    out[_FLAGS_BYTE] |= _OUT_OF_ORDER
    return bytes(out)


@cache
def _empty_image(lg_k: int) -> bytes:
    return _flagged(ds.hll_sketch(check_lg_k(lg_k), TARGET).serialize_compact())


class Sketch:
    """One HLL sketch, kept as its compact image until it is updated. ``known_estimate``: the
    image's estimate when the caller stored it with the image (a window value does), so that
    a sketch that is not updated is never deserialized to be estimated again.

    A new sketch keeps its first recipient as it is (``_first``) until a second one comes or
    its image is asked for: most windows of a high-cardinality deployment see one recipient
    (each of a window's sketches the same one), and the image and estimate of a one-recipient
    sketch are taken from :func:`_single`, made once by DataSketches itself for that recipient.
    The same calls as updating at once, in the same order, so the same bytes."""

    __slots__ = ("_estimate", "_first", "_fresh", "_image", "_sketch")

    def __init__(
        self,
        image: bytes | None = None,
        lg_k: int = DEFAULT_LG_K,
        known_estimate: int | None = None,
    ) -> None:
        self._image = image if image is not None else _empty_image(lg_k)
        self._sketch: ds.hll_sketch | None = None
        self._estimate = known_estimate if image is not None else 0
        # A new sketch without a recipient yet; then its first recipient, not yet in ``_image``.
        # Only a new sketch defers (an image's sketch may hold the recipient already).
        self._fresh = image is None
        self._first: str | None = None

    def update(self, item: str) -> None:
        if self._fresh:
            self._fresh = False
            self._first = item
            self._estimate = None
            return
        first = self._first
        if first is not None:
            if item == first:
                return  # a recipient it holds: changes nothing
            self._first = None
            self._sketch = ds.hll_sketch.deserialize(self._image)
            self._sketch.update(first)
        elif self._sketch is None:
            self._sketch = ds.hll_sketch.deserialize(self._image)
        self._sketch.update(item)
        self._estimate = None

    def image(self) -> bytes:
        """The compact image, flagged: what is stored and published."""
        first = self._first
        if first is not None:
            self._image, self._estimate = _single(self._image, first)
            self._first = None
        elif self._sketch is not None:
            self._image = _flagged(self._sketch.serialize_compact())
            # Read back flagged: later updates keep the composite estimator in HLL mode.
            self._sketch = None
        return self._image

    def estimate(self) -> int:
        """The estimate of the (flagged) image: the composite estimator, whatever the order of
        the updates (the live sketch's own estimate may differ after a mode change)."""
        if self._estimate is None:
            image = self.image()
            if self._estimate is None:
                self._estimate = round(ds.hll_sketch.deserialize(image).get_estimate())
        return self._estimate

    def written(self) -> tuple[bytes, int]:
        """:meth:`image` and :meth:`estimate` in one call (a window's value and its upsert
        write both of every sketch)."""
        if self._first is None and self._sketch is None and self._estimate is not None:
            return self._image, self._estimate  # as loaded, or written already
        image = self.image()
        return image, self.estimate()

    @property
    def lg_k(self) -> int:
        return int(self._image[3])

    @classmethod
    def new(cls, lg_k: int) -> Sketch:
        """``Sketch(lg_k=lg_k)``, made without the constructor's arguments (a window touched
        once makes four: its recipients', its event type's, and its variant's two)."""
        self = _new(cls)
        image = _EMPTY.get(lg_k)
        if image is None:
            image = _EMPTY[lg_k] = _empty_image(lg_k)
        self._image = image
        self._sketch = None
        self._estimate = 0
        self._fresh = True
        self._first = None
        return self

    @classmethod
    def stored(cls, image: bytes, known_estimate: int | None = None) -> Sketch:
        """``Sketch(image, known_estimate=known_estimate)``, made without the constructor's
        arguments (every sketch of every stored window a batch reads)."""
        self = _new(cls)
        self._image = image
        self._sketch = None
        self._estimate = known_estimate
        self._fresh = False
        self._first = None
        return self


_new = object.__new__
_EMPTY: dict[int, bytes] = {}  # the empty image by lg_k (MIN_LG_K..MAX_LG_K)

new_sketch = Sketch.new
stored_sketch = Sketch.stored


_SINGLES: dict[tuple[bytes, str], tuple[bytes, int]] = {}
_MAX_SINGLES = 8192
"""Bound of :func:`_single`'s cache (the recipients seen last; emptied when full)."""


def _single(empty: bytes, item: str) -> tuple[bytes, int]:
    """The image (flagged) and estimate of the empty sketch ``empty`` updated with ``item``,
    as :meth:`Sketch.update` then :meth:`Sketch.image` and :meth:`Sketch.estimate` make them;
    kept for the recipients seen last (a window's sketches share its recipient, and one
    recipient's events touch many campaigns' windows)."""
    global _LAST_SINGLE
    last = _LAST_SINGLE
    if last[1] is item and last[0] is empty:
        return last[2]  # the window's other sketches of the same recipient
    key = (empty, item)
    found = _SINGLES.get(key)
    if found is None:
        sketch = ds.hll_sketch.deserialize(empty)
        sketch.update(item)
        image = _flagged(sketch.serialize_compact())
        found = (image, round(ds.hll_sketch.deserialize(image).get_estimate()))
        if len(_SINGLES) >= _MAX_SINGLES:
            _SINGLES.clear()
        _SINGLES[key] = found
    _LAST_SINGLE = (empty, item, found)
    return found


_LAST_SINGLE: tuple[bytes, str, tuple[bytes, int]] = (b"", "", (b"", 0))
"""The last :func:`_single` asked (empty image, recipient, result): a one-recipient window's
sketches (its recipients', its event type's, its variant's two) ask for the same one in a row,
and an identity check is cheaper than the cache's tuple key."""


def estimate(image: bytes) -> int:
    """The estimate of a stored image, rounded."""
    return round(ds.hll_sketch.deserialize(_flagged(image)).get_estimate())


def lg_k_of(image: bytes) -> int:
    return int(image[3])


def is_exact(image: bytes) -> bool:
    """Whether the image is in DataSketches' list or set mode (few items: each kept as a
    coupon, the estimate exact), not in HLL mode (an estimate within :func:`error_bound`)."""
    return (image[_MODE_BYTE] & 0x3) != _HLL_MODE


class Union:
    """Sketches merged: the sketch of every recipient of any of them. Its ``lg_k`` is the
    smallest of theirs (DataSketches downsamples a finer one)."""

    __slots__ = ("_lg_k", "_union")

    def __init__(self, lg_k: int = MAX_LG_K) -> None:
        self._lg_k = lg_k
        self._union: ds.hll_union | None = None

    def add(self, image: bytes) -> None:
        lg_k = lg_k_of(image)
        if self._union is None:
            self._union = ds.hll_union(min(self._lg_k, lg_k))
        self._lg_k = min(self._lg_k, lg_k)
        self._union.update(ds.hll_sketch.deserialize(image))

    def add_all(self, images: Iterable[bytes]) -> None:
        for image in images:
            self.add(image)

    def image(self) -> bytes | None:
        """The merged sketch's compact image (flagged), or None when nothing was added."""
        if self._union is None:
            return None
        return _flagged(self._union.get_result(TARGET).serialize_compact())
