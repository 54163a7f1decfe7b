"""Unique recipients (processors/uniques.py): real DataSketches HLL sketches, no doubles."""

from __future__ import annotations

import random

import datasketches as ds
import pytest

from processors import uniques
from processors.uniques import Sketch, Union, check_lg_k, error_bound, estimate, recipient


def _sketch(items: list[str], *, every: int = 0, lg_k: int = 12) -> bytes:
    """A sketch of ``items``, stored and loaded again every ``every`` items (as windows are
    between batches)."""
    sketch = Sketch(lg_k=lg_k)
    for i, item in enumerate(items, 1):
        sketch.update(item)
        if every and i % every == 0:
            sketch = Sketch(sketch.image())
    return sketch.image()


def test_the_recipient_is_the_user_else_the_device_else_none() -> None:
    assert recipient("alice", "dev-1") == "u:alice"
    assert recipient(None, "dev-1") == "d:dev-1"
    assert recipient("", "") is None
    assert recipient(None, None) is None


def test_small_counts_are_exact_and_repeats_count_once() -> None:
    image = _sketch([f"u:{i % 300}" for i in range(900)], every=50)
    assert estimate(image) == 300
    assert len(image) < 2_000


def test_order_batches_and_replays_give_the_same_image() -> None:
    """What makes the uniques exact through a crash: the stored image depends only on the set
    of recipients, not on the order or the batches they came in, or on replays."""
    items = [f"u:{i}" for i in range(20_000)]
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    a = _sketch(items, every=1_000)
    b = _sketch(shuffled + items[:500], every=333)  # another order, 500 replayed
    assert a == b
    assert estimate(a) == pytest.approx(20_000, rel=3 * error_bound(12))


def _at_once(items: list[str], lg_k: int = 12) -> tuple[bytes, int]:
    """The image and estimate DataSketches gives ``items`` updated into one sketch at once."""
    sketch = ds.hll_sketch(lg_k, ds.tgt_hll_type.HLL_4)
    for item in items:
        sketch.update(item)
    image = bytearray(sketch.serialize_compact())
    image[5] |= 0x10  # out of order, as every stored image
    return bytes(image), round(ds.hll_sketch.deserialize(bytes(image)).get_estimate())


@pytest.mark.parametrize(
    "items",
    [[], ["u:a"], ["u:a", "u:a"], ["u:a", "d:b"], ["u:a", "u:a", "d:b", "u:a"], ["u:b", "u:a"]],
)
def test_a_new_sketch_defers_its_first_recipient_to_the_same_image(items: list[str]) -> None:
    """A new sketch keeps its first recipient aside (most windows see one): the image and the
    estimate are still what DataSketches makes of the recipients, and so are later updates."""
    for lg_k in (4, 12):
        sketch = Sketch(lg_k=lg_k)
        for item in items:
            sketch.update(item)
        assert (sketch.image(), sketch.estimate()) == _at_once(items, lg_k)
        sketch.update("u:later")
        assert (sketch.image(), sketch.estimate()) == _at_once([*items, "u:later"], lg_k)
        # estimate first, image after: the same
        again = Sketch(lg_k=lg_k)
        for item in items:
            again.update(item)
        assert again.estimate() == _at_once(items, lg_k)[1]
        assert again.image() == _at_once(items, lg_k)[0]


def test_a_union_of_windows_is_the_sketch_of_all_their_recipients() -> None:
    hour = [_sketch([f"u:{i}" for i in range(m * 100, m * 100 + 150)]) for m in range(60)]
    union = Union()
    union.add_all(hour)
    image = union.image()
    assert image is not None
    assert estimate(image) == pytest.approx(60 * 100 + 50, rel=3 * error_bound(12))
    # A downstream consumer reads the image with DataSketches itself.
    assert ds.hll_sketch.deserialize(image).lg_config_k == 12
    assert Union().image() is None


def test_precision_and_its_bound() -> None:
    assert error_bound(12) == pytest.approx(0.0162, abs=0.0005)
    assert error_bound(14) < error_bound(12)
    assert check_lg_k(4) == 4
    with pytest.raises(ValueError, match="lg_k"):
        check_lg_k(22)


def test_a_new_sketch_is_the_constructors() -> None:
    """``new_sketch`` (no constructor call, for the windows' hot path) makes the sketch
    ``Sketch(lg_k=...)`` makes: the same images and estimates after the same updates."""
    for lg_k in (4, 12):
        for items in ([], ["u:1"], ["u:1", "u:1"], ["u:1", "d:2"], [f"u:{i}" for i in range(500)]):
            made, built = uniques.new_sketch(lg_k), uniques.Sketch(lg_k=lg_k)
            for item in items:
                made.update(item)
                built.update(item)
            assert made.written() == built.written()
            assert made.lg_k == lg_k
    with pytest.raises(ValueError):
        uniques.new_sketch(3)


def test_a_stored_sketch_is_the_constructors() -> None:
    """``stored_sketch`` (no constructor call: every sketch of every window read) makes the
    sketch ``Sketch(image, known_estimate=...)`` makes."""
    source = Sketch(lg_k=12)
    for i in range(50):
        source.update(f"u:{i}")
    image, estimate = source.written()
    for known in (None, estimate):
        made, built = uniques.stored_sketch(image, known), Sketch(image, known_estimate=known)
        assert made.written() == built.written() == (image, estimate)
        made.update("u:new")
        built.update("u:new")
        assert made.written() == built.written()


def test_one_recipient_sketches_in_a_row_are_each_their_own_recipient_s() -> None:
    """The last single-recipient image is taken again only for the same recipient and lg_k
    (``uniques._single``): sketches of recipients in turn, each as DataSketches makes it."""
    items = ["u:1", "u:1", "u:2", "d:1", "u:1", "u:2", "u:2"]
    for lg_k in (12, 4, 12):
        for item in items:
            sketch = Sketch.new(lg_k)
            sketch.update(item)
            expected = ds.hll_sketch(lg_k, uniques.TARGET)
            expected.update(item)
            assert sketch.image() == uniques._flagged(expected.serialize_compact())
            assert sketch.estimate() == 1 and sketch.lg_k == lg_k
