"""The paper's experiments end to end on tiny models: `pidiff sample --prompts`, Table 1 over several
methods with refs.json references and labels (`pidiff eval --method`), the ID reference choices,
style training with a style photo (§3.4.4) and `pidiff ablate` grids.

Metric models are the tiny real architectures of test_eval.py (a linear ONNX ArcFace stand-in behind
the real MTCNN, LPIPS on seeded random VGG16 weights, a tiny random CLIPModel); references are
face_recognition's sample photos from $PIDIFF_CACHE.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_shard, write_encoded_shard
from pidiff import cli
from pidiff.evaluate import IdentityReferences, SampleImage, evaluate, read_prompts
from pidiff.style import read_sidecar
from test_eval import (MODELS, LinearEmbedder, cached_file, lpips_metric, needs, onnx_linear_embedder,  # noqa: F401
                       photo, sample_run, tiny_clip)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def arcface(tmp_path_factory) -> Path:
    needs("onnxruntime"), needs("facenet_pytorch")
    weight = np.random.default_rng(5).standard_normal((3 * 112 * 112, 16)).astype(np.float32) * 0.01
    return onnx_linear_embedder(tmp_path_factory.mktemp("arcface") / "arcface.onnx", weight)


def write_refs(folder: Path, people: dict[str, tuple[str, dict]]) -> Path:
    """REFS as `pidiff-data refs` writes it: REFS/<identity>/<sha16>.png and refs.json."""
    entries = []
    for identity, (photo_name, labels) in people.items():
        (folder / identity).mkdir(parents=True, exist_ok=True)
        name = f"{identity}/{identity[:1] * 16}.png"
        photo(photo_name).save(folder / name)
        entries.append({"identity": identity, "role": "reference", "file": name, "source_path": f"/photos/{photo_name}",
                        "source_sha256": "0" * 64, "labels": labels})
    (folder / "refs.json").write_text(json.dumps({"split": "faces", "references": entries}, indent=2))
    return folder


# ----------------------------------------------------------------------------------------------
def test_sample_prompts_paper12_makes_every_prompt_in_one_call(tiny_models, tmp_path):
    out = sample_run(tiny_models, tmp_path, "ann", tmp_path / "run", [], "--prompts", "paper12")
    record = read_sidecar(out / "sample.json")
    prompts = read_prompts("paper12")
    assert [(e["prompt"], e["prompt_index"]) for e in record["images"]] == list(zip(prompts, range(12)))
    assert record["parameters"]["prompts_file"].endswith("pidiff/prompts/paper12.txt")
    assert record["parameters"]["prompt_list"] == prompts
    assert all((out / e["file"]).read_bytes()[:8] == PNG for e in record["images"])

    file = tmp_path / "mine.txt"
    file.write_text("# two prompts\na photo of S* in Paris\n\nS* as a painting\n")
    out = sample_run(tiny_models, tmp_path, "ann", tmp_path / "run2", ["{} smiling"], "--prompts", str(file))
    assert [e["prompt"] for e in read_sidecar(out / "sample.json")["images"]] == [
        "a photo of S* in Paris", "S* as a painting", "S* smiling"]


def test_sample_without_any_prompt_or_with_a_missing_prompts_file_is_one_line(tiny_models, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--wplus", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "o"), "--device", "cpu"]
    from diffusers import UNet2DConditionModel

    from pidiff.model import PIDiffAdapter, save_weights

    save_weights(weights, PIDiffAdapter(UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")), 0,
                 {"identity": "ann", "placeholder": "S*", "default_lambda": 0.4})
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "pidiff sample: give the prompts: --prompt TEXT (repeatable) or --prompts FILE|paper12"
    assert cli.main(argv + ["--prompts", str(tmp_path / "none.txt")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"pidiff sample: prompts file {tmp_path / 'none.txt'}: not found")


# ----------------------------------------------------------------------------------------------
def test_table_1_rows_are_methods_with_face_rate_plots_and_race_by_age_cells(tiny_models, tiny_clip, lpips_metric,
                                                                             arcface, tmp_path, capsys):
    prompts = read_prompts("paper12")
    # PIDiff: a real `pidiff sample --prompts paper12` run per identity (tiny random model: no faces).
    for identity in ("ann", "bob"):
        sample_run(tiny_models, tmp_path, identity, tmp_path / "pidiff" / identity, [], "--prompts", "paper12")
    # Another method: NN_*.png per prompt, real photos (faces found).
    for identity in ("ann", "bob"):
        folder = tmp_path / "other" / identity
        folder.mkdir(parents=True)
        for i in range(12):
            photo("obama2.jpg", size=160).save(folder / f"{i:02d}_0.png")
    refs = write_refs(tmp_path / "refs", {"ann": ("obama.jpg", {"race": "black", "age": "21-50", "gender": "male"}),
                                          "bob": ("obama3.jpg", {"race": "white", "age": "51+", "gender": "male"})})
    capsys.readouterr()
    out = tmp_path / "table"
    assert cli.main(["eval", "--method", f"PIDiff={tmp_path / 'pidiff'}", "--method", f"Other={tmp_path / 'other'}",
                     "--refs", str(refs), "--prompts", "paper12", "--arcface", str(arcface), "--lpips-vgg",
                     str(lpips_metric.path), "--lpips-size", "64", "--clip", str(tiny_clip), "--out", str(out),
                     "--method-id-reference", "Other=most-similar"]) == 0
    printed = capsys.readouterr().out
    assert "method 'Other': ID and LPIPS vs the most similar of the identity's reference images" in printed
    assert "| method | identities | images | face rate | ID ↑ | LPIPS ↓ | CLIP-T ↑ |" in printed
    assert "vs the identity's reference image (the paper's protocol)" in printed
    assert "a generated image without a detected face scores 0" in printed and "placeholder -> 'person'" in printed

    table = list(csv.DictReader(open(out / "eval_table.csv")))
    assert [(r["method"], r["identities"], r["images"]) for r in table] == [("PIDiff", "2", "24"), ("Other", "2", "24")]
    images = list(csv.DictReader(open(out / "eval_images.csv")))
    assert len(images) == 48 and {r["clip_text"] for r in images} == {p.replace("S*", "person") for p in prompts}
    ours = [r for r in images if r["method"] == "PIDiff"]
    assert [int(r["prompt_index"]) for r in ours[:12]] == list(range(12))
    # Each method's row: the mean over identities of the mean over their images, faceless images at 0.
    for row in table:
        mine = [r for r in images if r["method"] == row["method"]]
        per_identity = [np.mean([float(r["id"]) if r["face_found"] == "1" else 0.0 for r in mine if r["identity"] == i])
                        for i in ("ann", "bob")]
        assert float(row["id"]) == pytest.approx(np.mean(per_identity), abs=1e-5)
        assert float(row["face_rate"]) == pytest.approx(np.mean([r["face_found"] == "1" for r in mine]), abs=1e-6)
    assert all(float(r["id"]) == 0.0 for r in images if r["face_found"] == "0")
    assert float(table[1]["face_rate"]) == 1.0  # real photos
    other_ann = next(r for r in images if r["method"] == "Other" and r["identity"] == "ann")
    assert other_ann["reference"] == str(refs / "ann" / ("a" * 16 + ".png"))

    cells = list(csv.DictReader(open(out / "eval_demographics.csv")))
    assert [(c["method"], c["race"], c["age"], c["identities"]) for c in cells] == [
        ("PIDiff", "black", "21-50", "1"), ("PIDiff", "white", "51+", "1"),
        ("Other", "black", "21-50", "1"), ("Other", "white", "51+", "1")]
    summary = {(r["method"], r["identity"]): r for r in csv.DictReader(open(out / "eval_summary.csv"))}
    assert float(cells[2]["id"]) == pytest.approx(float(summary[("Other", "ann")]["id"]), abs=1e-6)
    for name in ("eval_id_vs_clip.png", "eval_demographics.png"):
        assert (out / name).read_bytes()[:8] == PNG
    protocol = json.loads((out / "eval_protocol.json").read_text())
    assert protocol["id_reference"] == "single" and protocol["class_text"] == "person" and protocol["prompt_count"] == 12
    assert protocol["method_id_reference"] == {"Other": "most-similar"}
    assert (out / "eval_table.md").read_text().startswith("| method |")


def test_id_reference_single_most_similar_and_mean_by_hand(tmp_path):
    """A stand-in embedder (the image's mean colour as the embedding) makes each choice checkable."""
    colours = {"ref": (200, 10, 10), "other": (10, 200, 10), "gen": (150, 60, 20), "blank": (0, 0, 0)}
    paths = {}
    for name, colour in colours.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (8, 8), colour).save(paths[name])

    class MeanColour:
        column = "ID"

        def embed(self, image):
            pixels = np.asarray(image, np.float64).reshape(-1, 3).mean(0)
            return None if pixels.sum() == 0 else pixels

    def cos(a, b):
        a, b = np.asarray(colours[a], float), np.asarray(colours[b], float)
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    references = {"ann": IdentityReferences("ann", [paths["ref"], paths["other"]], paths["ref"])}
    expected = {"single": cos("gen", "ref"), "most-similar": max(cos("gen", "ref"), cos("gen", "other")),
                "mean": (cos("gen", "ref") + cos("gen", "other")) / 2}
    for choice, value in expected.items():
        samples = [SampleImage("ann", paths["gen"], "p"), SampleImage("ann", paths["blank"], "p")]
        evaluate(samples, references, MeanColour(), None, None, id_reference=choice)
        assert samples[0].scores["id"] == pytest.approx(value, abs=1e-12) and samples[0].face_found
        assert samples[1].scores["id"] == 0.0 and samples[1].face_found is False  # no face: a failure, 0
    assert expected["single"] != expected["mean"]


