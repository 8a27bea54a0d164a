"""Shared fixtures: tiny random SD1.5 + e4e models (written once per session by the real
`pidiff random-model` command) and small shards of synthetic samples."""

from __future__ import annotations

import json
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


def make_shard(path: Path, keys: list[str], seed: int = 0, roles: dict[str, str] | None = None) -> Path:
    """Synthetic samples; a key `NAME_NNN` is a sample of the identity NAME, of role `roles[key]`
    (default train)."""
    return write_test_shard(path, {key: synthetic_face_sample(seed + i, key.rsplit("_", 1)[0], (roles or {}).get(key, "train"))
                                   for i, key in enumerate(keys)})


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


# -- encoded shards and identity samples for the trainer and sampler tests --------------------------
LATENT_SIZE = 8  # tiny latents keep a CPU step well under a second


@pytest.fixture(scope="module")
def unet():
    """A tiny UNet with SD1.5's topology (one per test module: tests install adapters on it)."""
    from diffusers import UNet2DConditionModel

    from pidiff.model import TINY_SD15_UNET_CONFIG

    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_SD15_UNET_CONFIG)


def identity_samples(name: str, count: int = 3, seed: int = 0):
    from pidiff.data import IdentitySamples

    g = torch.Generator().manual_seed(seed)
    shape = (count, 4, LATENT_SIZE, LATENT_SIZE)
    return IdentitySamples(name, [f"{name}_{i:03d}" for i in range(count)], torch.randn(count, 18, 512, generator=g),
                           torch.randn(shape, generator=g), 0.1 * torch.rand(shape, generator=g))


def write_encoded_shard(path: Path, labels: dict[str, tuple[str, str]], seed: int = 0,
                        encoders: tuple[str, str] = ("e4e-0", "vae-0"), nan_row: int | None = None,
                        format: str = "pidiff-encoded/2") -> Path:
    """An encoded shard in `pidiff encode`'s format; labels: key -> (identity, role). With
    format="pidiff-encoded/1", the older layout without the `samples` field."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    tensors = {"w_plus": torch.randn(n, 18, 512, generator=g),
               "latent_mean": torch.randn(n, 4, LATENT_SIZE, LATENT_SIZE, generator=g) * 5,
               "latent_std": torch.rand(n, 4, LATENT_SIZE, LATENT_SIZE, generator=g)}
    if nan_row is not None:
        tensors["latent_mean"][nan_row, 0, 0, 0] = float("nan")
    metadata = {"format": format, "keys": json.dumps(list(labels)), "count": str(n), "scaling_factor": "0.18215",
                "e4e_sha256": encoders[0], "vae_sha256": encoders[1], "latent_size": str(LATENT_SIZE)}
    if format != "pidiff-encoded/1":
        metadata["samples"] = json.dumps([{"identity": identity, "role": role, "labels": {}}
                                          for identity, role in labels.values()])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def text_table(templates: int = 3, dim: int = 768) -> torch.Tensor:
    return torch.randn(templates + 1, 77, dim, generator=torch.Generator().manual_seed(5))


def train_config(tmp_path, **overrides):
    from pidiff.train import TrainConfig, resolve_device_and_precision

    fields = dict(out=str(tmp_path), steps=4, checkpoint_every=0, log_every=1000, device="cpu", precision="fp32")
    return resolve_device_and_precision(TrainConfig(**{**fields, **overrides}))


def train(unet, tmp_path, samples: list, base_model="test-unet", log=lambda m: None, **overrides):
    """train_groups as `--identities` would call it; pass identity=NAME for `--identity NAME`'s flat layout."""
    from pidiff.train import prepare_frozen_unet, train_groups

    overrides.setdefault("identities", ",".join(s.identity for s in samples))
    cfg = train_config(tmp_path, **overrides)
    prepare_frozen_unet(unet, cfg)
    return train_groups(unet, text_table(), {s.identity: s for s in samples}, cfg, base_model, log=log)


def write_encoded_split(folder: Path, labels: dict[str, tuple[str, str]]) -> Path:
    """The split `faces` as one encoded shard; returns the folder."""
    write_encoded_shard(folder / "faces-000000.safetensors", labels)
    return folder
