"""The fixed Open-I report partition (train / dev / test by a keyed hash of the report uid)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

#: Seed of the fixed Open-I report partition (part of the hash key, never an RNG seed).
OPENI_SPLIT_SEED = 20250301
#: train / dev / test shares of the partition.
SPLIT_FRACTIONS = (("train", 0.7), ("dev", 0.1), ("test", 0.2))


def _unit_hash(uid: int, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{int(uid)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def openi_partition(uids: Iterable[int], seed: int = OPENI_SPLIT_SEED) -> dict[int, str]:
    """The fixed train/dev/test (70/10/20) partition of Open-I reports by uid.

    Each uid's split depends only on ``blake2b(f"{seed}:{uid}")``: not on the order or the size
    of ``uids`` (a report keeps its split when others are added or removed).
    """
    out: dict[int, str] = {}
    for uid in uids:
        u = int(uid)
        x = _unit_hash(u, seed)
        acc = 0.0
        for name, share in SPLIT_FRACTIONS:
            acc += share
            if x < acc:
                out[u] = name
                break
        else:  # float rounding at the top end
            out[u] = SPLIT_FRACTIONS[-1][0]
    return out
