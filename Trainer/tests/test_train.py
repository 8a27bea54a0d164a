"""The trainer on a tiny UNet with SD1.5's topology: what changes, what is reproducible, what it writes."""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from pidiff import cli
from pidiff.model import TINY_SD15_UNET_CONFIG, load_weights
from pidiff.shards import write_test_shard
from pidiff.train import (
    IdentityGroupTrainer,
    IdentitySamples,
    TrainConfig,
    config_from_args,
    ddpm_noise_levels,
    prepare_frozen_unet,
    resolve_device_and_precision,
    train_groups,
)

LATENT_SIZE = 8  # tiny latents keep a CPU step well under a second


# one_cpu_thread (autouse for these tiny-model tests) lives in conftest.py.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_SD15_UNET_CONFIG)


def text_table(templates: int = 3, dim: int = 768) -> torch.Tensor:
    return torch.randn(templates + 1, 77, dim, generator=torch.Generator().manual_seed(5))


def identity_samples(name: str, count: int = 3, seed: int = 0) -> IdentitySamples:
    g = torch.Generator().manual_seed(seed)
    shape = (count, 4, LATENT_SIZE, LATENT_SIZE)
    return IdentitySamples(name, [f"{name}_{i:03d}" for i in range(count)], torch.randn(count, 18, 512, generator=g),
                           torch.randn(shape, generator=g), 0.1 * torch.rand(shape, generator=g))


def config(tmp_path, **overrides) -> TrainConfig:
    fields = dict(out=str(tmp_path), steps=4, checkpoint_every=0, log_every=1000, device="cpu", precision="fp32")
    return resolve_device_and_precision(TrainConfig(**{**fields, **overrides}))


def train(unet, tmp_path, samples: list[IdentitySamples], **overrides):
    cfg = config(tmp_path, **overrides)
    prepare_frozen_unet(unet, cfg)
    return train_groups(unet, text_table(), {s.identity: s for s in samples}, cfg, "test-unet", log=lambda m: None)


def test_defaults_are_the_paper_recipe():
    cfg = config_from_args(["--encoded", "e", "--identity", "x", "--sd", "s", "--out", "o"])
    assert (cfg.steps, cfg.batch_size, cfg.learning_rate, cfg.weight_decay) == (600, 4, 1e-4, 0.01)
    assert (cfg.visual_dropout, cfg.text_dropout, cfg.placeholder, cfg.default_lambda) == (0.5, 0.3, "S*", 0.4)
    assert cfg.identities == "x"
    assert config_from_args(["--encoded", "e", "--split", "faces", "--sd", "s", "--out", "o", "--steps", "7"]).steps == 7


def test_training_changes_only_the_adapter_parameters(unet, tmp_path):
    cfg = config(tmp_path, steps=2, visual_dropout=0.0, weight_decay=0.0)
    prepare_frozen_unet(unet, cfg)
    unet_before = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    trainer = IdentityGroupTrainer(unet, text_table(), [identity_samples("ann")], cfg, "cpu", ddpm_noise_levels(None, "cpu"))
    adapter_before = {name: p.detach().clone() for name, p in trainer.adapter.named_parameters()}
    trainer.run(None, log=lambda m: None)
    trainer.adapter.uninstall(unet)

    unet_after = unet.state_dict()
    assert unet_after.keys() == unet_before.keys()
    assert all(torch.equal(unet_after[name], tensor) for name, tensor in unet_before.items())
    assert not any(p.requires_grad for p in unet.parameters())
    unchanged = [name for name, p in trainer.adapter.named_parameters() if torch.equal(p, adapter_before[name])]
    assert unchanged == []


