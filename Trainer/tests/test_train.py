"""The trainer on a tiny UNet with SD1.5's topology: what changes, what is reproducible, what it writes."""

import csv
import dataclasses
import hashlib
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
    RECIPE_FIELDS,
    RUN_FIELDS,
    IdentityGroupTrainer,
    IdentitySamples,
    TrainConfig,
    auto_group_size,
    check_config,
    config_from_args,
    ddpm_noise_levels,
    identity_folder,
    load_training_samples,
    prepare_frozen_unet,
    resolve_device_and_precision,
    resolve_group_size,
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


def train(unet, tmp_path, samples: list[IdentitySamples], base_model="test-unet", log=lambda m: None, **overrides):
    """train_groups as `--identities` would call it; pass identity=NAME for `--identity NAME`'s flat layout."""
    overrides.setdefault("identities", ",".join(s.identity for s in samples))
    cfg = config(tmp_path, **overrides)
    prepare_frozen_unet(unet, cfg)
    return train_groups(unet, text_table(), {s.identity: s for s in samples}, cfg, base_model, log=log)


def test_defaults_are_the_paper_recipe():
    cfg = config_from_args(["--encoded", "e", "--identity", "x", "--sd", "s", "--out", "o"])
    assert (cfg.steps, cfg.batch_size, cfg.learning_rate, cfg.weight_decay) == (600, 4, 1e-4, 0.01)
    assert (cfg.visual_dropout, cfg.text_dropout, cfg.placeholder, cfg.default_lambda) == (0.5, 0.3, "S*", 0.4)
    assert cfg.identities == "x" and cfg.identity == "x"
    split = config_from_args(["--encoded", "e", "--split", "faces", "--sd", "s", "--out", "o", "--steps", "7"])
    assert split.steps == 7 and split.identity == "" and split.split == "faces"
    assert config_from_args(["--encoded", "e", "--identities", "x", "--sd", "s", "--out", "o"]).identity == ""


def test_every_config_field_either_changes_the_result_or_not():
    """--resume compares the recipe fields; a new field must be placed on one side."""
    names = [field.name for field in dataclasses.fields(TrainConfig)]
    assert sorted(RECIPE_FIELDS + RUN_FIELDS) == sorted(names)
    assert not set(RECIPE_FIELDS) & set(RUN_FIELDS)


def test_auto_group_size_follows_the_cards_memory_and_the_batch():
    gib = 2**30
    bf16 = TrainConfig(precision="bf16")
    assert auto_group_size(bf16, int(79.2 * gib)) == 16  # an 80 GB H100: the measured K=16 (48.9 GiB compiled)
    assert auto_group_size(bf16, 40 * gib) == 9          # (36 - 4) // 3.5
    assert auto_group_size(bf16, 24 * gib) == 5
    assert auto_group_size(bf16, 8 * gib) == 1           # never below one identity
    assert auto_group_size(dataclasses.replace(bf16, batch_size=8), 40 * gib) == 4
    assert auto_group_size(dataclasses.replace(bf16, precision="fp32"), 40 * gib) == 4
    assert auto_group_size(bf16, None) == 4              # no GPU


def test_group_size_zero_resolves_before_training_and_is_saved_resolved(unet, tmp_path):
    assert resolve_group_size(config(tmp_path, group_size=3)).group_size == 3
    assert resolve_group_size(config(tmp_path)).group_size == 4  # default 0 = auto; 4 on the CPU
    with pytest.raises(ValueError, match="--group-size"):
        check_config(config(tmp_path, group_size=-1))
    messages = []
    samples = [identity_samples(name, 2, seed) for seed, name in enumerate("abcde")]
    train(unet, tmp_path, samples, steps=1, log=messages.append)
    assert "group size 4 (auto, for cpu)" in messages
    assert sum("training" in m for m in messages) == 2  # five identities: a group of 4 and one of 1
    assert json.loads((tmp_path / "train_config.json").read_text())["group_size"] == 4


