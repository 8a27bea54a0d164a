"""pidiff.runs: group sizes (also agreed between two real ranks), identity folders, checkpoint
files, the --resume checks, and `accelerate launch` with two CPU ranks."""

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

from conftest import identity_samples, text_table, train, train_config, write_encoded_split
from pidiff import cli, runs
from pidiff.model import load_weights
from pidiff.runs import RECIPE_FIELDS, RUN_FIELDS, auto_group_size, identity_folder, resolve_group_size
from pidiff.train import IdentityGroupTrainer, TrainConfig, check_config

# one_cpu_thread (autouse for these tiny-model tests) lives in conftest.py, as does the `unet` fixture.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")

GIB = 2**30


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
    assert resolve_group_size(train_config(tmp_path, group_size=3)).group_size == 3
    assert resolve_group_size(train_config(tmp_path)).group_size == 4  # default 0 = auto; 4 on the CPU
    with pytest.raises(ValueError, match="--group-size"):
        check_config(train_config(tmp_path, group_size=-1))
    messages = []
    samples = [identity_samples(name, 2, seed) for seed, name in enumerate("abcde")]
    train(unet, tmp_path, samples, steps=1, log=messages.append)
    assert "group size 4 (auto, for cpu)" in messages
    assert sum("training" in m for m in messages) == 2  # five identities: a group of 4 and one of 1
    assert json.loads((tmp_path / "train_config.json").read_text())["group_size"] == 4


def resolve_on_a_rank(rank: int, world_size: int, rendezvous: str, memory_by_rank: list[int],
                      identity_counts: list[int | None], results: str) -> None:
    """One rank of test_ranks_agree_on_the_smallest_auto_group_size (run by torch.multiprocessing):
    it reports its own card's memory and writes the group sizes it resolves."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        runs.device_memory_bytes = lambda device: memory_by_rank[rank]  # this rank's card
        config = TrainConfig(out=results, device="cpu", precision="bf16")
        sizes = [resolve_group_size(config, world_size, count).group_size for count in identity_counts]
        Path(results, f"rank-{rank}.json").write_text(json.dumps(sizes))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_agree_on_the_smallest_auto_group_size(tmp_path):
    """Every rank must cut the identities into the same groups: two real ranks (gloo on CPU) whose
    cards hold 9 and 5 identities both resolve 5, the smaller; no group is larger than the ranks'
    fair share of the identities, so none idles."""
    memory = [40 * GIB, 24 * GIB]
    alone = [auto_group_size(TrainConfig(precision="bf16"), m) for m in memory]
    assert alone == [9, 5]  # the ranks report different figures
    torch.multiprocessing.spawn(resolve_on_a_rank, args=(2, str(tmp_path / "rendezvous"), memory, [None, 40, 3],
                                                         str(tmp_path)), nprocs=2, join=True)
    sizes = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert sizes == [[5, 5, 2], [5, 5, 2]]


def test_identities_named_like_the_runs_own_files_get_other_folders():
    for name in ("checkpoints", "train_config.json", "Checkpoints"):
        assert identity_folder(name).startswith(name.split(".")[0]) and identity_folder(name) != name


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
    cfg = train_config(tmp_path, steps=4, seed=1)
    trainer = IdentityGroupTrainer(unet, text_table(), samples, cfg)
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


def test_weights_and_checkpoints_follow_the_umask(unet, tmp_path):
    previous = os.umask(0o022)
    try:
        written = train(unet, tmp_path, [identity_samples("ann")], steps=2, checkpoint_every=1, keep_checkpoints=True)
    finally:
        os.umask(previous)
    assert written["ann"].stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "checkpoints" / "step-000001" / "adapter.safetensors").stat().st_mode & 0o777 == 0o644


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
