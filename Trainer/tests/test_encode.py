"""`pidiff encode`: round trip, routing of images to encoders, each sample's identity, role and
labels carried into the output, caching (cheap when up to date), and shard errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_shard
from pidiff import cli
from pidiff.e4e import load_e4e
from pidiff import encode
from pidiff.encode import (
    DIGEST_CACHE_NAME,
    EncodeOptions,
    ShardEncoder,
    encode_shards,
    read_encoded_shard,
)
from pidiff.random_model import TINY_VAE_CONFIG, build_random_vae, write_random_e4e
from pidiff.shards import ShardError, expand_shard_pattern, index_shard, synthetic_face_sample, write_test_shard

QUIET = EncodeOptions(workers=0, progress=False, batch_size=2)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_to_unit_range(data: bytes) -> torch.Tensor:
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_round_trip_rows_follow_shard_keys_and_match_direct_encoding(tiny_models, two_shards, tmp_path):
    from diffusers import AutoencoderKL

    out = tmp_path / "encoded"
    pattern = str(two_shards[0].parent / "faces-{000000..000001}.tar")
    status = cli.main([
        "encode", "--shards", pattern, "--e4e", str(tiny_models["e4e"]), "--sd", str(tiny_models["sd"]),
        "--out", str(out), "--batch-size", "2", "--workers", "2", "--no-progress",
    ])
    assert status == 0

    mask = os.umask(0)
    os.umask(mask)
    assert (out / "faces-000000.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask  # not safetensors' own 0600
    first = read_encoded_shard(out / "faces-000000.safetensors")
    second = read_encoded_shard(out / "faces-000001.safetensors")
    assert first.keys == ["alice_000", "alice_001", "bob_000"]
    assert second.keys == ["carol_000", "carol_001"]
    assert first.w_plus.shape == (3, 18, 512)
    assert first.latent_mean.shape == first.latent_std.shape == (3, 4, 64, 64)
    assert bool((first.latent_std > 0).all())

    metadata = first.metadata
    assert json.loads(metadata["keys"]) == first.keys
    assert metadata["e4e_sha256"] == sha256(tiny_models["e4e"])
    assert metadata["vae_sha256"] == sha256(tiny_models["sd"] / "vae" / "diffusion_pytorch_model.safetensors")
    assert metadata["source_sha256"] == sha256(two_shards[0])
    assert metadata["random_weights"] == "e4e,sd"
    assert first.scaling_factor == 0.18215
    assert metadata["storage_dtype"] == "float32"
    assert metadata["format"] == "pidiff-encoded/2"
    unknown = {"race": "unknown", "age": "unknown", "gender": "unknown"}
    assert json.loads(metadata["samples"]) == [{"identity": "alice", "role": "train", "labels": unknown}] * 2 + \
        [{"identity": "bob", "role": "train", "labels": unknown}]
    assert second.samples == [{"identity": "carol", "role": "train", "labels": unknown}] * 2

    # Row 1 of shard 0 is alice_001: e4e saw <key>.e4e.png, the VAE saw <key>.png.
    sample = synthetic_face_sample(1)
    e4e = load_e4e(tiny_models["e4e"])
    vae = AutoencoderKL.from_pretrained(tiny_models["sd"], subfolder="vae")
    with torch.no_grad():
        expected_w = e4e(png_to_unit_range(sample["e4e.png"]))
        posterior = vae.encode(png_to_unit_range(sample["png"])).latent_dist
    torch.testing.assert_close(first.w_plus[1:2], expected_w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(first.latent_mean[1:2], posterior.mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(first.latent_std[1:2], posterior.std, rtol=1e-4, atol=1e-4)


def test_vae_posterior_mean_and_std_match_diffusers_on_a_tiny_autoencoder():
    vae = build_random_vae(TINY_VAE_CONFIG, seed=4)
    e4e = torch.nn.Identity()
    encoder = ShardEncoder(e4e, vae, torch.device("cpu"), precision="fp32")
    images = torch.randint(0, 256, (2, 3, 512, 512), dtype=torch.uint8)
    mean, std = encoder.encode_latents(images)
    with torch.no_grad():
        posterior = vae.encode(images.float() / 127.5 - 1).latent_dist
    assert mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(mean, posterior.mean)
    torch.testing.assert_close(std, posterior.std)


def test_second_run_hits_the_cache_and_changed_inputs_or_models_miss(tiny_models, tmp_path):
    two_shards = [make_shard(tmp_path / f"faces-00000{i}.tar", [f"id{i}_000"], seed=i) for i in range(2)]
    out = tmp_path / "encoded"
    run = lambda e4e=tiny_models["e4e"], **changes: encode_shards(  # noqa: E731
        two_shards, e4e, tiny_models["sd"], out, EncodeOptions(**{**QUIET.__dict__, **changes})
    )
    assert [r.cached for r in run()] == [False, False]
    stamps = [r.output.stat().st_mtime_ns for r in run()]
    assert [r.cached for r in run()] == [True, True]
    assert [p.stat().st_mtime_ns for p in (out / "faces-000000.safetensors", out / "faces-000001.safetensors")] == stamps

    make_shard(two_shards[1], ["id1_000", "id1_001"], seed=20)  # new data in shard 1
    results = run()
    assert [r.cached for r in results] == [True, False]
    assert read_encoded_shard(results[1].output).keys == ["id1_000", "id1_001"]

    other_e4e = write_random_e4e(tmp_path / "other-e4e.pt", tiny=True, seed=99)  # another model
    assert [r.cached for r in run(e4e=other_e4e)] == [False, False]
    assert [r.cached for r in run(e4e=other_e4e, storage_dtype="float16")] == [False, False]
    assert read_encoded_shard(out / "faces-000000.safetensors").w_plus.dtype == torch.float16
    assert [r.cached for r in run(e4e=other_e4e, storage_dtype="float16", force=True)] == [False, False]


def test_each_samples_identity_role_and_labels_come_from_its_json(tiny_models, tmp_path):
    samples = {}
    for i, (key, fields) in enumerate({
            "ann_000": {"identity": "Ann Lee", "role": "train", "labels": {"race": "asian", "age": "21-50", "gender": "female"},
                        "caption": "not carried"},
            "ann_001": {"identity": "Ann Lee", "role": "reference", "labels": {"race": "asian", "age": "21-50", "gender": "female"}},
            "zoë_000": {"identity": "Zoë/2", "labels": {}}}.items()):  # no role: train
        samples[key] = {**synthetic_face_sample(i), "json": json.dumps(fields).encode()}
    shard = write_test_shard(tmp_path / "faces-000000.tar", samples)
    (result,) = encode_shards([shard], tiny_models["e4e"], tiny_models["sd"], tmp_path / "encoded", QUIET)
    encoded = read_encoded_shard(result.output)
    assert encoded.keys == ["ann_000", "ann_001", "zoë_000"]
    assert encoded.samples == [
        {"identity": "Ann Lee", "role": "train", "labels": {"race": "asian", "age": "21-50", "gender": "female"}},
        {"identity": "Ann Lee", "role": "reference", "labels": {"race": "asian", "age": "21-50", "gender": "female"}},
        {"identity": "Zoë/2", "role": "train", "labels": {}}]
    assert json.loads(encoded.metadata["samples"]) == encoded.samples  # plain JSON in the header, for any reader


@pytest.mark.parametrize("fields, message", [
    ({"role": "train"}, "zed_000.json: no identity"),
    ({"identity": "", "role": "train"}, "zed_000.json: no identity"),
    ({"identity": "zed", "role": "holdout"}, "zed_000.json: role 'holdout' is not one of train, reference, style"),
    ({"identity": "zed", "labels": ["white"]}, "zed_000.json: labels must be a JSON object"),
    ([1, 2], "zed_000.json: expected a JSON object"),
    (None, "sample 'zed_000' lacks .json"),
])
def test_a_sample_without_identity_or_role_is_refused_before_models_load(tiny_models, tmp_path, capsys, monkeypatch,
                                                                         fields, message):
    sample = synthetic_face_sample(0)
    if fields is None:
        del sample["json"]
    else:
        sample["json"] = json.dumps(fields).encode()
    shard = write_test_shard(tmp_path / "faces-000000.tar", {"zed_000": sample})
    monkeypatch.setattr("pidiff.e4e.load_e4e", lambda *a: pytest.fail("models loaded for a shard that cannot be encoded"))
    error = _encode_error(tiny_models, shard, tmp_path, capsys)
    assert error.startswith(f"pidiff encode: error: {shard}") and message in error and error.count("\n") == 1, error


def test_an_output_of_the_older_format_is_stale_and_re_encoded(tiny_models, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    shard = make_shard(tmp_path / "faces-000000.tar", ["ann_000", "ann_001"])
    out = tmp_path / "encoded"
    (result,) = encode_shards([shard], tiny_models["e4e"], tiny_models["sd"], out, QUIET)
    with safe_open(str(result.output), framework="pt") as f:  # the same file as /1 wrote it: no samples
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    del metadata["samples"]
    save_file(tensors, str(result.output), metadata={**metadata, "format": "pidiff-encoded/1"})
    with pytest.raises(ValueError, match="older format pidiff-encoded/1"):
        read_encoded_shard(result.output)

    (again,) = encode_shards([shard], tiny_models["e4e"], tiny_models["sd"], out, QUIET)
    assert not again.cached
    assert read_encoded_shard(result.output).samples[1] == {"identity": "ann", "role": "train",
                                                            "labels": {"race": "unknown", "age": "unknown", "gender": "unknown"}}


def test_an_up_to_date_run_hashes_and_loads_nothing_and_says_so_in_one_line(tiny_models, tmp_path, capsys, monkeypatch):
    """pidiff-data calls `pidiff encode` every time: finding everything up to date costs file stats
    and headers, not hashing gigabytes of models and shards, nor loading the models."""
    shards_ = [make_shard(tmp_path / "faces-000000.tar", ["ann_000", "ann_001"]),
               make_shard(tmp_path / "faces-000001.tar", ["bob_000"], seed=4)]
    time.sleep(0.1)  # files changed within DigestCache.RACY_NS of their hashing are not remembered
    argv = ["encode", "--shards", str(tmp_path / "faces-{000000..000001}.tar"), "--e4e", str(tiny_models["e4e"]),
            "--sd", str(tiny_models["sd"]), "--out", str(tmp_path / "encoded"), "--workers", "0", "--no-progress"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"pidiff encode: 2 shards encoded (3 samples), 0 shards reused (up to date, 0 samples) in {tmp_path / 'encoded'}")
    assert (tmp_path / "encoded" / DIGEST_CACHE_NAME).is_file()

    hashed = []
    real_sha256 = encode.file_sha256
    monkeypatch.setattr(encode, "file_sha256", lambda path, *a: hashed.append(path.name) or real_sha256(path, *a))
    monkeypatch.setattr("pidiff.e4e.load_e4e", lambda *a: pytest.fail("models loaded for an up-to-date run"))
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == (
        f"pidiff encode: 0 shards encoded (0 samples), 2 shards reused (up to date, 3 samples) in {tmp_path / 'encoded'}\n")
    assert hashed == []

    # A rewritten shard is hashed again (and, as its content changed, re-encoded); the rest is not.
    monkeypatch.undo()
    monkeypatch.setattr(encode, "file_sha256", lambda path, *a: hashed.append(path.name) or real_sha256(path, *a))
    make_shard(shards_[1], ["bob_000", "bob_001"], seed=9)
    assert cli.main(argv) == 0
    assert hashed == ["faces-000001.tar"]
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"pidiff encode: 1 shard encoded (2 samples), 1 shard reused (up to date, 2 samples) in {tmp_path / 'encoded'}")
    # --force trusts no remembered digest.
    hashed.clear()
    assert cli.main(argv + ["--force"]) == 0
    assert sorted(hashed) == sorted(["e4e.pt", "diffusion_pytorch_model.safetensors", "faces-000000.tar", "faces-000001.tar"])


def test_a_file_rewritten_with_the_same_size_and_mtime_is_hashed_again(tmp_path):
    """The digest cache also compares ctime and inode, which a rewrite changes whatever it does to mtime."""
    file = tmp_path / "model.pt"
    file.write_bytes(b"a" * 100)
    just_written = encode.DigestCache(tmp_path / DIGEST_CACHE_NAME)
    just_written.sha256(file)
    assert just_written.entries == {}  # racy: it may change again within the same timestamp tick
    time.sleep(0.1)
    cache = encode.DigestCache(tmp_path / DIGEST_CACHE_NAME)
    first = cache.sha256(file)
    cache.save()
    assert list(encode.DigestCache(tmp_path / DIGEST_CACHE_NAME).entries) == [str(file.resolve())]
    stat = file.stat()
    file.write_bytes(b"b" * 100)
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file.stat().st_size == stat.st_size and file.stat().st_mtime_ns == stat.st_mtime_ns
    reread = encode.DigestCache(tmp_path / DIGEST_CACHE_NAME)
    assert reread.sha256(file) == hashlib.sha256(b"b" * 100).hexdigest() != first


def _encode_error(tiny_models, shard, tmp_path, capsys) -> str:
    status = cli.main([
        "encode", "--shards", str(shard), "--e4e", str(tiny_models["e4e"]), "--sd", str(tiny_models["sd"]),
        "--out", str(tmp_path / "encoded"), "--workers", "0", "--no-progress",
    ])
    assert status == 1
    return capsys.readouterr().err


def test_truncated_shard_error_names_the_shard(tiny_models, two_shards, tmp_path, capsys):
    shard = two_shards[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    message = _encode_error(tiny_models, shard, tmp_path, capsys)
    assert str(shard) in message and "truncated" in message


def test_undecodable_image_error_names_shard_and_sample(tiny_models, tmp_path, capsys):
    sample = synthetic_face_sample(0)
    sample["png"] = b"\x89PNG\r\n\x1a\n but not really"
    shard = write_test_shard(tmp_path / "broken-000000.tar", {"erin_000": sample})
    message = _encode_error(tiny_models, shard, tmp_path, capsys)
    assert str(shard) in message and "erin_000.png" in message and "not a decodable image" in message


def test_corrupt_png_in_a_worker_is_reported_in_one_line(tiny_models, tmp_path, capsys):
    # A real shard whose PNG member is damaged in place (its image data overwritten): decoded in a
    # DataLoader worker, whose error torch re-raises with the worker's whole traceback.
    shard = make_shard(tmp_path / "damaged-000000.tar", ["hana_000"])
    with tarfile.open(shard) as archive:
        member = archive.getmember("hana_000.png")
    data = bytearray(shard.read_bytes())
    middle = member.offset_data + member.size // 2
    data[middle:middle + 64] = b"\xff" * 64
    shard.write_bytes(bytes(data))
    status = cli.main([
        "encode", "--shards", str(shard), "--e4e", str(tiny_models["e4e"]), "--sd", str(tiny_models["sd"]),
        "--out", str(tmp_path / "encoded"), "--workers", "1", "--no-progress",
    ])
    assert status == 1
    message = capsys.readouterr().err
    assert message.startswith(f"pidiff encode: error: {shard}: hana_000.png: not a decodable image")
    assert message.count("\n") == 1 and "Traceback" not in message and "DataLoader" not in message, message


def test_sample_without_e4e_image_is_named(tmp_path):
    sample = synthetic_face_sample(0)
    del sample["e4e.png"]
    shard = write_test_shard(tmp_path / "partial-000000.tar", {"frank_000": sample})
    with pytest.raises(ShardError, match=r"partial-000000\.tar: sample 'frank_000' lacks \.e4e\.png"):
        index_shard(shard)


def test_not_a_tar_error_names_the_shard(tmp_path):
    shard = tmp_path / "garbage-000000.tar"
    shard.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(ShardError, match="garbage-000000.tar"):
        index_shard(shard)


def test_wrong_image_size_is_reported(tiny_models, tmp_path, capsys):
    sample = synthetic_face_sample(0)
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128)).save(buffer, format="PNG")
    sample["e4e.png"] = buffer.getvalue()
    shard = write_test_shard(tmp_path / "small-000000.tar", {"gina_000": sample})
    message = _encode_error(tiny_models, shard, tmp_path, capsys)
    assert "gina_000.e4e.png" in message and "128x128, expected 256x256" in message


def test_webdataset_reads_our_test_shards_with_the_same_keys(two_shards):
    import webdataset as wds

    samples = list(wds.WebDataset(str(two_shards[0]), shardshuffle=False))
    assert [s["__key__"] for s in samples] == index_shard(two_shards[0]).keys
    assert {"png", "e4e.png", "mask.png", "json"} <= set(samples[0])


def test_shard_pattern_expansion_keeps_zero_padding():
    assert expand_shard_pattern("d/x-{000008..000011}.tar") == [f"d/x-{n:06d}.tar" for n in range(8, 12)]
    assert expand_shard_pattern("{a,b}/x-{0..1}.tar") == ["a/x-0.tar", "a/x-1.tar", "b/x-0.tar", "b/x-1.tar"]
    assert expand_shard_pattern("plain.tar") == ["plain.tar"]
    with pytest.raises(ShardError):
        expand_shard_pattern("x-{oops}.tar")


def test_existing_paths_with_braces_are_taken_literally(two_shards, tmp_path):
    folder = tmp_path / "run{a,b}" / "{2024}"
    folder.mkdir(parents=True)
    literal = folder / two_shards[0].name
    literal.write_bytes(two_shards[0].read_bytes())
    assert expand_shard_pattern(str(literal)) == [str(literal)]


def test_a_shard_cut_between_members_or_inside_a_header_is_truncated(two_shards, tmp_path):
    """tarfile itself reads such a file as a shorter, valid archive."""
    data = two_shards[0].read_bytes()
    with tarfile.open(two_shards[0]) as archive:
        members = archive.getmembers()
    second_sample = next(m for m in members if m.name.startswith("alice_001"))
    between = tmp_path / "between.tar"
    between.write_bytes(data[:second_sample.offset])
    with tarfile.open(between) as archive:
        assert [m.name for m in archive.getmembers()] == [m.name for m in members if m.name.startswith("alice_000")]
    last = members[-1]
    one_zero_block = last.offset_data + -(-last.size // 512) * 512 + 512
    for cut in (second_sample.offset, second_sample.offset + 100, one_zero_block):
        shard = tmp_path / f"cut-{cut}.tar"
        shard.write_bytes(data[:cut])
        with pytest.raises(ShardError, match="truncated"):
            index_shard(shard)


def test_cli_names_a_missing_command_module(capsys):
    assert cli.run_command("sample", "pidiff.module_that_does_not_exist", []) == 2
    assert "pidiff.module_that_does_not_exist" in capsys.readouterr().err


def test_a_command_started_by_pidiff_data_ends_with_it(tmp_path):
    """PIDIFF_PARENT_PID (set by pidiff-data): when that parent dies, even by SIGKILL, the command
    gets SIGTERM; a parent already gone ends it at once."""
    command = [sys.executable, "-c", "import sys, time; from pidiff import cli; cli.stop_with_parent(); "
               "print('started', flush=True); time.sleep(60)"]
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # reaped: its pid names no process now
    gone = subprocess.run(command, env={**os.environ, "PIDIFF_PARENT_PID": str(finished.pid)}, capture_output=True, timeout=60)
    assert gone.returncode == -signal.SIGTERM and b"started" not in gone.stdout
    # A wrapper between them that does not exec Python: pidiff-data still exists, so it runs.
    quick = [*command[:2], command[2].replace("time.sleep(60)", "None")]
    wrapped = subprocess.run(["/bin/sh", "-c", " ".join(map(shlex.quote, quick)) + "; true"],
                             env={**os.environ, "PIDIFF_PARENT_PID": str(os.getpid())}, capture_output=True, timeout=60)
    assert wrapped.returncode == 0 and b"started" in wrapped.stdout, wrapped

    # A parent that starts the command with its own pid, then is SIGKILLed.
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen({command!r}, env={{**os.environ, 'PIDIFF_PARENT_PID': str(os.getpid())}}, stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")])
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline and parent.poll() is None
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()

    def alive(pid):
        try:  # a zombie (dead, not yet reaped by its new parent) counts as ended
            return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    while alive(child):
        assert time.time() < deadline, "the command outlived its killed parent"
        time.sleep(0.05)


def test_tar_members_written_for_tests_are_deterministic(tmp_path):
    a = make_shard(tmp_path / "a.tar", ["k_000"], seed=3)
    b = make_shard(tmp_path / "b.tar", ["k_000"], seed=3)
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as archive:
        assert archive.getnames() == ["k_000.png", "k_000.e4e.png", "k_000.mask.png", "k_000.json"]
        assert json.load(archive.extractfile("k_000.json"))["identity"] == "k"
