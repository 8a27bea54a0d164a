"""The trainer's core on a tiny UNet with SD1.5's topology: what a step changes, what is
reproducible, what the command writes. Run folders, group sizes, --resume and ranks: test_runs.py;
reading the encoded folder: test_data.py."""

import csv
import json
import shutil

import pytest
import torch

from conftest import identity_samples, text_table, train, train_config, write_encoded_shard, write_encoded_split
from pidiff import cli
from pidiff.model import load_weights
from pidiff.train import IdentityGroupTrainer, config_from_args, prepare_frozen_unet

# one_cpu_thread (autouse for these tiny-model tests) lives in conftest.py, as does the `unet` fixture.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_defaults_are_the_paper_recipe():
    cfg = config_from_args(["--encoded", "e", "--identity", "x", "--sd", "s", "--out", "o"])
    assert (cfg.steps, cfg.batch_size, cfg.learning_rate, cfg.weight_decay) == (600, 4, 1e-4, 0.01)
    assert (cfg.visual_dropout, cfg.text_dropout, cfg.placeholder, cfg.default_lambda) == (0.5, 0.3, "S*", 0.4)
    assert cfg.identities == "x" and cfg.identity == "x"
    split = config_from_args(["--encoded", "e", "--split", "faces", "--sd", "s", "--out", "o", "--steps", "7"])
    assert split.steps == 7 and split.identity == "" and split.split == "faces"
    assert config_from_args(["--encoded", "e", "--identities", "x", "--sd", "s", "--out", "o"]).identity == ""


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


def test_training_changes_only_the_adapter_parameters(unet, tmp_path):
    cfg = train_config(tmp_path, steps=2, visual_dropout=0.0, weight_decay=0.0)
    prepare_frozen_unet(unet, cfg)
    unet_before = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    trainer = IdentityGroupTrainer(unet, text_table(), [identity_samples("ann")], cfg)
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
    cfg = train_config(tmp_path, steps=10, learning_rate=1e-3, visual_dropout=0.0, text_dropout=0.0, w_plus_noise=0.0)
    prepare_frozen_unet(unet, cfg)
    trainer = IdentityGroupTrainer(unet, text_table(), [identity_samples("ann", count=1)], cfg)

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


def test_shards_is_accepted_and_ignored_with_one_line(tiny_models, tmp_path, capsys):
    """The Swift side still passes --shards: accepted, unused, said so once on stderr."""
    encoded = write_encoded_split(tmp_path / "encoded", {"ann_000": ("ann", "train")})
    argv = ["train", "--encoded", str(encoded), "--identity", "ann", "--sd", str(tiny_models["sd"]), "--out",
            str(tmp_path / "run"), "--steps", "1", "--device", "cpu", "--shards", str(tmp_path / "no-such-folder")]
    assert cli.main(argv) == 0
    # stderr also holds diffusers' logging (loading bars, warnings): the command's own lines start with its name.
    mentions = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pidiff train:")]
    assert mentions == ["pidiff train: --shards is ignored: the encoded files carry each sample's identity and role"]
    assert "shards" not in json.loads((tmp_path / "run" / "train_config.json").read_text())


def test_skip_unchanged_retrains_only_identities_whose_samples_changed(tiny_models, tmp_path, capsys):
    """Cron reruns: --skip-unchanged keeps weights trained from the same samples, recipe and base
    model, and retrains an identity whose samples changed (a style photo added to it)."""
    labels = {"ann_000": ("ann", "train"), "ann_001": ("ann", "train"), "bob_000": ("bob", "train")}
    encoded = write_encoded_split(tmp_path / "encoded", labels)
    out = tmp_path / "run"
    argv = ["train", "--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]), "--out", str(out),
            "--steps", "2", "--device", "cpu", "--skip-unchanged"]
    assert cli.main(argv) == 0
    stamps = {name: (out / name / "pidiff.safetensors").stat().st_mtime_ns for name in ("ann", "bob")}
    capsys.readouterr()

    assert cli.main(argv) == 0
    assert "2 of 2 identities unchanged since their weights were trained, kept: ann, bob" in capsys.readouterr().out
    assert {name: (out / name / "pidiff.safetensors").stat().st_mtime_ns for name in ("ann", "bob")} == stamps

    # bob gains a sample; another recipe (more steps) would retrain both, as would another base model.
    write_encoded_shard(tmp_path / "encoded" / "faces-000001.safetensors", {"bob_001": ("bob", "style")}, seed=1)
    assert cli.main(argv) == 0
    assert "1 of 2 identities unchanged since their weights were trained, kept: ann" in capsys.readouterr().out
    assert (out / "ann" / "pidiff.safetensors").stat().st_mtime_ns == stamps["ann"]
    assert (out / "bob" / "pidiff.safetensors").stat().st_mtime_ns != stamps["bob"]
    assert json.loads(load_weights(out / "bob" / "pidiff.safetensors")[1]["style_keys"]) == ["bob_001"]
    assert cli.main(argv[:-1] + ["--steps", "3", "--skip-unchanged"]) == 0
    assert "unchanged since" not in capsys.readouterr().out
    assert cli.main(argv + ["--resume"]) == 2
    assert "--skip-unchanged and --resume cannot be combined" in capsys.readouterr().err