def test_eval_input_errors_are_one_line_naming_the_file(tiny_clip, tmp_path, capsys):
    prompts = read_prompts("paper12")
    for identity in ("ann", "bob"):
        folder = tmp_path / "m" / identity
        folder.mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (32, 32), (i * 20, 40, 90)).save(folder / f"{i:02d}_0.png")
    refs = write_refs(tmp_path / "refs", {"ann": ("obama.jpg", {}), "bob": ("obama3.jpg", {})})
    base = ["eval", "--refs", str(refs), "--prompts", "paper12", "--metrics", "clip_t", "--clip", str(tiny_clip),
            "--out", str(tmp_path / "out")]

    def error(*extra):
        assert cli.main(base + list(extra)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        return lines[-1]

    assert cli.main(base + ["--method", f"A={tmp_path / 'm'}"]) == 0
    capsys.readouterr()
    (tmp_path / "m" / "bob" / "03_0.png").unlink()
    (tmp_path / "m" / "bob" / "07_0.png").unlink()
    assert error("--method", f"A={tmp_path / 'm'}") == (
        f"pidiff eval: {tmp_path / 'm' / 'bob'}: no images for prompts 3, 7 of paper12 (e.g. {prompts[3]!r}) for identity "
        "'bob' of method 'A'; sample them (pidiff sample --prompts) or pass --partial")
    assert cli.main(base + ["--method", f"A={tmp_path / 'm'}", "--partial"]) == 0
    capsys.readouterr()

    shutil.copytree(tmp_path / "m" / "ann", tmp_path / "n" / "ann")
    assert error("--partial", "--method", f"A={tmp_path / 'm'}", "--method", f"B={tmp_path / 'n'}") == (
        f"pidiff eval: {tmp_path / 'n'}: method 'B' has no images of 'bob' (other methods have them); every method must "
        "cover the same identities")
    (tmp_path / "o").mkdir()
    assert error("--method", f"C={tmp_path / 'o'}") == f"pidiff eval: samples folder {tmp_path / 'o'}: no images"

    index = json.loads((refs / "refs.json").read_text())
    index["references"] = index["references"][:1]
    (refs / "refs.json").write_text(json.dumps(index))
    assert error("--partial", "--method", f"A={tmp_path / 'm'}") == \
        f"pidiff eval: {refs / 'refs.json'}: no reference of identity 'bob'"
    assert error("--method", "A") == "pidiff eval: --method 'A': expected NAME=DIR"
    assert error("--partial", "--method", f"A={tmp_path / 'm'}", "--method-id-reference", "Z=mean") == (
        "pidiff eval: --method-id-reference 'Z=mean': no method 'Z' (methods: A)")
    assert error("--method", f"A={tmp_path / 'm'}", "--method", f"B={tmp_path / 'n'}", "--metrics", "id") .startswith(
        "pidiff eval: missing models (or choose fewer with --metrics): ID needs an ArcFace-compatible")


def test_references_without_refs_json_need_one_image_for_the_single_protocol(tmp_path):
    from pidiff.evaluate import collect_references

    (tmp_path / "ann").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "ann" / name)
    with pytest.raises(ValueError, match=r"ann: 2 images and no refs.json saying which is the reference"):
        collect_references(tmp_path, ["ann"])
    refs = collect_references(tmp_path, ["ann"], "most-similar")["ann"]
    assert [p.name for p in refs.images] == ["a.png", "b.png"] and refs.labels == {}
    with pytest.raises(FileNotFoundError, match="identity bob: no reference images in"):
        collect_references(tmp_path, ["bob"], "mean")


