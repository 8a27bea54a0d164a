"""Shared fixtures: tiny random SD1.5 + e4e models (written once per session by the real
`pidiff random-model` command) and small shards of synthetic samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pidiff import cli
from pidiff.shards import synthetic_face_sample, write_test_shard

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("random-model")
    assert cli.main(["random-model", "--out", str(out), "--tiny", "--seed", "7"]) == 0
    return {"sd": out / "sd", "e4e": out / "e4e.pt"}


def make_shard(path: Path, keys: list[str], seed: int = 0) -> Path:
    return write_test_shard(path, {key: synthetic_face_sample(seed + i) for i, key in enumerate(keys)})


@pytest.fixture
def two_shards(tmp_path) -> list[Path]:
    shard_dir = tmp_path / "shards"
    return [
        make_shard(shard_dir / "faces-000000.tar", ["alice_000", "alice_001", "bob_000"], seed=0),
        make_shard(shard_dir / "faces-000001.tar", ["carol_000", "carol_001"], seed=10),
    ]


@pytest.fixture
def one_cpu_thread():
    """Tiny models: a second thread costs more in synchronisation than it saves."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