def test_ranks_agree_on_the_smallest_auto_group_size(tmp_path):
    """Every rank must cut the identities into the same groups: the group size is reduced with MIN."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert resolve_group_size(config(tmp_path), world_size=2).group_size == 4
        # No rank idles while another trains a big group: at most the ranks' fair share.
        assert resolve_group_size(config(tmp_path), world_size=2, identities=3).group_size == 2
        assert resolve_group_size(config(tmp_path), world_size=2, identities=40).group_size == 4
    finally:
        torch.distributed.destroy_process_group()


def test_identities_named_like_the_runs_own_files_get_other_folders():
    for name in ("checkpoints", "train_config.json", "Checkpoints"):
        assert identity_folder(name).startswith(name.split(".")[0]) and identity_folder(name) != name


def test_train_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    encoded = write_encoded_split(tmp_path / "encoded", {"ann_000": ("ann", "train"), "bob_000": ("bob", "reference")})
    base = ["train", "--encoded", str(encoded), "--sd", str(tmp_path / "no-sd"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    cases = [(["--identities", ","], "--identities needs at least one name"),
             (["--identity="], "--identity needs a name"),
             (["--identity", "ann", "--group-size", "-1"], "--group-size must be 0 (auto) or more, not -1"),
             (["--identity", "ann", "--steps", "0"], "--steps must be at least 1"),
             (["--identity", "ann", "--log-every", "0"], "--log-every must be at least 1"),
             (["--identity", "ann", "--visual-dropout", "1.5"], "--visual-dropout must be in [0, 1]"),
             (["--identity", "zed"], "no training samples"),
             (["--split", "nosuch"], "no encoded shards nosuch-NNNNNN.safetensors"),
             (["--identities", "bob"], "no training samples")]
    for extra, message in cases:
        assert cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("pidiff train: ") and message in err and err.count("\n") == 1, (extra, err)
    assert not (tmp_path / "out").exists()  # nothing written, not even train_config.json


def test_identity_folders_stay_inside_out_and_apart():
    for safe in ("ann", "person_0001", "Jean-Luc.Picard", "a" * 100, "-x", "_"):
        assert identity_folder(safe) == safe
    unsafe = ["../escape", "..", ".", ".hidden", "a/b", "a\\b", "José García", "李雷", "", "a" * 101, "a b", "a:b",
              "../../etc", "a/b/../c"]
    folders = [identity_folder(name) for name in unsafe]
    assert len(set(folders)) == len(unsafe)
    for name, folder in zip(unsafe, folders):
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        assert folder.endswith("-" + digest), (name, folder)
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", folder), (name, folder)
    assert identity_folder("../escape").startswith("escape-")
    assert identity_folder("José García").startswith("Jose-Garcia-")
    assert identity_folder("李雷").startswith("identity-")


def test_identities_that_are_not_folder_names_are_written_inside_out(unet, tmp_path):
    samples = [identity_samples("../escape", count=1, seed=1), identity_samples("a/b", count=1, seed=2)]
    written = train(unet, tmp_path / "run", samples, steps=1)
    for name, path in written.items():
        assert path.parent.parent == tmp_path / "run" and path.parent.name == identity_folder(name)
        assert load_weights(path)[1]["identity"] == name  # the identity itself lives in the metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_identities_differing_only_in_case_get_folders_apart_on_any_file_system(unet, tmp_path):
    written = train(unet, tmp_path, [identity_samples("Ann"), identity_samples("ann")], steps=1)
    assert written["Ann"].parent.name == "Ann"
    assert written["ann"].parent.name.startswith("ann-") and len(written["ann"].parent.name) == 14
    assert load_weights(written["ann"])[1]["identity"] == "ann"


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
    full = train(unet, tmp_path / "full", samples, steps=6, checkpoint_every=3, keep_checkpoints=True, identity="ann")
    assert (tmp_path / "full" / "checkpoints" / "step-000003").is_dir()

    # An interrupted run: only the step-3 checkpoint survived; --resume continues from it.
    shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    resumed = train(unet, tmp_path / "resumed", samples, steps=6, checkpoint_every=3, resume=True, identity="ann")

    full_weights, full_meta = load_weights(full["ann"])
    resumed_weights, resumed_meta = load_weights(resumed["ann"])
    assert all(torch.equal(resumed_weights[name], tensor) for name, tensor in full_weights.items())
    assert full_meta["final_loss"] == resumed_meta["final_loss"] and resumed_meta["steps"] == "6"
    assert (tmp_path / "full" / "loss.csv").read_text() == (tmp_path / "resumed" / "loss.csv").read_text()
    assert not (tmp_path / "resumed" / "checkpoints").exists()  # removed once the weights are written


def test_resume_keeps_finished_weights_only_when_this_run_would_write_them(unet, tmp_path):
    samples = [identity_samples("ann")]
    written = train(unet, tmp_path, samples, steps=1, log_every=1)["ann"]
    assert written == tmp_path / "ann" / "pidiff.safetensors"
    before = written.read_bytes()

    # Changing only how the run logs keeps the weights.
    messages = []
    assert train(unet, tmp_path, samples, steps=1, log_every=7, resume=True, log=messages.append)["ann"] == written
    assert "already trained, skipped" in messages[-1] and written.read_bytes() == before
    assert json.loads((tmp_path / "train_config.json").read_text())["log_every"] == 7

    # A changed recipe, changed samples or another base model is an error naming the file and the field.
    with pytest.raises(ValueError, match=r"ann/pidiff\.safetensors.*steps 1 -> 5.*learning_rate 0\.0001 -> 0\.001"):
        train(unet, tmp_path, samples, steps=5, learning_rate=1e-3, resume=True)
    with pytest.raises(ValueError, match=r"ann/pidiff\.safetensors.*data_fingerprint"):
        train(unet, tmp_path, [identity_samples("ann", seed=9)], steps=1, resume=True)
    with pytest.raises(ValueError, match=r"ann/pidiff\.safetensors.*base_model"):
        train(unet, tmp_path, samples, steps=1, resume=True, base_model="another-unet")
    assert written.read_bytes() == before
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == 1  # not overwritten by a refused run


def test_resume_continues_only_from_a_checkpoint_of_the_same_recipe_and_data(unet, tmp_path):
    samples = [identity_samples("ann")]
    train(unet, tmp_path / "full", samples, steps=4, checkpoint_every=2, keep_checkpoints=True)
    checkpoint = tmp_path / "full" / "checkpoints" / "step-000002"
    shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "resumed" / "checkpoints")
    with pytest.raises(ValueError, match=r"checkpoint .*step-000002.*weight_decay 0\.01 -> 0\.0"):
        train(unet, tmp_path / "resumed", samples, steps=4, checkpoint_every=2, weight_decay=0.0, resume=True)
    with pytest.raises(ValueError, match=r"checkpoint .*step-000002.*data_fingerprints"):
        train(unet, tmp_path / "resumed", [identity_samples("ann", seed=9)], steps=4, checkpoint_every=2, resume=True)
    assert not (tmp_path / "resumed" / "ann").exists()

    # The trainer's own loading checks too, for callers that do not go through train_groups.
    cfg = config(tmp_path, steps=4, seed=1)
    trainer = IdentityGroupTrainer(unet, text_table(), samples, cfg, "cpu", ddpm_noise_levels(None, "cpu"))
    with pytest.raises(ValueError, match=r"step-000002.*seed 0 -> 1"):
        trainer.load_checkpoint(checkpoint)
    trainer.adapter.uninstall(unet)


def test_resume_with_auto_group_size_continues_the_interrupted_runs_groups(unet, tmp_path):
    """Checkpoints belong to groups: a resume whose auto size would regroup the identities (another
    card, another rank count) keeps the size the interrupted run resolved, and an explicit other
    size is refused rather than the checkpoints silently dropped."""
    samples = [identity_samples(name, seed=i) for i, name in enumerate(("ann", "bob", "cat"))]
    full = train(unet, tmp_path / "full", samples, steps=4, checkpoint_every=2, keep_checkpoints=True, group_size=2)
    assert (tmp_path / "full" / "checkpoints" / "group-0000" / "step-000002").is_dir()

    def interrupted(name):
        shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / name / "checkpoints")
        shutil.copy(tmp_path / "full" / "train_config.json", tmp_path / name / "train_config.json")
        return tmp_path / name

    with pytest.raises(ValueError, match=r"group-0000.*\['ann', 'bob'\].*does not form \(group size 3\).*--group-size 2"):
        train(unet, interrupted("explicit"), samples, steps=4, checkpoint_every=2, resume=True, group_size=3)
    assert (tmp_path / "explicit" / "checkpoints" / "group-0000" / "step-000002").is_dir()  # nothing removed

    messages = []
    resumed = train(unet, interrupted("auto"), samples, steps=4, checkpoint_every=2, resume=True, log=messages.append)
    assert any("group size 2 (auto: the group size of the run being resumed" in m for m in messages)
    assert any("resumed from" in m and "group-0000" in m for m in messages)
    for name in ("ann", "bob", "cat"):
        expected, _ = load_weights(full[name])
        got, _ = load_weights(resumed[name])
        assert all(torch.equal(got[key], tensor) for key, tensor in expected.items()), name


def test_weights_and_checkpoints_follow_the_umask(unet, tmp_path):
    previous = os.umask(0o022)
    try:
        written = train(unet, tmp_path, [identity_samples("ann")], steps=2, checkpoint_every=1, keep_checkpoints=True)
    finally:
        os.umask(previous)
    assert written["ann"].stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "checkpoints" / "step-000001" / "adapter.safetensors").stat().st_mode & 0o777 == 0o644


def test_resume_refuses_a_checkpoint_its_groups_would_not_find(unet, tmp_path):
    """A one-group run's checkpoint sits in OUT/checkpoints; resumed with one more identity, the same
    group becomes group 0 of 2 and would be looked for in group-0000: refused, not started over.
    A finished group's kept checkpoints do not stand in the way."""
    ann_bob = [identity_samples("ann", seed=0), identity_samples("bob", seed=1)]
    train(unet, tmp_path / "full", ann_bob, steps=4, checkpoint_every=2, keep_checkpoints=True, group_size=2)
    shutil.copytree(tmp_path / "full" / "checkpoints", tmp_path / "grown" / "checkpoints")
    three = [*ann_bob, identity_samples("cat", seed=2)]
    with pytest.raises(ValueError, match=r"step-000002 continues the group \['ann', 'bob'\].*group-0000"):
        train(unet, tmp_path / "grown", three, steps=4, checkpoint_every=2, resume=True, group_size=2)
    # --keep-checkpoints left the finished group's checkpoint in "full": resuming there with another
    # size is fine, the group is done.
    written = train(unet, tmp_path / "full", three, steps=4, checkpoint_every=2, resume=True, group_size=3)
    assert sorted(written) == ["ann", "bob", "cat"]


