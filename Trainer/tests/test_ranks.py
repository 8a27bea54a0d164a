"""Data-parallel `pidiff encode` and `pidiff train` with two real CPU ranks (gloo) started by
`pidiff launch` (accelerate): the same files as one process, a failing rank named, a killed rank
resumed, and no rank outliving a killed parent.

(The group-size agreement of ranks that disagree is test_runs.py's
test_ranks_agree_on_the_smallest_auto_group_size, with two real gloo ranks.)"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pidiff import cli
from pidiff.encode import rank_shards
from pidiff.model import load_weights

from conftest import make_shard, write_encoded_split

RANK_ENV = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


def pidiff_launch(args: list[str], processes: int = 2, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pidiff.cli", "launch", "--processes", str(processes), "--", *args],
                          env={**os.environ, **RANK_ENV}, capture_output=True, text=True, timeout=timeout, **popen)


def tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}, file.metadata()


@pytest.fixture
def five_shards(tmp_path) -> list[Path]:
    """Five small shards of uneven sizes, so the ranks' batches straddle shard ends differently from
    one process's."""
    sizes = [3, 1, 2, 3, 1]
    paths, n = [], 0
    for index, size in enumerate(sizes):
        keys = [f"id{(n + i) % 3}_{n + i:03d}" for i in range(size)]
        paths.append(make_shard(tmp_path / "shards" / f"faces-{index:06d}.tar", keys, seed=n))
        n += size
    return paths


def test_shards_are_dealt_to_ranks_by_their_index():
    shards = [f"s{i}" for i in range(7)]
    assert rank_shards(shards, 0, 2) == ["s0", "s2", "s4", "s6"]
    assert rank_shards(shards, 1, 2) == ["s1", "s3", "s5"]
    assert sorted(sum((rank_shards(shards, r, 3) for r in range(3)), [])) == shards


def test_two_ranks_encode_the_same_files_as_one_process_and_a_rerun_does_only_what_is_missing(
        tiny_models, five_shards, tmp_path):
    common = ["--e4e", str(tiny_models["e4e"]), "--sd", str(tiny_models["sd"]), "--device", "cpu", "--batch-size", "2",
              "--no-progress", "--shards", *map(str, five_shards)]
    alone = subprocess.run([sys.executable, "-m", "pidiff.cli", "encode", *common, "--out", str(tmp_path / "one")],
                           env={**os.environ, **RANK_ENV}, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    run = pidiff_launch(["encode", *common, "--out", str(tmp_path / "two")])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pidiff encode (2 ranks): 5 shards encoded (10 samples), 0 shards reused" in run.stdout, run.stdout

    for shard in five_shards:
        name = shard.name.replace(".tar", ".safetensors")
        one, one_meta = tensors_and_metadata(tmp_path / "one" / name)
        two, two_meta = tensors_and_metadata(tmp_path / "two" / name)
        assert one_meta == two_meta, name
        for tensor in one:  # bitwise: float32 on the CPU, each row encoded on its own
            assert torch.equal(one[tensor], two[tensor]), (name, tensor)

    # A rerun after losing two outputs (one of each rank) encodes those two only.
    (tmp_path / "two" / "faces-000001.safetensors").unlink()
    (tmp_path / "two" / "faces-000002.safetensors").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("*.safetensors")}
    rerun = pidiff_launch(["encode", *common, "--out", str(tmp_path / "two")])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "2 shards encoded (3 samples), 3 shards reused (up to date, 7 samples)" in rerun.stdout, rerun.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("*.safetensors") if p.name in before} == before
    one, _ = tensors_and_metadata(tmp_path / "one" / "faces-000001.safetensors")
    two, _ = tensors_and_metadata(tmp_path / "two" / "faces-000001.safetensors")
    assert all(torch.equal(one[t], two[t]) for t in one)
    # The ranks shared the digest cache and both kept their entries.
    digests = json.loads((tmp_path / "two" / ".pidiff-encode-digests.json").read_text())
    assert {Path(key).name for key in digests} >= {shard.name for shard in five_shards}


def test_a_failing_rank_is_named_with_its_shard_and_the_other_ranks_work_is_kept(tiny_models, five_shards, tmp_path):
    # faces-000003.tar (rank 1's) loses its e4e image: that rank fails on it; rank 0 finishes its own.
    broken = five_shards[3]
    with tarfile.open(broken) as tar:
        everything = tar.getmembers()
        members = [(m, tar.extractfile(m).read()) for m in everything if m.name != "id1_007.e4e.png"]
    assert len(members) == len(everything) - 1
    with tarfile.open(broken, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
    common = ["--e4e", str(tiny_models["e4e"]), "--sd", str(tiny_models["sd"]), "--device", "cpu", "--batch-size", "2",
              "--no-progress", "--shards", *map(str, five_shards), "--out", str(tmp_path / "enc")]
    run = pidiff_launch(["encode", *common])
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("pidiff encode: error:")]
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith("pidiff encode: error: rank 1 of 2: ") and "faces-000003.tar" in errors[0], errors[0]
    assert "1 of 2 ranks failed" in run.stdout, run.stdout
    written = sorted(p.name for p in (tmp_path / "enc").glob("*.safetensors"))
    # Rank 0's shards (0, 2, 4) are all written, the broken one is not.
    assert {"faces-000000.safetensors", "faces-000002.safetensors", "faces-000004.safetensors"} <= set(written), written
    assert "faces-000003.safetensors" not in written


def rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the rank `rank` among the processes whose command line holds `marker`."""
    for pid in processes_with(marker):
        try:
            environ = dict(entry.split("=", 1) for entry in
                           Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in entry)
        except OSError:
            continue
        if environ.get("RANK") == str(rank) and "LOCAL_RANK" in environ:
            return pid
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank through /proc")
def test_a_killed_rank_stops_the_run_and_resume_gives_the_weights_of_one_uninterrupted_process(tiny_models, tmp_path):
    """Two identities in groups of one over two ranks; rank 1 is SIGKILLed (as an out-of-memory kill
    would) once each rank's group has a checkpoint: the launcher stops rank 0 and fails naming
    rank 1. `--resume` on two ranks then finishes, and every identity's weights equal those of one
    process that was never interrupted, bit for bit (the CPU in float32 is deterministic for a
    fixed shape, and a checkpoint holds the optimiser and every identity's generator state)."""
    labels = {f"{name}_{i:03d}": (name, "train") for name in ("ann", "bob") for i in range(2)}
    encoded = write_encoded_split(tmp_path / "encoded", labels)
    common = ["--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]), "--steps", "40",
              "--group-size", "1", "--device", "cpu", "--checkpoint-every", "2", "--log-every", "1"]
    alone = subprocess.run([sys.executable, "-m", "pidiff.cli", "train", *common, "--out", str(tmp_path / "one")],
                           env={**os.environ, **RANK_ENV}, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stdout + alone.stderr

    out = tmp_path / "two"
    log_path = tmp_path / "two.log"
    log = open(log_path, "w")
    launcher = subprocess.Popen([sys.executable, "-m", "pidiff.cli", "launch", "--processes", "2", "--", "train", *common,
                                 "--out", str(out)], env={**os.environ, **RANK_ENV}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        # The first group of each rank (group 0: rank 0, group 1: rank 1) has a checkpoint.
        while not all(list((out / "checkpoints" / f"group-{g:04d}").glob("step-*")) for g in (0, 1)):
            assert launcher.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        victim = rank_pid(str(out), 1)
        assert victim is not None, processes_with(str(out))
        os.kill(victim, signal.SIGKILL)
        status = launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        log.close()
    failure = log_path.read_text()
    assert status != 0, failure
    assert re.search(r"rank\s*:\s*1", failure) and "SIGKILL" in failure, failure  # torch's ChildFailedError report
    assert not processes_with(str(out)), "a rank outlived the failed launch"
    assert not (out / "bob" / "pidiff.safetensors").is_file()  # rank 1's identity

    resumed = pidiff_launch(["train", *common, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert re.search(r"\[rank 1\] group 1: resumed from .*step-\d+ at step \d+", resumed.stdout), resumed.stdout
    # rank 0 was stopped by the launcher mid-group (resumed), or had just finished (skipped)
    assert re.search(r"\[rank 0\] group 0: (resumed from|ann already trained)", resumed.stdout), resumed.stdout
    for name in ("ann", "bob"):
        alone, _ = load_weights(tmp_path / "one" / name / "pidiff.safetensors")
        both, metadata = load_weights(out / name / "pidiff.safetensors")
        assert int(metadata["steps"]) == 40
        assert all(torch.equal(both[key], tensor) for key, tensor in alone.items()), name


def processes_with(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in command and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_parent_takes_the_launcher_and_its_ranks_with_it(tiny_models, tmp_path):
    """What pidiff-data does under --processes N: a parent process starts `pidiff launch` with
    PIDIFF_PARENT_PID set to itself. SIGKILL that parent while both ranks train: within a few seconds
    no process of the run is left."""
    labels = {f"{name}_000": (name, "train") for name in ("ann", "bob")}
    encoded = write_encoded_split(tmp_path / "encoded", labels)
    out = tmp_path / "killed-run"
    train = ["train", "--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]), "--steps", "100000",
             "--group-size", "1", "--device", "cpu", "--checkpoint-every", "0", "--log-every", "1", "--out", str(out)]
    # The parent: a shell that starts the launcher and waits, as pidiff-data does.
    parent_script = ('PIDIFF_PARENT_PID=$$ "$0" -m pidiff.cli launch --processes 2 -- "$@" > "$LOG" 2>&1; '
                     'echo "launcher exited $?" >> "$LOG"')
    log = tmp_path / "run.log"
    parent = subprocess.Popen(["/bin/sh", "-c", parent_script, sys.executable, *train],
                              env={**os.environ, **RANK_ENV, "LOG": str(log)})
    try:
        deadline = time.monotonic() + 240
        while not all(re.search(rf"\[rank {r}\] step \d+/", log.read_text() if log.exists() else "") for r in (0, 1)):
            assert parent.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert len(processes_with(str(out))) >= 3  # the launcher and two ranks
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while (left := processes_with(str(out))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"still running after the parent's SIGKILL: {left}"
    finally:
        for pid in processes_with(str(out)):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_ranks_end_with_a_launcher_killed_outright(tiny_models, tmp_path):
    """The launcher itself SIGKILLed (it cannot stop its ranks then): the ranks end with it."""
    labels = {f"{name}_000": (name, "train") for name in ("ann", "bob")}
    encoded = write_encoded_split(tmp_path / "encoded", labels)
    out = tmp_path / "orphaned-run"
    log = open(tmp_path / "run.log", "w")
    launcher = subprocess.Popen([sys.executable, "-m", "pidiff.cli", "launch", "--processes", "2", "--", "train",
                                 "--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]),
                                 "--steps", "100000", "--group-size", "1", "--device", "cpu", "--checkpoint-every", "0",
                                 "--log-every", "1", "--out", str(out)],
                                env={**os.environ, **RANK_ENV}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not all(re.search(rf"\[rank {r}\] step \d+/", (tmp_path / "run.log").read_text()) for r in (0, 1)):
            assert launcher.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.1)
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while (left := processes_with(str(out))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"ranks still running after the launcher's SIGKILL: {left}"
    finally:
        log.close()
        for pid in processes_with(str(out)):
            os.kill(pid, signal.SIGKILL)
