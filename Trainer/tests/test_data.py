"""pidiff.data: the encoded folder is all `pidiff train` and `pidiff sample` read (identity, role and
labels come from the encoded files), which samples are trained on, older files, and the prompts."""

import json
import shutil

import pytest
import torch

from conftest import make_shard, write_encoded_shard, write_encoded_split
from pidiff import cli
from pidiff.data import DEFAULT_TEMPLATES, load_training_samples, prompt_texts, reference_face, reference_w_plus
from pidiff.encode import EncodeError, read_encoded_shard
from pidiff.model import load_weights
from pidiff.style import read_sidecar

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_train_and_sample_need_only_the_encoded_folder(tiny_models, tmp_path, capsys):
    """The hand-off is one way: shards -> `pidiff encode` -> encoded folder. With the shards gone,
    training takes each identity's train samples and sampling its reference sample as the face."""
    shards = tmp_path / "shards"
    make_shard(shards / "faces-000000.tar", ["ann_000", "ann_001", "ann_002"], roles={"ann_001": "reference"})
    make_shard(shards / "faces-000001.tar", ["bob_000", "bob_001"], seed=5, roles={"bob_000": "reference"})
    encoded = tmp_path / "encoded"
    assert cli.main(["encode", "--shards", str(shards / "faces-{000000..000001}.tar"), "--e4e", str(tiny_models["e4e"]),
                     "--sd", str(tiny_models["sd"]), "--out", str(encoded), "--workers", "0", "--no-progress"]) == 0
    shutil.rmtree(shards)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoded"]

    run = tmp_path / "run"
    assert cli.main(["train", "--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]),
                     "--out", str(run), "--steps", "1", "--batch-size", "1", "--device", "cpu"]) == 0
    assert json.loads(load_weights(run / "ann" / "pidiff.safetensors")[1]["train_keys"]) == ["ann_000", "ann_002"]
    assert json.loads(load_weights(run / "bob" / "pidiff.safetensors")[1]["train_keys"]) == ["bob_001"]

    samples = tmp_path / "samples"
    assert cli.main(["sample", "--sd", str(tiny_models["sd"]), "--weights", str(run / "bob" / "pidiff.safetensors"),
                     "--encoded", str(encoded), "--prompt", "a photo of S*", "--steps", "1", "--latent-size", "8",
                     "--device", "cpu", "--out", str(samples)]) == 0
    parameters = read_sidecar(samples / "sample.json")["parameters"]
    assert parameters["identity"] == "bob" and parameters["face_source"] == "bob_000"
    assert "warning" not in capsys.readouterr().err


def test_labels_come_from_the_encoded_file_alone(tmp_path):
    """A sidecar or a source shard beside the encoded file is not read (it once was)."""
    encoded = write_encoded_split(tmp_path / "encoded", {"ann_000": ("ann", "train"), "ann_001": ("ann", "reference")})
    (encoded / "faces-000000.samples.json").write_text(json.dumps({
        "ann_000": {"identity": "zed", "role": "train"}, "ann_001": {"identity": "zed", "role": "train"}}))
    samples = load_training_samples(encoded, None, "faces")
    assert sorted(samples) == ["ann"] and samples["ann"].keys == ["ann_000"]
    shard = read_encoded_shard(encoded / "faces-000000.safetensors")
    assert shard.samples == [{"identity": "ann", "role": "train", "labels": {}},
                             {"identity": "ann", "role": "reference", "labels": {}}]


def test_an_encoded_file_of_the_older_format_is_refused_in_one_line(tiny_models, tmp_path, capsys):
    old = write_encoded_shard(tmp_path / "encoded" / "faces-000000.safetensors", {"ann_000": ("ann", "train")},
                              format="pidiff-encoded/1")
    with pytest.raises(EncodeError, match=r"faces-000000\.safetensors: written in the older format pidiff-encoded/1.*"
                                          r"re-run `pidiff encode` \(or `pidiff-data encode`\)"):
        read_encoded_shard(old)

    train = ["train", "--encoded", str(tmp_path / "encoded"), "--identity", "ann", "--sd", str(tiny_models["sd"]),
             "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert cli.main(train) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pidiff train: {old}: written in the older format") and err.count("\n") == 1, err
    assert "re-run `pidiff encode`" in err and not (tmp_path / "run").exists()

    from diffusers import UNet2DConditionModel

    from pidiff.model import PIDiffAdapter, save_weights

    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")), 0,
                 {"identity": "ann"})
    sample = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--encoded", str(tmp_path / "encoded"),
              "--prompt", "S*", "--steps", "1", "--latent-size", "8", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert cli.main(sample) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pidiff sample: {old}: written in the older format") and err.count("\n") == 1, err


def test_an_encoded_file_without_samples_that_fit_its_keys_is_refused(tmp_path):
    path = write_encoded_shard(tmp_path / "faces-000000.safetensors", {"ann_000": ("ann", "train")})
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    for broken, message in ((json.dumps([]), "samples holds 0 entries for 1 keys"),
                            (json.dumps([{"role": "train"}]), "no identity"),
                            (json.dumps([{"identity": "ann", "role": "test"}]), "role 'test'")):
        save_file(tensors, str(path), metadata={**metadata, "samples": broken})
        with pytest.raises(EncodeError, match=rf"faces-000000\.safetensors: .*{message}"):
            read_encoded_shard(path)