# ----------------------------------------------------------------------------------------------
def test_style_photo_is_encoded_trained_with_the_identity_and_mixed_in_at_sampling(tiny_models, tmp_path, capsys):
    """§3.4.4: six-ish photos of the identity plus one photo of another face carrying the style."""
    from pidiff.encode import read_encoded_shard
    from pidiff.model import load_weights

    shard = make_shard(tmp_path / "shards" / "faces-000000.tar",
                       ["ann_000", "ann_001", "ann_002", "ann_003", "bob_000", "bob_001"],
                       roles={"ann_002": "reference", "ann_003": "style"})
    encoded = tmp_path / "encoded"
    assert cli.main(["encode", "--shards", str(shard), "--e4e", str(tiny_models["e4e"]), "--sd", str(tiny_models["sd"]),
                     "--out", str(encoded), "--device", "cpu", "--no-progress"]) == 0
    shard_file = read_encoded_shard(encoded / "faces-000000.safetensors")
    assert [s["role"] for s in shard_file.samples] == ["train", "train", "reference", "style", "train", "train"]

    run = tmp_path / "run"
    assert cli.main(["train", "--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]),
                     "--out", str(run), "--steps", "2", "--batch-size", "1", "--device", "cpu"]) == 0
    _, ann = load_weights(run / "ann" / "pidiff.safetensors")
    assert json.loads(ann["train_keys"]) == ["ann_000", "ann_001", "ann_003"]  # its photos and the style photo
    assert json.loads(ann["style_keys"]) == ["ann_003"]
    _, bob = load_weights(run / "bob" / "pidiff.safetensors")
    assert json.loads(bob["train_keys"]) == ["bob_000", "bob_001"] and json.loads(bob["style_keys"]) == []

    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of S*\n")
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(run / "ann" / "pidiff.safetensors"),
            "--encoded", str(encoded), "--prompts", str(prompts), "--steps", "1", "--latent-size", "8",
            "--device", "cpu"]
    assert cli.main(argv + ["--style-from-split", "--style-layers", "fine", "--out", str(tmp_path / "styled")]) == 0
    parameters = read_sidecar(tmp_path / "styled" / "sample.json")["parameters"]
    assert parameters["face_source"] == "ann_002" and parameters["face_choice"] == "split reference"
    assert parameters["style_source"] == "ann_003" and parameters["style_source_kind"] == "split style sample"
    assert parameters["style_layers"] == list(range(8, 18))

    # The mixed code: rows 8-17 of the style sample, the rest of the reference.
    from pidiff.sample import build_parser, split_style

    args = build_parser().parse_args(argv[1:] + ["--style-from-split", "--style-layers", "fine", "--out", "x"])
    reference, style = shard_file.w_plus[2].float(), shard_file.w_plus[3].float()
    mixed, _ = split_style(args, "ann", reference)
    assert torch.equal(mixed[8:], style[8:]) and torch.equal(mixed[:8], reference[:8])

    # Without --style-from-split the style sample is never the face, even with no reference sample.
    assert cli.main(argv + ["--out", str(tmp_path / "plain")]) == 0
    assert read_sidecar(tmp_path / "plain" / "sample.json")["parameters"]["face_source"] == "ann_002"
    capsys.readouterr()
    for extra, message in (
            (["--style-from-split", "--weights", str(run / "bob" / "pidiff.safetensors")],
             f"pidiff sample: no style sample of 'bob' in {encoded} (add one with pidiff-data splits add-style, then "
             "export and encode the split again)"),
            (["--style-from-split", "--style-wplus", str(tmp_path / "x.npy")],
             "pidiff sample: give one style face: --style-from-split, --style-wplus or --style-photo")):
        assert cli.main(argv + extra + ["--out", str(tmp_path / "bad")]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == message


def test_an_identity_with_only_a_style_sample_is_refused(tmp_path):
    from pidiff.data import load_training_samples

    write_encoded_shard(tmp_path / "faces-000000.safetensors", {"ann_000": ("ann", "train"), "zed_000": ("zed", "style")})
    with pytest.raises(ValueError, match=r"identity 'zed' .* has only style samples \(zed_000\)"):
        load_training_samples(tmp_path, None, "faces")


# ----------------------------------------------------------------------------------------------
def test_ablation_grid_trains_samples_and_scores_each_setting_and_resumes(tiny_models, tiny_clip, lpips_metric, arcface,
                                                                          tmp_path, capsys):
    write_encoded_shard(tmp_path / "enc" / "faces-000000.safetensors",
                        {"ann_000": ("ann", "train"), "ann_001": ("ann", "train"), "ann_002": ("ann", "reference"),
                         "bob_000": ("bob", "train"), "bob_001": ("bob", "train")})
    refs = write_refs(tmp_path / "refs", {"ann": ("obama.jpg", {"race": "black", "age": "21-50"}),
                                          "bob": ("obama3.jpg", {"race": "black", "age": "51+"})})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of S*\nS* on the beach\n")
    out = tmp_path / "ablation"
    argv = ["ablate", "--grid", "steps=1,2", "--encoded", str(tmp_path / "enc"), "--split", "faces",
            "--sd", str(tiny_models["sd"]), "--refs", str(refs), "--out", str(out), "--prompts", str(prompts),
            "--device", "cpu", "--train-options", "--batch-size 1 --checkpoint-every 0",
            "--sample-options", "--steps 1 --latent-size 8", "--arcface", str(arcface),
            "--lpips-vgg", str(lpips_metric.path), "--lpips-size", "64", "--clip", str(tiny_clip)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| steps | identities | images | face rate | ID ↑ | LPIPS ↓ | CLIP-T ↑ |" in printed
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [(r["setting"], r["steps"], r["identities"], r["images"]) for r in rows] == [
        ("steps=1", "1", "2", "4"), ("steps=2", "2", "2", "4")]
    assert (out / "ablation.png").read_bytes()[:8] == PNG
    for setting, steps in (("steps-1", "1"), ("steps-2", "2")):
        from pidiff.model import load_weights_metadata

        assert load_weights_metadata(out / "weights" / setting / "ann" / "pidiff.safetensors")["steps"] == steps
        table = next(csv.DictReader(open(out / setting / "eval" / "eval_table.csv")))
        row = next(r for r in rows if r["steps"] == steps)
        assert all(float(row[m]) == pytest.approx(float(table[m]), abs=1e-6) for m in ("id", "lpips", "clip_t"))
    weights_time = (out / "weights" / "steps-1" / "ann" / "pidiff.safetensors").stat().st_mtime_ns

    # A rerun skips both settings; an added value trains only that one.
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("already done") == 2 and "training" not in printed
    (out / "steps-2" / "result.json").unlink()  # as if interrupted after sampling: only the evaluation is redone
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "steps=2: ann already sampled, kept" in printed and "steps=1: already done" in printed
    assert (out / "weights" / "steps-1" / "ann" / "pidiff.safetensors").stat().st_mtime_ns == weights_time


def one_identity_ablation(tmp_path, tiny_models, out, grid: str) -> list[str]:
    """`pidiff ablate` arguments over one identity (ann: a train and a reference sample, obama.jpg
    as its reference photo), one prompt, one step of training and sampling; metrics to add."""
    write_encoded_shard(tmp_path / "enc" / "faces-000000.safetensors",
                        {"ann_000": ("ann", "train"), "ann_001": ("ann", "reference")})
    refs = write_refs(tmp_path / "refs", {"ann": ("obama.jpg", {})})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of S*\n")
    return ["ablate", "--grid", grid, "--encoded", str(tmp_path / "enc"), "--split", "faces", "--sd", str(tiny_models["sd"]),
            "--refs", str(refs), "--out", str(out), "--prompts", str(prompts), "--device", "cpu",
            "--train-options", "--steps 1 --batch-size 1", "--sample-options", "--steps 1 --latent-size 8"]


def test_settings_that_differ_only_in_lambda_share_their_training(tiny_models, tiny_clip, tmp_path, capsys):
    out = tmp_path / "ablation"
    assert cli.main(one_identity_ablation(tmp_path, tiny_models, out, "lambda=0,0.8")
                    + ["--metrics", "clip_t", "--clip", str(tiny_clip)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("group 0: training ann") == 1 and "group 0: ann already trained, skipped" in printed
    assert [p.name for p in (out / "weights").iterdir()] == ["default"]
    lambdas = [read_sidecar(out / f"lambda-{v}" / "samples" / "ann" / "sample.json")["images"][0]["lambda"] for v in ("0", "0.8")]
    assert lambdas == [0.0, 0.8]
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [(r["setting"], r["lambda"]) for r in rows] == [("lambda=0", "0"), ("lambda=0.8", "0.8")]


def test_ablation_with_the_dlib_fallback_labels_its_id_column_as_eval_does(tiny_models, tmp_path, capsys, monkeypatch):
    """Without --arcface, ID comes from --dlib-descriptor: `pidiff eval` calls that column "ID (dlib)"
    (not comparable with ArcFace numbers), and so do the ablation table and plot."""
    from PIL import ImageDraw

    needs("dlib")
    descriptor = cached_file(MODELS / "dlib_face_recognition_resnet_model_v1.dat")
    drawn = []
    draw_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *args, **kwargs: (drawn.append(text), draw_text(self, xy, text, *args, **kwargs))[1])
    out = tmp_path / "ablation"
    assert cli.main(one_identity_ablation(tmp_path, tiny_models, out, "lambda=0.4")
                    + ["--metrics", "id", "--dlib-descriptor", str(descriptor)]) == 0
    printed = capsys.readouterr().out
    assert "| lambda | identities | images | face rate | ID (dlib) ↑ |" in printed and "| ID ↑ |" not in printed
    assert "- ID (dlib): cosine of dlib face descriptors (--dlib-descriptor, the fallback without --arcface), not " \
           "comparable with ArcFace ID numbers." in printed
    assert "ID (dlib)" in (out / "lambda-0.4" / "eval" / "eval_table.md").read_text()  # as eval labels it
    assert "ID (dlib) (higher is better)" in drawn and "ID (higher is better)" not in drawn
    assert list(csv.DictReader(open(out / "ablation.csv")))[0].keys() >= {"id", "face_rate"}  # CSV: machine names


def test_ablation_input_errors_are_one_line(tiny_models, tmp_path, capsys):
    write_encoded_shard(tmp_path / "enc" / "faces-000000.safetensors",
                        {"ann_000": ("ann", "train"), "bob_000": ("bob", "train")})
    refs = write_refs(tmp_path / "refs", {"ann": ("obama.jpg", {})})
    base = ["ablate", "--encoded", str(tmp_path / "enc"), "--split", "faces", "--sd", str(tiny_models["sd"]),
            "--refs", str(refs), "--out", str(tmp_path / "out"), "--metrics", "clip_t", "--clip", str(tmp_path)]
    for grid, message in ((["--grid", "epochs=1"], "--grid 'epochs=1': expected KEY=V1,V2,… with KEY one of steps, images, "
                                                   "lambda, augment, drop_visual, drop_text"),
                          (["--grid", "drop_text=0.3,2"], "--grid drop_text: '2' is not a probability in [0, 1]"),
                          (["--grid", "images=2"], f"--grid images=2: identity 'ann' has only 1 train samples in the "
                                                   f"split 'faces' of {tmp_path / 'enc'}"),
                          (["--grid", "steps=1"], f"{refs / 'refs.json'}: no reference of identity 'bob'")):
        assert cli.main(base + grid) == 2
        assert capsys.readouterr().err == f"pidiff ablate: {message}\n"
    assert not (tmp_path / "out").exists()


def test_ablation_settings_map_to_train_and_sample_options_and_image_subsets(tmp_path):
    from pidiff.ablate import parse_grid, settings_of, split_samples, write_image_subset

    settings = settings_of(parse_grid(["augment=on,off", "lambda=0.4", "drop_visual=0.25"]))
    assert [s.name for s in settings] == ["augment=on,lambda=0.4,drop_visual=0.25", "augment=off,lambda=0.4,drop_visual=0.25"]
    assert settings[0].train_args() == ["--w-plus-noise", "0.05", "--visual-dropout", "0.25"]
    assert settings[1].train_args() == ["--w-plus-noise", "0", "--visual-dropout", "0.25"]
    assert settings[0].sample_args() == ["--lambda", "0.4"] and settings[0].folder == "augment-on_lambda-0.4_drop_visual-0.25"

    write_encoded_shard(tmp_path / "enc" / "faces-000000.safetensors",
                        {"ann_002": ("ann", "train"), "ann_000": ("ann", "train"), "ann_001": ("ann", "reference"),
                         "ann_003": ("ann", "style"), "bob_000": ("bob", "train")})
    subset = write_image_subset(str(tmp_path / "enc"), "faces", 1, tmp_path / "sub")
    assert split_samples(str(subset), "faces") == {"ann": [("ann_000", "train"), ("ann_001", "reference"), ("ann_003", "style")],
                                                   "bob": [("bob_000", "train")]}
    from pidiff.encode import read_encoded_shard

    whole, part = read_encoded_shard(tmp_path / "enc" / "faces-000000.safetensors"), read_encoded_shard(subset / "faces-000000.safetensors")
    assert torch.equal(part.w_plus[0], whole.w_plus[1])  # ann_000's row


# ----------------------------------------------------------------------------------------------
def test_shown_escapes_control_characters_only():
    from pidiff.terminal import shown

    assert shown("ann\x1b[31m\nbob\r\t\x00\x7f\x85\x9b end") == "ann\\x1b[31m\\nbob\\r\\t\\x00\\x7f\\x85\\x9b end"
    assert shown("Zoë/2 C:\\path ✓ λ") == "Zoë/2 C:\\path ✓ λ"  # printable text, backslashes included, as it is
    assert shown(ValueError("line\none")) == "line\\none"


def test_identity_names_with_control_characters_reach_the_terminal_escaped_and_json_exactly(tiny_models, tiny_clip,
                                                                                         tmp_path, capsys):
    """An identity is catalog data: "\\x1b[31m" would colour the terminal and "\\n" forge a line in
    train, sample and eval output. Human output escapes them (pidiff.terminal.shown); the sidecar
    and the CSVs keep the name exactly."""
    name = "ann\x1b[31m\nINFO fake line"
    escaped = "ann\\x1b[31m\\nINFO fake line"
    encoded = tmp_path / "enc"
    write_encoded_shard(encoded / "faces-000000.safetensors", {"a_000": (name, "train"), "a_001": (name, "reference")})
    run = tmp_path / "run"
    assert cli.main(["train", "--encoded", str(encoded), "--split", "faces", "--sd", str(tiny_models["sd"]),
                     "--out", str(run), "--steps", "1", "--batch-size", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert f"group 0: training {escaped} (1 samples)" in printed.out.splitlines()
    weights = next(run.glob("*/pidiff.safetensors"))
    assert f"{escaped}: {weights}" in printed.out.splitlines()

    samples = tmp_path / "samples" / "method\x1b[2J"
    assert cli.main(["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--encoded", str(encoded),
                     "--prompt", "a photo of S*\x07", "--steps", "1", "--latent-size", "8", "--device", "cpu",
                     "--out", str(samples / "ann")]) == 0
    printed = capsys.readouterr()
    assert printed.out == (f"{tmp_path}/samples/method\\x1b[2J/ann/000.png: 'a photo of S*\\x07' (identity {escaped}, "
                           "face a_001, λ 0.4, seed 0)\n")
    assert read_sidecar(samples / "ann" / "sample.json")["parameters"]["identity"] == name  # JSON: exact

    refs = write_refs(tmp_path / "refs", {name: ("obama.jpg", {})})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of S*\x07\n")
    assert cli.main(["eval", "--samples", str(samples), "--refs", str(refs), "--prompts", str(prompts), "--metrics",
                     "clip_t", "--clip", str(tiny_clip), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr()
    assert f"| {escaped} | 1 |" in printed.out and "| method\\x1b[2J | 1 | 1 |" in printed.out
    assert "\x1b" not in printed.out + printed.err and "\nINFO fake line" not in printed.out
    assert f"| {escaped} | 1 |" in (tmp_path / "eval" / "eval.md").read_text()
    summary = list(csv.DictReader(open(tmp_path / "eval" / "eval_summary.csv")))
    assert {r["identity"] for r in summary} == {name, "overall"}  # CSV: exact

    # A one-line error naming the identity stays one line.
    assert cli.main(["train", "--encoded", str(encoded), "--identity", name + "\x1b", "--sd", str(tiny_models["sd"]),
                     "--out", str(tmp_path / "run2"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and err.startswith("pidiff train: "), err
