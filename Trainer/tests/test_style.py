"""Style mixing of w+ codes, the labelled λ-sweep grid and the sampler's JSON sidecar."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pidiff.style import (LABEL_HEIGHT, GridCanvas, check_lambda_sweep, describe_layers, labelled_grid, lambda_text,
                          load_w_plus, mix_w_plus, model_fingerprints, parse_lambdas, parse_layers, read_sidecar,
                          rows_text, write_sidecar)


def test_parse_layers_reads_ranges_and_single_rows():
    assert parse_layers("0-7") == list(range(8))
    assert parse_layers("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_layers("17") == [17]
    assert parse_layers("4-5,5-6") == [4, 5, 6]


def test_style_layer_presets_name_the_stylegan_row_groups():
    assert parse_layers("coarse") == [0, 1, 2, 3]
    assert parse_layers("middle") == [4, 5, 6, 7]
    assert parse_layers("fine") == list(range(8, 18))
    assert parse_layers("coarse,fine") == [0, 1, 2, 3, *range(8, 18)]
    assert parse_layers("Middle,0") == [0, 4, 5, 6, 7]
    assert rows_text(parse_layers("0-3,8,10-11")) == "0-3,8,10-11"
    assert describe_layers(parse_layers("coarse")) == "0-3 (coarse: pose, face shape)"
    assert describe_layers(parse_layers("fine")) == ("8-17 (fine: colour scheme incl. skin and hair colour, "
                                                     "micro-structure)")
    assert describe_layers(parse_layers("0-3,8")) == "0-3,8 (coarse: pose, face shape; part of fine)"
    assert describe_layers([5]) == "5 (part of middle)"


def test_a_grid_of_many_images_is_drawn_smaller_within_its_pixel_budget():
    # 100 cells of 64x64 with a budget for about 25: every cell is scaled by one factor, labels stay.
    budget = 25 * 64 * (64 + LABEL_HEIGHT)
    canvas = GridCanvas(100, 10, title="style: w+ rows 0-3 from photo x.jpg", max_pixels=budget)
    for i in range(100):
        canvas.paste(i, Image.new("RGB", (64, 64), (i, 0, 0)), f"#{i}")
    width, height = canvas.image.size
    assert width * height <= budget * 1.2 and canvas.cell_size[0] < 64 and canvas.cell_size == (width // 10, canvas.cell_size[1])
    with pytest.raises(ValueError, match="cell 100 outside"):
        canvas.paste(100, Image.new("RGB", (64, 64)), "x")
    with pytest.raises(ValueError, match="image 3 is 32x32, not 64x64"):
        canvas.paste(3, Image.new("RGB", (32, 32)), "x")
    # Small grids keep their cells' size.
    small = GridCanvas(4, 2)
    for i in range(4):
        small.paste(i, Image.new("RGB", (64, 64)), "x")
    assert small.image.size == (128, 2 * (64 + LABEL_HEIGHT))


@pytest.mark.parametrize("spec, reason", [("7-3", "backwards"), ("0-18", "outside"), ("a", "not a row"),
                                          ("1,,2", "empty"), ("-1", "not a row")])
def test_parse_layers_rejects_bad_specs_naming_the_item(spec, reason):
    with pytest.raises(ValueError, match=reason):
        parse_layers(spec)


def test_style_mixing_takes_exactly_the_requested_rows_from_the_style_face():
    g = torch.Generator().manual_seed(0)
    identity, style = torch.randn(18, 512, generator=g), torch.randn(18, 512, generator=g)
    layers = parse_layers("0-7")
    mixed = mix_w_plus(identity, style, layers)
    for row in range(18):
        expected = style[row] if row in layers else identity[row]
        assert torch.equal(mixed[row], expected), row
    assert not torch.equal(identity, mixed)  # the inputs are left alone
    assert torch.equal(mix_w_plus(identity, style, []), identity)
    assert torch.equal(mix_w_plus(identity, style, list(range(18))), style)


def test_style_mixing_broadcasts_one_style_code_over_a_batch():
    identity, style = torch.randn(3, 18, 512), torch.randn(18, 512)
    mixed = mix_w_plus(identity, style, [2, 9])
    assert torch.equal(mixed[:, [2, 9]], style[[2, 9]].expand(3, -1, -1))
    keep = [r for r in range(18) if r not in (2, 9)]
    assert torch.equal(mixed[:, keep], identity[:, keep])
    with pytest.raises(ValueError, match=r"\[18, 512\]"):
        mix_w_plus(torch.randn(17, 512), style, [0])


def test_w_plus_files_load_from_safetensors_pt_and_npy(tmp_path):
    w = torch.randn(18, 512)
    save_file({"w_plus": w[None].contiguous()}, str(tmp_path / "a.safetensors"))
    torch.save({"w_plus": w}, tmp_path / "b.pt")
    np.save(tmp_path / "c.npy", w.numpy())
    for name in ("a.safetensors", "b.pt", "c.npy"):
        assert torch.equal(load_w_plus(tmp_path / name), w), name
    np.save(tmp_path / "two.npy", torch.randn(2, 18, 512).numpy())
    with pytest.raises(ValueError, match="two.npy: shape"):
        load_w_plus(tmp_path / "two.npy")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_w_plus(tmp_path / "missing.pt")


def test_parse_lambdas():
    assert parse_lambdas("0,0.2,0.4,0.6,0.8,1.0") == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    with pytest.raises(ValueError, match="lambda sweep"):
        parse_lambdas("0,x")


def test_sweep_lambdas_are_named_in_full_and_each_given_once():
    assert [lambda_text(v) for v in (0.0, 1.0, 0.4, 0.1234567, 0.1234568, 1e-7)] == [
        "0", "1", "0.4", "0.1234567", "0.1234568", "1e-07"]  # {:g} gives 0.123457 for both
    assert all(float(lambda_text(v)) == v for v in (0.1, 1 / 3, 2.5e-12))
    check_lambda_sweep([0.0, 0.1234567, 0.1234568])
    with pytest.raises(ValueError, match="λ 0.4 is given twice"):
        check_lambda_sweep(parse_lambdas("0,0.4,0.40"))
    with pytest.raises(ValueError, match="nan is not a finite number"):
        check_lambda_sweep(parse_lambdas("nan,nan"))


def test_labelled_grid_has_one_cell_per_image_with_its_label_below():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    images = [Image.new("RGB", (32, 24), c) for c in colours]
    labels = ["lambda=0", "lambda=0.2", "", "lambda=0.6", "lambda=0.8"]
    grid = labelled_grid(images, labels, columns=3)
    assert grid.size == (3 * 32, 2 * (24 + LABEL_HEIGHT))
    pixels = np.asarray(grid)
    for i, colour in enumerate(colours):
        x, y = (i % 3) * 32, (i // 3) * (24 + LABEL_HEIGHT)
        assert (pixels[y:y + 24, x:x + 32] == colour).all(), i
        strip = pixels[y + 24:y + 24 + LABEL_HEIGHT, x:x + 32]
        has_text = (strip < 128).all(axis=-1).any()
        assert has_text == bool(labels[i]), i  # text drawn only where there is a label
    assert (pixels[24 + LABEL_HEIGHT:, 2 * 32:] == 255).all()  # the empty sixth cell stays background


def test_labelled_grid_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        labelled_grid([Image.new("RGB", (8, 8))] * 2, ["a"], columns=2)
    with pytest.raises(ValueError, match="image 1 is 9x8"):
        labelled_grid([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))], ["a", "b"], columns=2)


def test_sidecar_records_parameters_seed_and_model_fingerprints(tmp_path):
    weights = tmp_path / "pidiff.safetensors"
    save_file({"x": torch.arange(4.0)}, str(weights), metadata={"format": "pidiff-weights"})
    metadata = {"identity": "ann", "base_model": "ab" * 32, "random_base_model": "true", "steps": "600"}
    fingerprints = model_fingerprints(weights, metadata)
    assert fingerprints["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert fingerprints["base_model"] == "ab" * 32 and fingerprints["identity"] == "ann"
    assert fingerprints["weights_steps"] == "600"

    parameters = {"steps": 50, "guidance": 7.5, "lambda": 0.4, "style_layers": [0, 1], "prompt": ["a photo of S*"]}
    images = [{"file": "000.png", "prompt": "a photo of S*", "lambda": 0.4}]
    path = write_sidecar(tmp_path / "sample.json", parameters, 1234, fingerprints, images)
    record = read_sidecar(path)
    assert record["seed"] == 1234 and record["parameters"] == parameters
    assert record["models"] == fingerprints and record["images"] == images
    assert not list(tmp_path.glob(".*partial"))
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(ValueError, match="not a pidiff sample sidecar"):
        read_sidecar(tmp_path / "other.json")


def test_sample_command_mixes_style_rows_sweeps_lambda_and_writes_grid_and_sidecar(tiny_models, tmp_path):
    from diffusers import UNet2DConditionModel

    from pidiff import cli
    from pidiff.model import PIDiffAdapter, save_weights

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*", "default_lambda": 0.4,
                                                   "base_model": "cd" * 32})
    g = torch.Generator().manual_seed(0)
    identity, style = torch.randn(18, 512, generator=g), torch.randn(18, 512, generator=g) * 3
    np.save(tmp_path / "style.npy", style.numpy())
    # The identity's w+ comes from an encoded shard, as `pidiff sample --encoded --key` reads it.
    encoded = tmp_path / "encoded"
    encoded.mkdir()
    save_file({"w_plus": identity[None], "latent_mean": torch.zeros(1, 4, 8, 8), "latent_std": torch.ones(1, 4, 8, 8)},
              str(encoded / "faces-000000.safetensors"),
              metadata={"format": "pidiff-encoded/2", "keys": json.dumps(["ann_000"]), "scaling_factor": "0.18215",
                        "latent_size": "8",
                        "samples": json.dumps([{"identity": "ann", "role": "reference", "labels": {}}])})

    def sample(out, *extra):
        argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--encoded", str(encoded),
                "--key", "ann_000", "--prompt", "a photo of S*", "--steps", "2", "--latent-size", "8",
                "--device", "cpu", "--seed", "5", "--out", str(tmp_path / out), *extra]
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # the tiny models run faster on one thread
        try:
            assert cli.main(argv) == 0
        finally:
            torch.set_num_threads(previous)
        return tmp_path / out

    mixed = sample("mixed", "--style-wplus", str(tmp_path / "style.npy"), "--style-layers", "0-7",
                   "--lambda-sweep", "0,1")
    plain = sample("plain", "--lambda-sweep", "0,1")
    assert sorted(p.name for p in mixed.glob("*.png")) == ["000_lambda0.png", "000_lambda1.png", "grid.png"]
    # The style run's grid is titled with the rows and the style source (wrapped to the grid's width);
    # the plain run's has no title.
    width, height = Image.open(mixed / "grid.png").size
    assert width == 2 * 64 and height > 64 + LABEL_HEIGHT and (height - 64) % LABEL_HEIGHT == 0
    title = np.asarray(Image.open(mixed / "grid.png").convert("L"))[: height - 64 - LABEL_HEIGHT]
    assert (title < 128).any()  # text drawn there
    assert Image.open(plain / "grid.png").size == (2 * 64, 64 + LABEL_HEIGHT)

    def pixels(path):
        return np.asarray(Image.open(path))

    # λ = 0 switches the style attention off, so the style face cannot matter; at λ = 1 it does.
    np.testing.assert_array_equal(pixels(mixed / "000_lambda0.png"), pixels(plain / "000_lambda0.png"))
    assert not np.array_equal(pixels(mixed / "000_lambda1.png"), pixels(plain / "000_lambda1.png"))

    record = read_sidecar(mixed / "sample.json")
    assert record["seed"] == 5
    assert record["parameters"]["style_layers"] == list(range(8)) and record["parameters"]["lambda_sweep"] == [0.0, 1.0]
    assert record["parameters"]["style_source"] == str(tmp_path / "style.npy")
    assert record["parameters"]["style_source_kind"] == "w+ file"
    assert record["parameters"]["style_layers_spec"] == "0-7"
    assert record["parameters"]["style_layers_meaning"] == "0-7 (coarse + middle: pose, face shape, hair style, eyes)"
    assert record["parameters"]["steps"] == 2 and record["parameters"]["guidance"] == 7.5
    assert record["parameters"]["style_wplus_sha256"] == hashlib.sha256((tmp_path / "style.npy").read_bytes()).hexdigest()
    assert record["models"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["models"]["base_model"] == "cd" * 32 and record["models"]["identity"] == "ann"
    assert [(e["file"], e["lambda"], e["prompt"]) for e in record["images"]] == [
        ("000_lambda0.png", 0.0, "a photo of S*"), ("000_lambda1.png", 1.0, "a photo of S*")]


def test_sweep_of_close_lambdas_writes_a_file_per_image_and_rejects_repeated_lambdas(tiny_models, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from pidiff import cli
    from pidiff.evaluate import collect_samples
    from pidiff.model import PIDiffAdapter, save_weights

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*"})
    np.save(tmp_path / "face.npy", np.zeros((18, 512), np.float32))
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--wplus", str(tmp_path / "face.npy"),
            "--prompt", "a photo of S*", "--steps", "1", "--latent-size", "8", "--device", "cpu"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models run faster on one thread
    try:
        assert cli.main(argv + ["--lambda-sweep", "0.4,0.1234567,0.4", "--out", str(tmp_path / "repeated")]) == 2
        error = capsys.readouterr().err
        assert error == "pidiff sample: --lambda-sweep: λ 0.4 is given twice\n" and not (tmp_path / "repeated").exists()

        out = tmp_path / "close"
        assert cli.main(argv + ["--lambda-sweep", "0.4,0.1234567,0.1234568", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(previous)
    names = ["000_lambda0.4.png", "000_lambda0.1234567.png", "000_lambda0.1234568.png"]
    assert [(e["file"], e["lambda"]) for e in read_sidecar(out / "sample.json")["images"]] == list(
        zip(names, [0.4, 0.1234567, 0.1234568]))
    assert sorted(p.name for p in out.glob("000_*.png")) == sorted(names)
    # `pidiff eval` finds each image through the sidecar, with its own λ.
    samples = collect_samples(out, ["a photo of S*"])
    assert [(s.path.name, s.lam) for s in samples] == list(zip(names, [0.4, 0.1234567, 0.1234568]))