def test_loss_falls_on_a_tiny_overfit_task(unet, tmp_path):
    cfg = config(tmp_path, steps=10, learning_rate=1e-3, visual_dropout=0.0, text_dropout=0.0, w_plus_noise=0.0)
    prepare_frozen_unet(unet, cfg)
    trainer = IdentityGroupTrainer(unet, text_table(), [identity_samples("ann", count=1)], cfg, "cpu",
                                   ddpm_noise_levels(None, "cpu"))

    def held_out_loss() -> float:  # the same fixed draws of (sample, t, noise) before and after
        generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            losses = []
            for _ in range(4):
                noisy, t, prompt, w_plus, noise = trainer.draw_batch(trainer.samples[0], generator)
                prediction = trainer.adapter.denoise(unet, noisy, t, trainer.text_embeddings[prompt], w_plus)
                losses.append(torch.nn.functional.mse_loss(prediction, noise).item())
        return sum(losses) / len(losses)

    before = held_out_loss()
    trainer.run(None, log=lambda m: None)
    after = held_out_loss()
    trainer.adapter.uninstall(unet)
    assert after < 0.95 * before, (before, after)


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(unet, tmp_path):
    samples = [identity_samples("ann")]
    full = train(unet, tmp_path / "full", samples, steps=6, checkpoint_every=3, keep_checkpoints=True)
    assert (tmp_path / "full" / "checkpoints" / "step-000003").is_dir()

    # An interrupted run: only the step-3 checkpoint survived; --resume continues from it.
    shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    resumed = train(unet, tmp_path / "resumed", samples, steps=6, checkpoint_every=3, resume=True)

    full_weights, full_meta = load_weights(full["ann"])
    resumed_weights, resumed_meta = load_weights(resumed["ann"])
    assert all(torch.equal(resumed_weights[name], tensor) for name, tensor in full_weights.items())
    assert full_meta["final_loss"] == resumed_meta["final_loss"] and resumed_meta["steps"] == "6"
    assert (tmp_path / "full" / "loss.csv").read_text() == (tmp_path / "resumed" / "loss.csv").read_text()
    assert not (tmp_path / "resumed" / "checkpoints").exists()  # removed once the weights are written