def test_a_finished_group_removes_only_its_own_checkpoints(unet, tmp_path):
    other = tmp_path / "checkpoints" / "group-0003" / "step-000002"  # another run's group in the same OUT
    other.mkdir(parents=True)
    train(unet, tmp_path, [identity_samples("ann")], steps=2, checkpoint_every=1)
    assert other.is_dir() and not list((tmp_path / "checkpoints").glob("step-*"))


def test_a_diverging_run_stops_with_an_error_and_writes_no_weights(unet, tmp_path):
    exploding = identity_samples("ann")
    exploding.latent_mean.mul_(1e38)  # the prediction error overflows fp32
    with pytest.raises(FloatingPointError, match=r"non-finite loss by step 1 for \['ann'\]"):
        train(unet, tmp_path, [exploding], steps=3, log_every=1)
    assert not (tmp_path / "ann" / "pidiff.safetensors").exists()


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

def write_encoded_shard(path, labels: dict[str, tuple[str, str]], seed: int = 0, source_shard: str = "",
                        encoders: tuple[str, str] = ("e4e-0", "vae-0"), nan_row: int | None = None) -> None:
    """An encoded shard in `pidiff encode`'s format; labels: key -> (identity, role)."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    tensors = {"w_plus": torch.randn(n, 18, 512, generator=g),
               "latent_mean": torch.randn(n, 4, LATENT_SIZE, LATENT_SIZE, generator=g) * 5,
               "latent_std": torch.rand(n, 4, LATENT_SIZE, LATENT_SIZE, generator=g)}
    if nan_row is not None:
        tensors["latent_mean"][nan_row, 0, 0, 0] = float("nan")
    metadata = {"format": "pidiff-encoded/1", "keys": json.dumps(list(labels)), "scaling_factor": "0.18215",
                "e4e_sha256": encoders[0], "vae_sha256": encoders[1]}
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


def test_samples_trained_on_must_be_finite_and_of_one_pair_of_encoders(tmp_path):
    def shard(folder, name, labels, **kwargs):
        write_encoded_shard(tmp_path / folder / f"{name}.safetensors", labels, **kwargs)
        sidecar = {key: {"identity": identity, "role": role} for key, (identity, role) in labels.items()}
        (tmp_path / folder / f"{name}.samples.json").write_text(json.dumps(sidecar))

    labels = {"ann_000": ("ann", "train"), "bob_000": ("bob", "reference")}
    shard("a", "faces-000000", labels, nan_row=0)
    with pytest.raises(ValueError, match=r"faces-000000\.safetensors: non-finite .*'ann_000' of 'ann'"):
        load_training_samples(tmp_path / "a", None)
    shard("a2", "faces-000000", labels, nan_row=1)  # a NaN in a held-out reference row is not trained on
    assert sorted(load_training_samples(tmp_path / "a2", None)) == ["ann"]

    shard("b", "faces-000000", {"ann_000": ("ann", "train")})
    shard("b", "faces-000001", {"bob_000": ("bob", "train")}, encoders=("e4e-0", "vae-1"))
    with pytest.raises(ValueError, match=r"faces-000000\.safetensors .* and faces-000001\.safetensors .*not encoded with the same models"):
        load_training_samples(tmp_path / "b", None)
    # Only the shards an identity is trained from are compared: an older split beside it may differ.
    assert sorted(load_training_samples(tmp_path / "b", ["ann"])) == ["ann"]
    shard("c", "v1-000000", {"ann_000": ("ann", "train")}, encoders=("e4e-old", "vae-0"))
    shard("c", "v2-000000", {"ann_001": ("ann", "train")})
    assert load_training_samples(tmp_path / "c", None, "v2")["ann"].keys == ["ann_001"]


def test_split_reads_only_its_own_six_digit_shards(tmp_path):
    write_encoded_split(tmp_path, {"ann_000": ("ann", "train")})  # faces-000000.safetensors
    for name, identity in (("faces-small-000000", "bob"), ("faces-00001", "cat"), ("faces-0000001", "dan")):
        write_encoded_shard(tmp_path / f"{name}.safetensors", {f"{identity}_000": (identity, "train")})
        (tmp_path / f"{name}.samples.json").write_text(
            json.dumps({f"{identity}_000": {"identity": identity, "role": "train"}}))
    assert sorted(load_training_samples(tmp_path, None, "faces")) == ["ann"]
    assert sorted(load_training_samples(tmp_path, None, "faces-small")) == ["bob"]
    assert sorted(load_training_samples(tmp_path, None)) == ["ann", "bob", "cat", "dan"]
    with pytest.raises(FileNotFoundError, match="faces-sm-NNNNNN"):
        load_training_samples(tmp_path, None, "faces-sm")


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
    assert json.loads((out / "train_config.json").read_text())["identity"] == "ann"


def test_a_split_of_one_identity_still_gets_a_folder_per_identity(tiny_models, tmp_path):
    encoded = write_encoded_split(tmp_path / "encoded", {"ann_000": ("ann", "train"), "ann_001": ("ann", "train")})
    out = tmp_path / "run"
    argv = ["train", "--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]),
            "--out", str(out), "--steps", "1", "--device", "cpu"]
    assert cli.main(argv) == 0
    assert (out / "ann" / "pidiff.safetensors").is_file() and (out / "ann" / "loss.csv").is_file()
    assert not (out / "pidiff.safetensors").exists()


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
