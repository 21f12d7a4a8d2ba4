"""Shards for the executors' unit tests: made of FileEntry rows only, no file behind them."""

from __future__ import annotations

import pytest

from octbatch.archive import FileEntry
from octbatch.shards import Shard


def make_shards(n: int, files: int = 3) -> list[Shard]:
    return [
        Shard(
            f"shard{i:02d}",
            [
                FileEntry(f"CNV/CNV-{i}-{j}.jpeg", f"/archive/CNV/CNV-{i}-{j}.jpeg", 100 + j, 10**18 + j)
                for j in range(files)
            ],
        )
        for i in range(n)
    ]


@pytest.fixture
def shards() -> list[Shard]:
    return make_shards(7)
