"""A face from any photo: `pidiff wplus` and `pidiff sample --photo/--style-photo` prepare it through
`pidiff-data face` (the Swift tool: detect, align, quality, background removal), encode it with e4e
and record where it came from. Real photos from $PIDIFF_CACHE (default ~/.cache/pidiff-data); a missing
photo or pidiff-data build fails the test that needs it, naming it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from pidiff import cli, wplus
from pidiff.style import load_w_plus, read_sidecar

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

CACHE = Path(os.environ.get("PIDIFF_CACHE") or Path.home() / ".cache" / "pidiff-data")
PHOTOS = CACHE / "sample" / "identities"


def photo(relative: str) -> Path:
    path = PHOTOS / relative
    if not path.is_file():
        pytest.fail(f"{path} absent: scripts/fetch-assets.sh places it (PIDIFF_CACHE={CACHE})", pytrace=False)
    return path


@pytest.fixture(scope="session")
def face_tool() -> Path:
    """A pidiff-data with the `face` command: $PIDIFF_DATA, else the repository's release, else debug build."""
    root = wplus.repository_root()
    candidates = [Path(os.environ["PIDIFF_DATA"])] if os.environ.get("PIDIFF_DATA") else []
    candidates += [root / ".build" / build / "pidiff-data" for build in ("release", "debug")] if root else []
    for candidate in candidates:
        if candidate.is_file() and wplus.has_face_command(candidate):
            return candidate
    pytest.fail(f"no pidiff-data with a `face` command among {[str(c) for c in candidates]}: run `swift build` "
                "(or `swift build -c release`) in the repository, or set PIDIFF_DATA", pytrace=False)


@pytest.fixture
def with_face_tool(face_tool, monkeypatch) -> Path:
    monkeypatch.setenv("PIDIFF_DATA", str(face_tool))
    return face_tool