def test_samples_trained_on_must_be_finite_and_of_one_pair_of_encoders(tmp_path):
    def shard(folder, name, labels, **kwargs):
        write_encoded_shard(tmp_path / folder / f"{name}.safetensors", labels, **kwargs)

    labels = {"ann_000": ("ann", "train"), "bob_000": ("bob", "reference")}
    shard("a", "faces-000000", labels, nan_row=0)
    with pytest.raises(ValueError, match=r"faces-000000\.safetensors: latent_mean of the sample 'ann_000' holds non-finite"):
        load_training_samples(tmp_path / "a", None)
    # A NaN in a held-out reference row is refused too: `pidiff sample` conditions on that row, and a
    # file with non-finite values is broken wherever they are.
    shard("a2", "faces-000000", labels, nan_row=1)
    with pytest.raises(ValueError, match=r"faces-000000\.safetensors: latent_mean of the sample 'bob_000' holds non-finite"):
        load_training_samples(tmp_path / "a2", None)

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
    assert sorted(load_training_samples(tmp_path, None, "faces")) == ["ann"]
    assert sorted(load_training_samples(tmp_path, None, "faces-small")) == ["bob"]
    assert sorted(load_training_samples(tmp_path, None)) == ["ann", "bob", "cat", "dan"]
    with pytest.raises(FileNotFoundError, match="faces-sm-NNNNNN"):
        load_training_samples(tmp_path, None, "faces-sm")


def test_training_samples_are_scaled_and_sorted_by_key(tmp_path):
    write_encoded_shard(tmp_path / "faces-000000.safetensors", {"ann_002": ("ann", "train"), "ann_000": ("ann", "train")})
    shard = read_encoded_shard(tmp_path / "faces-000000.safetensors")
    ann = load_training_samples(tmp_path, ["ann"])["ann"]
    assert ann.keys == ["ann_000", "ann_002"]
    torch.testing.assert_close(ann.latent_mean[0], shard.latent_mean[1] * 0.18215)
    torch.testing.assert_close(ann.latent_std[1], shard.latent_std[0] * 0.18215)
    assert torch.equal(ann.w_plus[0], shard.w_plus[1])


def test_the_face_for_sampling_is_the_first_reference_sample_else_a_train_sample(tmp_path):
    write_encoded_shard(tmp_path / "faces-000000.safetensors", {"ann_000": ("ann", "train"), "ann_002": ("ann", "reference"),
                                                                "bob_000": ("bob", "train")})
    write_encoded_shard(tmp_path / "faces-000001.safetensors", {"ann_001": ("ann", "reference")}, seed=1)
    w, key = reference_w_plus(tmp_path, "ann")
    assert key == "ann_001" and torch.equal(w, read_encoded_shard(tmp_path / "faces-000001.safetensors").w_plus[0])
    assert reference_w_plus(tmp_path, "bob")[1] == "bob_000"
    assert reference_w_plus(tmp_path, "ann", key="ann_000")[1] == "ann_000"
    with pytest.raises(ValueError, match="no sample of 'cat'"):
        reference_w_plus(tmp_path, "cat")
    # The sidecar says why: the split's reference, a train sample for want of one, or --key.
    assert (reference_face(tmp_path, "ann").choice, reference_face(tmp_path, "ann").reason) == (
        "split reference", "the first by key of the 2 reference samples of 'ann': its 2 best-quality photos, held out "
                           "of training by the split")
    bob = reference_face(tmp_path, "bob")
    assert bob.choice == "first train sample" and bob.reason == f"'bob' has no reference sample in {tmp_path}: its first train sample by key"
    assert reference_face(tmp_path, "ann", key="ann_000").reason == "the sample named by --key (train sample of 'ann')"


def test_prompts_fill_the_placeholder_and_end_with_the_empty_prompt(tmp_path):
    assert prompt_texts("", "S*") == [t.format("S*") for t in DEFAULT_TEMPLATES] + [""]
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of {}\n\n  {} smiling  \n")
    assert prompt_texts(str(templates), "sks") == ["a photo of sks", "sks smiling", ""]
    templates.write_text("a photo of {}\nno placeholder\n")
    with pytest.raises(ValueError, match=r"templates\.txt: every template needs a '\{\}'"):
        prompt_texts(str(templates), "S*")


def test_encoded_files_of_two_views_are_not_trained_on_together(tmp_path):
    """export --view: the framing is recorded per encoded file, and one training run refuses to mix them."""
    import pytest
    import torch
    from pidiff import data
    from pidiff.model import save_safetensors

    def write(name, view):
        n = 1
        save_safetensors({"w_plus": torch.zeros(n, 18, 512), "latent_mean": torch.zeros(n, 4, 8, 8),
                          "latent_std": torch.ones(n, 4, 8, 8)}, tmp_path / name,
                         metadata={"format": "pidiff-encoded/2", "keys": f'["{name[:-12]}"]', "count": "1",
                                   "samples": '[{"identity": "ann", "labels": {}, "role": "train"}]',
                                   "scaling_factor": "0.18215", "storage_dtype": "float32", "latent_size": "8",
                                   "e4e_sha256": "e", "vae_sha256": "v", "view": view})
    write("s-000000.safetensors", "aligned")
    assert data.load_training_samples(tmp_path, None, "s")["ann"].view == "aligned"
    write("s-000001.safetensors", "context")
    with pytest.raises(ValueError, match="frame their images differently"):
        data.load_training_samples(tmp_path, None, "s")
