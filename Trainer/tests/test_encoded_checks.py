"""Encoded files changed after `pidiff encode` wrote them (by hand, by another program, by a bad copy):
`pidiff train` and `pidiff sample` refuse each with one line naming the file and the problem and exit
status 2, before any model is loaded; nothing trains on truncated integers, another sample's identity,
an impossible std or latents of the wrong size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import make_shard
from pidiff import cli
from pidiff.encode import EncodeError, EncodeOptions, encode_shards, read_encoded_shard


@pytest.fixture(scope="module")
def encoded_file(tiny_models, tmp_path_factory) -> Path:
    """A real `pidiff encode` output: three samples of ann (two train, one reference) and one of bob."""
    folder = tmp_path_factory.mktemp("encoded-source")
    shard = make_shard(folder / "faces-000000.tar", ["ann_000", "ann_001", "ann_002", "bob_000"],
                       roles={"ann_002": "reference"})
    (result,) = encode_shards([shard], tiny_models["e4e"], tiny_models["sd"], folder / "enc",
                              EncodeOptions(workers=0, progress=False, batch_size=4, device="cpu"))
    return result.output


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata())


def tampered(source: Path, folder: Path, change) -> Path:
    """A copy of `source` in `folder`, its tensors and metadata passed through `change`."""
    tensors, metadata = read_file(source)
    change(tensors, metadata)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / source.name), metadata=metadata)
    return folder / source.name


def set_tensor(name, make):
    def change(tensors, metadata):
        tensors[name] = make(tensors[name])
    return change


def drop_tensor(name):
    def change(tensors, metadata):
        del tensors[name]
    return change


def set_metadata(name, make):
    def change(tensors, metadata):
        value = make(metadata.get(name))
        if value is None:
            metadata.pop(name, None)
        else:
            metadata[name] = value
    return change


def negative_std(std):
    std = std.clone()
    std[1, 0, 0, 0] = -0.5
    return std


def nan_in_w_plus(w):
    w = w.clone()
    w[3, 17, 0] = float("nan")
    return w


def huge_std(std):
    std = std.clone()
    std[0, 2, 5, 5] = 1e6
    return std


TAMPERINGS = {
    "w+ of another shape": (set_tensor("w_plus", lambda w: w[..., :256].contiguous()),
                            "w_plus has shape [4, 18, 256], expected [4, 18, 512]"),
    "w+ missing a row": (set_tensor("w_plus", lambda w: w[:3].contiguous()),
                         "w_plus has shape [3, 18, 512], expected [4, 18, 512] (4 keys)"),
    "no latent_std": (drop_tensor("latent_std"), "no latent_std tensor"),
    "int32 w+": (set_tensor("w_plus", lambda w: w.to(torch.int32)),
                 "w_plus is int32, expected a floating-point dtype (float32, float16, bfloat16)"),
    "float16 under a float32 header": (set_tensor("latent_mean", lambda m: m.half()),
                                       "latent_mean is float16 but the file's storage_dtype is float32"),
    "a key given twice": (set_metadata("keys", lambda keys: json.dumps(["ann_000", "ann_000", "ann_002", "bob_000"])),
                          "the key 'ann_000' is given twice (rows 0 and 1)"),
    "negative std": (set_tensor("latent_std", negative_std), "latent_std of the sample 'ann_001' holds negative values"),
    "std beyond exp(10)": (set_tensor("latent_std", huge_std), "latent_std of the sample 'ann_000' holds values above 22026"),
    "32x32 latents": (lambda t, m: [t.__setitem__(n, t[n][..., :32, :32].contiguous()) for n in ("latent_mean", "latent_std")],
                      "latent_mean has shape [4, 4, 32, 32], expected [4, 4, 64, 64]"),
    "non-finite w+": (set_tensor("w_plus", nan_in_w_plus), "w_plus of the sample 'bob_000' holds non-finite values"),
    "no scaling factor": (set_metadata("scaling_factor", lambda _: None), "no scaling_factor in its metadata"),
    "negative scaling factor": (set_metadata("scaling_factor", lambda _: "-0.18215"),
                                "metadata scaling_factor '-0.18215' is not a positive number"),
    "count disagreeing with keys": (set_metadata("count", lambda _: "5"), "metadata count '5' but 4 keys"),
}


def test_the_untampered_file_reads_back(encoded_file):
    shard = read_encoded_shard(encoded_file)
    assert shard.keys == ["ann_000", "ann_001", "ann_002", "bob_000"]
    assert shard.metadata["latent_size"] == "64" and tuple(shard.latent_std.shape) == (4, 4, 64, 64)


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_a_tampered_encoded_file_is_refused_in_one_line_naming_it(name, encoded_file, tmp_path):
    change, problem = TAMPERINGS[name]
    path = tampered(encoded_file, tmp_path / "enc", change)
    with pytest.raises(EncodeError) as caught:
        read_encoded_shard(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message


@pytest.mark.parametrize("name", ["int32 w+", "no latent_std", "a key given twice", "32x32 latents", "negative std"])
def test_train_and_sample_stop_on_a_tampered_file_with_status_2(name, encoded_file, tiny_models, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from pidiff.model import PIDiffAdapter, save_weights

    change, problem = TAMPERINGS[name]
    path = tampered(encoded_file, tmp_path / "enc", change)
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")), 0,
                 {"identity": "ann"})
    capsys.readouterr()
    commands = {
        "train": ["train", "--encoded", str(path.parent), "--sd", str(tiny_models["sd"]), "--out", str(tmp_path / "run"),
                  "--identity", "ann", "--steps", "1", "--device", "cpu"],
        "sample": ["sample", "--encoded", str(path.parent), "--sd", str(tiny_models["sd"]), "--weights", str(weights),
                   "--prompt", "S*", "--steps", "1", "--latent-size", "8", "--device", "cpu",
                   "--out", str(tmp_path / "samples")],
    }
    for command, argv in commands.items():
        assert cli.main(argv) == 2, command
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"pidiff {command}:")]
        assert len(lines) == 1 and f"{path}: " in lines[0] and problem in lines[0], (command, lines)
    assert not (tmp_path / "run" / "pidiff.safetensors").exists() and not (tmp_path / "samples").exists()


def test_one_key_in_two_encoded_files_is_refused_naming_both(encoded_file, tmp_path, capsys):
    from pidiff.data import load_training_samples, reference_face

    folder = tmp_path / "enc"
    first = tampered(encoded_file, folder, lambda t, m: None)
    second = folder / "faces-000001.safetensors"
    second.write_bytes(first.read_bytes())  # a copy under another shard name: every key twice
    with pytest.raises(ValueError, match=r"faces-000001\.safetensors: the key 'ann_000' is also in .*faces-000000\.safetensors"):
        load_training_samples(folder, ["ann"])
    with pytest.raises(ValueError, match=r"the key 'ann_000' is also in"):
        reference_face(folder, "ann")
