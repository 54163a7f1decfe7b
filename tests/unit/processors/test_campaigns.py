"""The campaign key and its stats partition, shared by the worker's stats and the query API."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from processors.api.query import CampaignKey
from processors.campaigns import campaign_key, murmur2, split_campaign_key, stats_partition


def test_murmur2_is_the_java_clients() -> None:
    rng = random.Random(20)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(0, 40))
        assert murmur2(data) == aiokafka_murmur2(data)
    for n in (1019, 1020, 1023, 1024, 1025, 5000):  # read in one struct call, or not
        data = rng.randbytes(n)
        assert murmur2(data) == aiokafka_murmur2(data)
    assert (
        stats_partition(b"LEANPLUM|app|c1", 6)
        == (aiokafka_murmur2(b"LEANPLUM|app|c1") & 0x7FFFFFFF) % 6
    )


def test_the_api_names_a_campaign_by_the_workers_key() -> None:
    key = campaign_key("SEGMENT", "a|pp", "50%|x")
    assert key == "SEGMENT|a%7Cpp|50%25%7Cx"
    assert split_campaign_key(key) == ("SEGMENT", "a|pp", "50%|x")
    assert CampaignKey.from_key(key) == CampaignKey("SEGMENT", "a|pp", "50%|x")
    assert CampaignKey("SEGMENT", "a|pp", "50%|x").key == key


@pytest.mark.parametrize("key", ["SEGMENT|a", "SEGMENT|a|b|c", "SEGMENT|a%|b"])
def test_strings_no_campaign_key_writes_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        split_campaign_key(key)