def test_identities_trained_together_match_identities_trained_one_by_one(unet, tmp_path):
    samples = [identity_samples("ann", count=3, seed=1), identity_samples("bob", count=2, seed=2)]
    together = train(unet, tmp_path / "together", samples, steps=3, group_size=2)
    alone = train(unet, tmp_path / "alone", samples, steps=3, group_size=1)
    for name in ("ann", "bob"):
        batched, _ = load_weights(together[name])
        single, _ = load_weights(alone[name])
        for key, tensor in single.items():
            torch.testing.assert_close(batched[key], tensor, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    ann_only, _ = load_weights(alone["ann"])
    bob_only, _ = load_weights(alone["bob"])
    assert not torch.equal(ann_only["mapper.linears.0.weight"], bob_only["mapper.linears.0.weight"])


# -- the command, end to end, on `pidiff random-model --tiny` and encoded files --------------------

def write_encoded_shard(path, labels: dict[str, tuple[str, str]], seed: int = 0, source_shard: str = "") -> None:
    """An encoded shard in `pidiff encode`'s format; labels: key -> (identity, role)."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    tensors = {"w_plus": torch.randn(n, 18, 512, generator=g),
               "latent_mean": torch.randn(n, 4, LATENT_SIZE, LATENT_SIZE, generator=g) * 5,
               "latent_std": torch.rand(n, 4, LATENT_SIZE, LATENT_SIZE, generator=g)}
    metadata = {"format": "pidiff-encoded/1", "keys": json.dumps(list(labels)), "scaling_factor": "0.18215"}
    if source_shard:
        metadata["source_shard"] = source_shard
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def write_encoded_split(encoded, labels: dict[str, tuple[str, str]]):
    """The split `faces` as one encoded shard with its identity sidecar; returns the folder."""
    write_encoded_shard(encoded / "faces-000000.safetensors", labels)
    sidecar = {key: {"identity": identity, "role": role} for key, (identity, role) in labels.items()}
    (encoded / "faces-000000.samples.json").write_text(json.dumps(sidecar))
    return encoded


def test_train_command_writes_weights_with_metadata_and_a_loss_curve(tiny_models, tmp_path):
    labels = {"ann_000": ("ann", "train"), "ann_001": ("ann", "train"), "ann_002": ("ann", "reference"),
              "bob_000": ("bob", "train")}
    encoded = write_encoded_split(tmp_path / "encoded", labels)
    out = tmp_path / "run"

    argv = ["train", "--encoded", str(encoded), "--identity", "ann", "--sd", str(tiny_models["sd"]),
            "--out", str(out), "--steps", "3", "--log-every", "1", "--device", "cpu"]
    assert cli.main(argv) == 0

    weights, metadata = load_weights(out / "pidiff.safetensors")
    assert metadata["identity"] == "ann" and metadata["steps"] == "3" and metadata["placeholder"] == "S*"
    assert json.loads(metadata["train_keys"]) == ["ann_000", "ann_001"]  # the reference image is not trained on
    assert len(metadata["base_model"]) == 64 and len(metadata["data_fingerprint"]) == 64
    assert json.loads(metadata["default_lambda"]) == 0.4 and json.loads(metadata["random_base_model"]) is True
    saved_config = json.loads(metadata["config"])
    assert saved_config["steps"] == 3 and saved_config["batch_size"] == 4 and saved_config["precision"] == "fp32"
    text_width = json.loads((tiny_models["sd"] / "unet" / "config.json").read_text())["cross_attention_dim"]
    assert weights["mapper.linears.3.weight"].shape == (text_width, 6 * 512)  # w+ rows 12..17 -> one token
    with open(out / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["loss"]) > 0 for r in rows)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "train_config.json").read_text())["identities"] == "ann"


def test_split_trains_every_identity_with_labels_from_the_source_shards(tiny_models, tmp_path):
    labels = {"ann_000": ("ann", "train"), "bob_000": ("bob", "train"), "bob_001": ("bob", "train")}
    write_test_shard(tmp_path / "shards" / "faces-000000.tar",
                     {key: {"json": json.dumps({"identity": identity, "role": role}).encode()}
                      for key, (identity, role) in labels.items()})
    write_encoded_shard(tmp_path / "encoded" / "faces-000000.safetensors", labels, source_shard="faces-000000.tar")
    write_encoded_shard(tmp_path / "encoded" / "other-000000.safetensors", {"zed_000": ("zed", "train")})
    out = tmp_path / "run"

    argv = ["train", "--encoded", str(tmp_path / "encoded"), "--split", "faces", "--shards", str(tmp_path / "shards"),
            "--sd", str(tiny_models["sd"]), "--out", str(out), "--steps", "2", "--device", "cpu"]
    assert cli.main(argv) == 0
    assert sorted(p.parent.name for p in out.glob("*/pidiff.safetensors")) == ["ann", "bob"]
    _, metadata = load_weights(out / "bob" / "pidiff.safetensors")
    assert json.loads(metadata["train_keys"]) == ["bob_000", "bob_001"]


def test_two_launched_ranks_split_the_identities_and_match_a_single_process(tiny_models, tmp_path):
    """`accelerate launch` with two processes (CPU ranks over gloo): each group is trained by
    exactly one rank, and every identity's weights equal those of a one-process run."""
    labels = {"ann_000": ("ann", "train"), "ann_001": ("ann", "train"), "bob_000": ("bob", "train"),
              "cat_000": ("cat", "train")}
    encoded = write_encoded_split(tmp_path / "encoded", labels)
    common = ["--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]), "--steps", "2",
              "--group-size", "1", "--device", "cpu"]

    assert cli.main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), "-m", "pidiff.cli", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([*launcher, *common, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    trained_by = {}
    for line in run.stdout.splitlines():
        if match := re.match(r"\[rank (\d)\] group \d+: training (\w+)", line):
            trained_by.setdefault(match.group(2), []).append(int(match.group(1)))
    assert trained_by == {"ann": [0], "bob": [1], "cat": [0]}, run.stdout
    for name in ("ann", "bob", "cat"):
        alone, _ = load_weights(tmp_path / "one" / name / "pidiff.safetensors")
        launched, _ = load_weights(tmp_path / "two" / name / "pidiff.safetensors")
        assert all(torch.equal(launched[key], tensor) for key, tensor in alone.items()), name