def two_faces(path: Path) -> Path:
    """Obama and Biden side by side: a generated photo with two faces."""
    a, b = Image.open(photo("obama/obama.jpg")).convert("RGB"), Image.open(photo("biden/biden.jpg")).convert("RGB")
    canvas = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), "gray")
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    canvas.save(path)
    return path


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ----------------------------------------------------------------------------------------------
# Finding pidiff-data.
def test_pidiff_data_is_found_by_env_then_path_then_release_then_debug_build(tmp_path, monkeypatch):
    assert (wplus.repository_root() / "Package.swift").is_file()  # walking up from the pidiff package
    repo = tmp_path / "repo"
    (repo / "Package.swift").parent.mkdir(parents=True)
    (repo / "Package.swift").write_text("// swift-tools-version:5.9\n")
    monkeypatch.setattr(wplus, "repository_root", lambda start=None: repo)
    monkeypatch.delenv("PIDIFF_DATA", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with pytest.raises(wplus.FaceError) as caught:
        wplus.find_pidiff_data()
    assert str(caught.value) == (f"pidiff-data not found (needed to prepare a face from a photo): build it with "
                                 f"`swift build -c release` in {repo}, or set PIDIFF_DATA to its path")
    debug = executable(repo / ".build" / "debug" / "pidiff-data", "exit 0\n")
    assert wplus.find_pidiff_data() == debug
    release = executable(repo / ".build" / "release" / "pidiff-data", "exit 0\n")
    assert wplus.find_pidiff_data() == release
    on_path = executable(tmp_path / "bin" / "pidiff-data", "exit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert wplus.find_pidiff_data() == on_path
    chosen = executable(tmp_path / "chosen" / "pidiff-data", "exit 0\n")
    monkeypatch.setenv("PIDIFF_DATA", str(chosen))
    assert wplus.find_pidiff_data() == chosen
    monkeypatch.setenv("PIDIFF_DATA", str(tmp_path / "absent"))
    with pytest.raises(wplus.FaceError, match=r"PIDIFF_DATA=.*absent: not an executable file"):
        wplus.find_pidiff_data()


def test_a_failing_or_outdated_pidiff_data_is_one_line_naming_the_photo(tmp_path, monkeypatch):
    picture = photo("obama/obama.jpg")
    tool = executable(tmp_path / "pidiff-data", 'echo "pidiff-data: cannot read the pipeline file p.yaml" >&2\nexit 1\n')
    monkeypatch.setenv("PIDIFF_DATA", str(tool))
    with pytest.raises(wplus.FaceError) as caught:
        wplus.prepare_face(picture, tmp_path / "out")
    assert str(caught.value) == (f"--photo {picture}: pidiff-data: cannot read the pipeline file p.yaml "
                                 "(pidiff-data exit status 1)")
    # A build from before `face` existed: exit 64 (usage) and `face --help` fails too.
    old = executable(tmp_path / "old" / "pidiff-data",
                     'if [ "$2" = --help ]; then echo "USAGE: pidiff-data <subcommand>"; exit 0; fi\n'
                     'echo "Error: Unknown option \'--out\'" >&2\nexit 64\n')
    monkeypatch.setenv("PIDIFF_DATA", str(old))
    with pytest.raises(wplus.FaceError, match=r"has no `face` command .*swift build -c release"):
        wplus.prepare_face(picture, tmp_path / "out")
    with pytest.raises(wplus.FaceError, match=r"--photo .*nothing\.jpg: not found"):
        wplus.prepare_face(tmp_path / "nothing.jpg", tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# `pidiff wplus` with the real pidiff-data.
def test_wplus_of_a_photo_equals_wplus_of_its_prepared_face_and_says_where_it_came_from(with_face_tool, tiny_models,
                                                                                       tmp_path, capsys):
    from pidiff.e4e import load_e4e

    obama = photo("obama/obama.jpg")
    faces = tmp_path / "faces"
    from_photo, from_png = tmp_path / "photo.safetensors", tmp_path / "png.safetensors"
    assert cli.main(["wplus", str(obama), "--e4e", str(tiny_models["e4e"]), "--out", str(from_photo),
                     "--face-dir", str(faces), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == f"pidiff wplus: {from_photo}: w+ [1, 18, 512] of {obama} (photo, face 0 of 1)\n"
    assert sorted(p.name for p in faces.iterdir() if not p.name.startswith(".")) == ["obama.crop512.png", "obama.e4e.png", "obama.json",
                                                       "obama.mask256.png"]
    prepared = faces / "obama.e4e.png"
    assert cli.main(["wplus", str(prepared), "--e4e", str(tiny_models["e4e"]), "--out", str(from_png),
                     "--device", "cpu"]) == 0

    with safe_open(str(from_photo), framework="pt") as f:
        assert list(f.keys()) == ["w_plus"] and f.get_tensor("w_plus").shape == (1, 18, 512)
    w = load_w_plus(from_photo)
    assert torch.equal(w, load_w_plus(from_png))  # the same e4e input, the same code
    expected = load_e4e(tiny_models["e4e"])(torch.from_numpy(np.asarray(Image.open(prepared).convert("RGB")).copy())
                                            .permute(2, 0, 1)[None].float().div(127.5).sub(1))[0]
    torch.testing.assert_close(w, expected)

    meta = metadata_of(from_photo)
    assert meta["format"] == "pidiff-wplus/1" and meta["source"] == str(obama) and meta["source_kind"] == "photo"
    assert meta["source_sha256"] == wplus.file_sha256(obama) and meta["e4e_sha256"] == wplus.file_sha256(tiny_models["e4e"])
    assert meta["e4e_input_sha256"] == wplus.file_sha256(prepared) and meta["random_weights"] == "e4e"
    face = json.loads(meta["face"])
    assert face["face_index"] == 0 and face["faces_found"] == 1 and face["mask"]["ok"] is True and "quality" in face
    assert json.loads(meta["face_files"]) == [str(faces / n) for n in ("obama.e4e.png", "obama.crop512.png",
                                                                        "obama.mask256.png", "obama.json")]
    meta = metadata_of(from_png)
    assert meta["source_kind"] == "e4e-input" and json.loads(meta["face"])["faces_found"] == 1  # obama.json beside it


def test_photos_without_one_clear_face_are_one_line_errors_and_a_face_can_be_chosen(with_face_tool, tiny_models,
                                                                                    tmp_path, capsys, monkeypatch):
    two = two_faces(tmp_path / "two.jpg")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (400, 300), (120, 160, 200)).save(blank)
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    small = tmp_path / "small.e4e.png"
    Image.new("RGB", (128, 128), "white").save(small)
    base = ["wplus", "--e4e", str(tiny_models["e4e"]), "--device", "cpu"]

    def error(*argv: str) -> str:
        assert cli.main(base + [*argv, "--out", str(tmp_path / "w.safetensors")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("pidiff wplus: ") and err.count("\n") == 1, err
        return err

    assert f"{two}: 2 faces: choose one with --largest or --face-index N" in error(str(two))
    assert f"{blank}: no face detected" in error(str(blank))
    assert f"{text}: not an image" in error(str(text))
    assert f"{two}: no face 5: 2 detected" in error(str(two), "--face-index", "5")
    assert f"{small}: 128x128, not 256x256" in error(str(small))
    assert not (tmp_path / "w.safetensors").exists()
    assert cli.main(base + [str(two), "--largest", "--out", str(tmp_path / "w.npy")]) == 2
    assert capsys.readouterr().err == f"pidiff wplus: --out {tmp_path / 'w.npy'}: give a .safetensors file name\n"

    chosen = {}
    for option in (["--largest"], ["--face-index", "1"]):
        out = tmp_path / f"face{len(chosen)}.safetensors"
        assert cli.main(base + [str(two), *option, "--out", str(out)]) == 0
        chosen[tuple(option)] = json.loads(metadata_of(out)["face"])
    assert chosen[("--largest",)]["face_index"] == 0 and chosen[("--face-index", "1")]["face_index"] == 1
    assert chosen[("--largest",)]["faces_found"] == 2

    capsys.readouterr()
    monkeypatch.setenv("PIDIFF_DATA", str(tmp_path / "no-such-tool"))
    assert f"PIDIFF_DATA={tmp_path / 'no-such-tool'}: not an executable file" in error(str(two))


# ----------------------------------------------------------------------------------------------
# `pidiff sample --photo` and `--style-photo`.
def test_sample_from_a_photo_with_style_from_another_photo(with_face_tool, tiny_models, tmp_path, capsys):
    """--photo and --style-photo give the same pictures as `pidiff wplus` of each photo passed as
    --wplus and --style-wplus; the prepared faces are kept in OUT and the sidecar and grid say where
    the face and the style rows came from."""
    from diffusers import UNet2DConditionModel

    from pidiff.model import PIDiffAdapter, save_weights

    obama, biden = photo("obama/obama.jpg"), photo("biden/biden.jpg")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")), 0,
                 {"identity": "obama", "placeholder": "S*"})
    e4e = ["--e4e", str(tiny_models["e4e"])]
    common = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--prompt", "a photo of S*",
              "--steps", "2", "--latent-size", "8", "--device", "cpu", "--lambda", "1"]
    out = tmp_path / "from-photos"
    assert cli.main(common + ["--photo", str(obama), "--style-photo", str(biden), "--style-layers", "fine", *e4e,
                              "--out", str(out)]) == 0
    for name in ("obama", "biden"):
        assert cli.main(["wplus", str(PHOTOS / f"{name}/{name}.jpg"), *e4e, "--device", "cpu",
                         "--out", str(tmp_path / f"{name}.safetensors")]) == 0
    via_files = tmp_path / "from-files"
    assert cli.main(common + ["--wplus", str(tmp_path / "obama.safetensors"), "--style-wplus",
                              str(tmp_path / "biden.safetensors"), "--style-layers", "8-17", "--out", str(via_files)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out / "000.png")), np.asarray(Image.open(via_files / "000.png")))

    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "000.png", "face/obama.crop512.png", "face/obama.e4e.png", "face/obama.json", "face/obama.mask256.png",
        "grid.png", "sample.json", "style-face/biden.crop512.png", "style-face/biden.e4e.png", "style-face/biden.json",
        "style-face/biden.mask256.png"]
    parameters = read_sidecar(out / "sample.json")["parameters"]
    assert parameters["face_source"] == str(obama) and parameters["face_choice"] == "--photo"
    assert parameters["face_choice_reason"].startswith(f"--photo {obama}: face 0 of 1 found, aligned")
    assert parameters["face"]["source_kind"] == "photo" and parameters["face"]["face"]["faces_found"] == 1
    assert parameters["face_files"][0] == "face/obama.e4e.png"
    assert parameters["style_source"] == str(biden) and parameters["style_source_kind"] == "photo"
    assert parameters["style_layers"] == list(range(8, 18)) and parameters["style_layers_spec"] == "fine"
    assert parameters["style_layers_meaning"].startswith("8-17 (fine: colour scheme incl. skin and hair colour")
    assert parameters["style_face"]["source_sha256"] == wplus.file_sha256(biden)
    assert "style-face/biden.e4e.png" in parameters["style_face_files"]
    assert read_sidecar(out / "sample.json")["models"]["e4e_sha256"] == wplus.file_sha256(tiny_models["e4e"])
    assert Image.open(out / "grid.png").height > Image.open(out / "000.png").height + 14  # titled
    files = read_sidecar(via_files / "sample.json")["parameters"]
    assert files["face_choice"] == "--wplus" and files["face"]["wplus_made_from"]["source"] == str(obama)
    assert files["style_wplus_made_from"]["source"] == str(biden)

    # A photo that is not one clear face stops before any model loads, in one line naming it.
    capsys.readouterr()
    two = two_faces(tmp_path / "two.jpg")
    assert cli.main(common + ["--photo", str(two), *e4e, "--out", str(tmp_path / "two-out")]) == 2
    err = capsys.readouterr().err
    assert err == f"pidiff sample: --photo {two}: 2 faces: choose one with --largest or --face-index N (0 = largest)\n"
    assert not (tmp_path / "two-out").exists()
    # --image is for prepared faces only: the photo itself is refused, naming --photo.
    assert cli.main(common + ["--image", str(obama), *e4e, "--out", str(tmp_path / "image-out")]) == 2
    err = capsys.readouterr().err
    assert f"--image {obama}: " in err and "not 256x256" in err and "use --photo PHOTO" in err
    image_out = tmp_path / "image-out"
    assert cli.main(common + ["--image", str(out / "face" / "obama.e4e.png"), *e4e, "--out", str(image_out)]) == 0
    parameters = read_sidecar(image_out / "sample.json")["parameters"]
    assert parameters["face_choice"] == "--image" and parameters["face"]["face"]["faces_found"] == 1  # obama.json beside it


# ----------------------------------------------------------------------------------------------
# What a prepared e4e input given directly (`--image`, `pidiff wplus FILE.e4e.png`) must be.
def sample_weights(tiny_models, tmp_path) -> Path:
    from diffusers import UNet2DConditionModel

    from pidiff.model import PIDiffAdapter, save_weights

    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")), 0,
                 {"identity": "obama", "placeholder": "S*"})
    return weights


def test_an_e4e_input_of_a_photo_pidiff_data_face_refused_is_refused_with_its_reason(face_tool, tiny_models, tmp_path,
                                                                                     capsys):
    """pidiff-data face writes NAME.e4e.png even for a photo it refuses ("ok": false in NAME.json, for
    inspection): `pidiff wplus` and `pidiff sample --image` refuse that file in one line naming it,
    the reason and what to do instead."""
    faces = tmp_path / "faces"
    two = two_faces(tmp_path / "two.jpg")
    partial = photo("obama/obama_partial_face.jpg")
    for picture in (two, partial):
        done = subprocess.run([str(face_tool), "face", str(picture), "--out", str(faces)], capture_output=True, text=True)
        assert done.returncode == 3, done.stderr  # refused, files written anyway
    several, cropped = faces / "two.e4e.png", faces / "obama_partial_face.e4e.png"
    assert several.is_file() and cropped.is_file()
    assert json.loads((faces / "two.json").read_text())["ok"] is False

    e4e = ["--e4e", str(tiny_models["e4e"])]
    out = tmp_path / "w.safetensors"
    assert cli.main(["wplus", str(several), *e4e, "--device", "cpu", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"pidiff wplus: {several}: pidiff-data face refused its photo (two.json: 2 faces: choose one with --largest or "
        "--face-index N (0 = largest)); give the photo with pidiff wplus PHOTO --face-index N (0 = the largest) or "
        "--largest, or prepare it again with `pidiff-data face PHOTO --face-index N` (or `--largest`)\n")
    assert cli.main(["wplus", str(cropped), *e4e, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pidiff wplus: {cropped}: pidiff-data face refused its photo (obama_partial_face.json: face "
                          "fails the quality gates: ") and err.count("\n") == 1
    assert err.endswith("; this face cannot be used: give another photo with pidiff wplus PHOTO\n")
    assert not out.exists()

    common = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(sample_weights(tiny_models, tmp_path)),
              "--prompt", "a photo of S*", "--steps", "1", "--latent-size", "8", "--device", "cpu", *e4e]
    assert cli.main(common + ["--image", str(several), "--out", str(tmp_path / "samples")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pidiff sample: --image {several}: pidiff-data face refused its photo (two.json: 2 faces")
    assert "give the photo with --photo PHOTO --face-index N (0 = the largest) or --largest" in err and err.count("\n") == 1
    assert cli.main(common + ["--image", str(cropped), "--out", str(tmp_path / "samples")]) == 2
    err = capsys.readouterr().err
    assert f"--image {cropped}: pidiff-data face refused its photo (obama_partial_face.json: face fails" in err
    assert err.endswith("give another photo with --photo PHOTO\n")
    assert not (tmp_path / "samples").exists()

    # The face it prepares once told which one to take is accepted.
    chosen = tmp_path / "chosen"
    done = subprocess.run([str(face_tool), "face", str(two), "--out", str(chosen), "--largest"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert cli.main(["wplus", str(chosen / "two.e4e.png"), *e4e, "--device", "cpu", "--out", str(out)]) == 0


def test_image_accepts_a_prepared_face_and_refuses_a_photo_squashed_to_256x256(face_tool, tiny_models, tmp_path, capsys):
    """The check that a 256x256 picture looks prepared (its border mostly white fill), on real data:
    what pidiff-data face writes passes, also re-saved as JPEG; a real photo resized to 256x256 (even
    named *.e4e.png) is refused, naming --photo."""
    faces = tmp_path / "faces"
    obama = photo("obama/obama.jpg")
    done = subprocess.run([str(face_tool), "face", str(obama), "--out", str(faces)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    prepared = faces / "obama.e4e.png"
    as_jpeg = tmp_path / "obama-face.jpg"
    Image.open(prepared).save(as_jpeg, quality=75)
    squashed = tmp_path / "obama.e4e.png"
    Image.open(obama).convert("RGB").resize((256, 256)).save(squashed)

    def share(path: Path) -> float:
        return wplus.white_border_share(np.asarray(Image.open(path).convert("RGB")))

    assert share(prepared) > 0.9 and share(as_jpeg) > 0.9 and share(squashed) < 0.05
    assert wplus.prepared_input(prepared, "--image").record["faces_found"] == 1
    assert wplus.prepared_input(as_jpeg, "--image").record is None
    with pytest.raises(wplus.FaceError) as caught:
        wplus.prepared_input(squashed, "--image")
    message = str(caught.value)
    assert message.startswith(f"--image {squashed}: does not look like a prepared e4e input: 0% of its 2-pixel border "
                              "is white background fill (prepared inputs measured 77-100%, photos resized to 256x256 "
                              "0-11%; at least 40% needed); ")
    assert message.endswith("for a photo use --photo PHOTO")

    e4e = ["--e4e", str(tiny_models["e4e"])]
    common = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(sample_weights(tiny_models, tmp_path)),
              "--prompt", "a photo of S*", "--steps", "1", "--latent-size", "8", "--device", "cpu", *e4e]
    assert cli.main(common + ["--image", str(squashed), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pidiff sample: --image {squashed}: does not look like a prepared e4e input")
    assert "use --photo PHOTO" in err and err.count("\n") == 1 and not (tmp_path / "refused").exists()
    out = tmp_path / "w.safetensors"
    assert cli.main(["wplus", str(squashed), *e4e, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pidiff wplus: {squashed}: does not look like a prepared e4e input")
    assert "give the photo itself" in err and not out.exists()
    assert cli.main(["wplus", str(as_jpeg), "--prepared", *e4e, "--device", "cpu", "--out", str(out)]) == 0
    assert cli.main(common + ["--image", str(prepared), "--out", str(tmp_path / "accepted")]) == 0
    assert read_sidecar(tmp_path / "accepted" / "sample.json")["parameters"]["face_choice"] == "--image"
