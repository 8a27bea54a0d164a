"""`pidiff eval`: each metric against a hand computation on synthetic inputs and tiny random models,
the face alignment maths, the prompt protocol, and the errors for missing models.

LPIPS runs the real lpips package (its v0.1 linear layers from the wheel) on a VGG16 backbone
loaded from a file of seeded random weights, since the real torchvision weights cannot be
downloaded here; CLIP-T runs a tiny random transformers CLIPModel. MTCNN (weights in the
facenet-pytorch wheel) is real; its photo tests use face_recognition's test photos that
scripts/fetch-assets.sh places in $PIDIFF_CACHE (default ~/.cache/pidiff-data). scripts/setup.sh
installs every package and file these tests use, so a missing one fails the test, naming it.
"""

import copy
import csv
import importlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pidiff import cli
from pidiff.evaluate import (ARCFACE_TEMPLATE_112, ArcFaceEmbedder, ClipTextScore, DlibDescriptor, LpipsVgg,
                             MissingModelError, MtcnnAligner, SampleImage, collect_samples, cosine, read_prompts,
                             similarity_transform, summarise, warp_affine)
from pidiff.style import write_sidecar

CACHE = Path(os.environ.get("PIDIFF_CACHE") or Path.home() / ".cache" / "pidiff-data")  # as scripts/fetch-assets.sh
PHOTOS = CACHE / "sample" / "identities" / "obama"
MODELS = CACHE / "models"
VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def needs(module: str):
    """One of the `eval` packages scripts/setup.sh installs (lpips, onnxruntime, dlib-bin,
    facenet-pytorch): a machine without it fails the tests that run it, naming the package."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"{module} is not importable ({error}); scripts/setup.sh installs it", pytrace=False)


def cached_file(path: Path) -> Path:
    """A file scripts/fetch-assets.sh places in $PIDIFF_CACHE: its absence fails the test."""
    if not path.is_file():
        pytest.fail(f"{path} absent: scripts/fetch-assets.sh places it (PIDIFF_CACHE={CACHE})", pytrace=False)
    return path


def photo(name: str, size: int = 320) -> Image.Image:
    path = cached_file(PHOTOS / name)
    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size))
    return image


# ----------------------------------------------------------------------------------------------
def test_cosine_of_known_vectors():
    assert cosine([1, 0], [1, 1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert cosine([1, 2, 3], [-2, -4, -6]) == pytest.approx(-1.0, abs=1e-12)
    assert cosine([1, 0, 0], [0, 5, 0]) == pytest.approx(0.0, abs=1e-12)
    assert cosine([3, 4], [4, 3]) == pytest.approx(24 / 25, abs=1e-12)


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    angle, scale, shift = math.radians(20), 1.7, np.array([12.0, -5.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    source = ARCFACE_TEMPLATE_112 * 0.8 + 30
    target = source @ (scale * rotation).T + shift
    matrix = similarity_transform(source, target)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_warp_affine_shifts_by_whole_pixels_exactly_and_fills_outside_with_zeros():
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    matrix = np.array([[1.0, 0, -3], [0, 1.0, -2]])  # output(x, y) = input(x + 3, y + 2)
    out = warp_affine(image, matrix, 16)
    np.testing.assert_array_equal(out, image[2:18, 3:19])
    out = warp_affine(image, np.array([[1.0, 0, 10], [0, 1.0, 0]]), 16)
    assert (out[:, :10] == 0).all()
    np.testing.assert_array_equal(out[:, 10:], image[:16, :6])


def test_mtcnn_finds_no_face_in_a_blank_image():
    needs("facenet_pytorch")
    assert MtcnnAligner().align(Image.new("RGB", (160, 160), (128, 128, 128))) is None


def test_mtcnn_aligns_a_real_face_onto_the_arcface_template():
    needs("facenet_pytorch")
    aligner = MtcnnAligner()
    image = photo("obama.jpg")
    points = aligner.landmarks(image)
    assert points.shape == (5, 2)
    assert points[0, 0] < points[1, 0] and points[2, 1] < points[3, 1]  # left eye left of right eye; nose above mouth
    face = aligner.align(image)
    assert face.shape == (112, 112, 3)
    # The landmarks found again on the aligned face are where the transform sent the originals,
    # and those lie near the template (a least-squares fit: a smile widens the mouth).
    matrix = similarity_transform(points, ARCFACE_TEMPLATE_112)
    mapped = points @ matrix[:, :2].T + matrix[:, 2]
    again = aligner.landmarks(Image.fromarray(face))
    assert again is not None and np.abs(again - mapped).max() < 2.5
    assert np.abs(mapped - ARCFACE_TEMPLATE_112).max() < 6


# ----------------------------------------------------------------------------------------------
def onnx_linear_embedder(path: Path, weight: np.ndarray) -> Path:
    """An ONNX model: [N, 3, 112, 112] → Flatten → MatMul weight [37632, D]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["embedding"])],
        "linear_embedder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", weight.shape[1]])],
        initializer=[numpy_helper.from_array(weight.astype(np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class LinearEmbedder(torch.nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


def test_arcface_onnx_and_torchscript_embed_like_the_hand_computation(tmp_path):
    needs("onnxruntime")
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((3 * 112 * 112, 8)).astype(np.float32) * 0.01
    faces = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
    # by hand: RGB, (x − 127.5) / 127.5, NCHW, flattened, times W
    expected = np.stack([((f.astype(np.float64) - 127.5) / 127.5).transpose(2, 0, 1).reshape(-1) @ weight for f in faces])

    onnx_model = ArcFaceEmbedder(onnx_linear_embedder(tmp_path / "arcface.onnx", weight))
    np.testing.assert_allclose(onnx_model(faces), expected, rtol=1e-4, atol=1e-4)

    torch.jit.save(torch.jit.script(LinearEmbedder(torch.from_numpy(weight))), str(tmp_path / "arcface.pt"))
    script_model = ArcFaceEmbedder(tmp_path / "arcface.pt")
    np.testing.assert_allclose(script_model(faces), expected, rtol=1e-4, atol=1e-4)

    bgr = ArcFaceEmbedder(tmp_path / "arcface.pt", mean=0.0, std=255.0, bgr=True)
    expected_bgr = (faces[0][..., ::-1].astype(np.float64) / 255).transpose(2, 0, 1).reshape(-1) @ weight
    np.testing.assert_allclose(bgr(faces[:1])[0], expected_bgr, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
def random_vgg16_features(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision-layout VGG16 `features.*` weights, seeded random (He-scaled so activations stay sane)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout) in zip(VGG16_CONV_INDICES, VGG16_CONVS):
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * math.sqrt(2 / (9 * cin))
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.01
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def lpips_metric(tmp_path_factory):
    needs("lpips")
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    state = random_vgg16_features(path)
    metric = LpipsVgg.from_backbone(path, size=64)
    metric.state = state
    metric.path = path
    return metric


def test_lpips_backbone_holds_the_supplied_weights(lpips_metric):
    loaded = {f"features.{name.split('.', 1)[1]}": p for name, p in lpips_metric.model.net.state_dict().items()}
    assert loaded.keys() == lpips_metric.state.keys()
    for name, tensor in lpips_metric.state.items():
        assert torch.equal(loaded[name], tensor), name


def test_lpips_of_identical_images_is_zero(lpips_metric):
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert lpips_metric(image, image.copy()) == 0.0


def test_lpips_of_different_images_matches_the_formula_by_hand(lpips_metric):
    rng = np.random.default_rng(3)
    a, b = (Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2))
    model = lpips_metric.model

    net = copy.deepcopy(model.net).double()

    def features(image):
        x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].double() / 127.5 - 1
        x = (x - model.scaling_layer.shift.double()) / model.scaling_layer.scale.double()
        out = []
        for block in (net.slice1, net.slice2, net.slice3, net.slice4, net.slice5):
            x = block(x)
            out.append(x)
        return out

    total = 0.0
    with torch.no_grad():
        for fa, fb, lin in zip(features(a), features(b), model.lins):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = lin.model[-1].weight.double().flatten()  # the 1×1 conv, no bias
            total += float(((na - nb) ** 2 * w[None, :, None, None]).sum(1).mean())
    assert total > 0
    assert lpips_metric(a, b) == pytest.approx(total, rel=1e-4)


def test_lpips_backbone_file_missing_a_layer_is_named(tmp_path, lpips_metric):
    from pidiff.evaluate import load_vgg_backbone

    state = dict(lpips_metric.state)
    del state["features.28.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth: missing features.28.weight"):
        load_vgg_backbone(lpips_metric.model, tmp_path / "partial.pth")


# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tiny_models, tmp_path_factory):
    """A tiny random CLIPModel folder with SD's (real-vocabulary) tokenizer and a 32² processor."""
    import shutil

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=16),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    for item in (tiny_models["sd"] / "tokenizer").iterdir():
        shutil.copy(item, folder / item.name)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_t_is_the_raw_cosine_of_image_and_text_features(tiny_clip):
    from transformers import CLIPModel, CLIPTokenizer

    score = ClipTextScore(tiny_clip)
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    text = "a photo of person on the beach"

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    with torch.no_grad():  # by hand: /255, CLIP mean/std, vision tower → projection; text tower → projection
        pixels = (torch.from_numpy(np.asarray(image)).float() / 255 - mean) / std
        image_features = model.visual_projection(model.vision_model(pixel_values=pixels.permute(2, 0, 1)[None]).pooler_output)
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        text_features = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    expected = float((F.normalize(image_features, dim=-1) * F.normalize(text_features, dim=-1)).sum())
    assert score(image, text) == pytest.approx(expected, abs=1e-5)
    assert -1 <= expected <= 1


def test_clip_folder_without_a_model_is_a_named_error(tmp_path):
    with pytest.raises(MissingModelError, match="CLIP ViT-B/16 folder"):
        ClipTextScore(tmp_path)


# ----------------------------------------------------------------------------------------------
def test_paper12_protocol_ships_twelve_prompts_with_the_placeholder():
    prompts = read_prompts("paper12")
    assert len(prompts) == 12 and len(set(prompts)) == 12
    assert all("S*" in p for p in prompts)


def test_samples_take_prompts_from_the_sidecar_or_the_file_number(tmp_path):
    prompts = ["a photo of S*", "a photo of S* on the beach"]
    ann, bob = tmp_path / "run-ann", tmp_path / "bob"
    ann.mkdir(), bob.mkdir()
    for folder, name in ((ann, "000.png"), (ann, "001.png"), (bob, "01_0.png")):
        Image.new("RGB", (8, 8)).save(folder / name)
    write_sidecar(ann / "sample.json", {"placeholder": "S*"}, 0, {"identity": "ann"},
                  [{"file": "000.png", "prompt": prompts[1]}, {"file": "001.png", "prompt": prompts[0]}])
    samples = collect_samples(tmp_path, prompts)
    assert [(s.identity, s.path.name, s.prompt) for s in samples] == [
        ("bob", "01_0.png", prompts[1]), ("ann", "000.png", prompts[1]), ("ann", "001.png", prompts[0])]
    Image.new("RGB", (8, 8)).save(bob / "loose.png")
    with pytest.raises(ValueError, match="loose.png: no prompt"):
        collect_samples(tmp_path, prompts)


def test_summary_means_per_identity_and_overall_over_identities():
    samples = [SampleImage("a", Path("1"), "p", scores={"id": 0.2, "clip_t": 0.3}, face_found=True),
               SampleImage("a", Path("2"), "p", scores={"clip_t": 0.1}, face_found=False),
               SampleImage("b", Path("3"), "p", scores={"id": 0.6, "clip_t": 0.2}, face_found=True),
               SampleImage("b", Path("4"), "p", scores={"id": 0.4, "clip_t": 0.4}, face_found=True)]
    rows = summarise(samples, ["id", "clip_t"])
    assert [r["identity"] for r in rows] == ["a", "b", "overall"]
    assert rows[0]["id"] == pytest.approx(0.2) and rows[0]["faces"] == 1 and rows[0]["clip_t"] == pytest.approx(0.2)
    assert rows[1]["id"] == pytest.approx(0.5) and rows[1]["clip_t"] == pytest.approx(0.3)
    assert rows[2]["id"] == pytest.approx(0.35) and rows[2]["clip_t"] == pytest.approx(0.25)
    assert rows[2]["images"] == 4 and rows[2]["faces"] == 3


def sample_run(tiny_models, tmp_path, identity: str, out: Path, prompts: list[str], *options: str) -> Path:
    """A real `pidiff sample` output (tiny random model, one DDIM step, 64×64 images) in `out`."""
    from diffusers import UNet2DConditionModel

    from pidiff.model import PIDiffAdapter, save_weights

    weights = tmp_path / f"{identity}.safetensors"
    if not weights.exists():
        unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
        save_weights(weights, PIDiffAdapter(unet), 0, {"identity": identity, "placeholder": "S*", "default_lambda": 0.4})
    face = tmp_path / "face.npy"
    np.save(face, np.random.default_rng(0).standard_normal((18, 512)).astype(np.float32))
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--wplus", str(face),
            "--steps", "1", "--latent-size", "8", "--device", "cpu", "--out", str(out), *options]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread costs more than it saves
    try:
        assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(previous)
    return out


def test_a_sample_folder_gives_exactly_the_images_its_sidecar_lists(tiny_models, tmp_path):
    prompts = read_prompts("paper12")
    run = tmp_path / "samples" / "run-1"
    run.mkdir(parents=True)
    # Left by an earlier run into the same folder: not this run's samples, whatever their names say.
    Image.new("RGB", (8, 8)).save(run / "002.png")
    Image.new("RGB", (8, 8)).save(run / "05_0.png")
    sample_run(tiny_models, tmp_path, "ann", run, [prompts[3], prompts[0]])
    assert (run / "grid.png").is_file()

    samples = collect_samples(tmp_path / "samples", prompts)
    assert [(s.identity, s.path.name, s.prompt, s.lam) for s in samples] == [
        ("ann", "000.png", prompts[3], 0.4), ("ann", "001.png", prompts[0], 0.4)]
    assert collect_samples(run, prompts) == samples  # SAMPLES itself as the one identity's folder

    (run / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"001\.png: listed in .*sample\.json but not there"):
        collect_samples(tmp_path / "samples", prompts)


def test_summary_splits_an_identity_by_lambda_when_its_images_hold_several():
    def image(identity, lam, clip_t):
        return SampleImage(identity, Path(f"{identity}-{lam}-{clip_t}"), "p", lam=lam, scores={"clip_t": clip_t})

    samples = [image("a", 0.0, 0.1), image("a", 0.0, 0.3), image("a", 1.0, 0.5),
               image("b", 1.0, 0.7), image("c", None, 0.9)]
    rows = summarise(samples, ["clip_t"])
    table = [(r["identity"], r["lambda"], r["images"], round(r["clip_t"], 6)) for r in rows]
    assert table == [("a", 0.0, 2, 0.2), ("a", 1.0, 1, 0.5), ("b", 1.0, 1, 0.7), ("c", None, 1, 0.9),
                     ("overall", None, 1, 0.9), ("overall", 0.0, 2, 0.2), ("overall", 1.0, 2, 0.6)]
    # One λ throughout (a plain run): one row per identity and one overall row, as without λ.
    plain = summarise([image("a", 0.4, 0.2), image("b", 0.4, 0.4)], ["clip_t"])
    assert [(r["identity"], r["lambda"]) for r in plain] == [("a", 0.4), ("b", 0.4), ("overall", 0.4)]


def test_eval_of_a_lambda_sweep_reports_each_lambda(tiny_models, tiny_clip, tmp_path, capsys):
    prompts = read_prompts("paper12")
    samples = tmp_path / "samples"
    sample_run(tiny_models, tmp_path, "ann", samples / "ann", [prompts[0]], "--num-images", "2",
               "--lambda-sweep", "0,0.5")
    (tmp_path / "refs" / "ann").mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "refs" / "ann" / "ref.png")
    capsys.readouterr()

    assert cli.main(["eval", "--samples", str(samples), "--references", str(tmp_path / "refs"), "--prompts", "paper12",
                     "--partial", "--metrics", "clip_t", "--clip", str(tiny_clip), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| identity | λ | images | CLIP-T ↑ |" in printed and "per λ" in printed
    images = list(csv.DictReader(open(tmp_path / "out" / "eval_images.csv")))
    assert sorted((Path(r["file"]).name, r["lambda"]) for r in images) == [
        ("000_lambda0.5.png", "0.5"), ("000_lambda0.png", "0"), ("001_lambda0.5.png", "0.5"), ("001_lambda0.png", "0")]
    summary = list(csv.DictReader(open(tmp_path / "out" / "eval_summary.csv")))
    assert [(r["identity"], r["lambda"], r["images"]) for r in summary] == [
        ("ann", "0", "2"), ("ann", "0.5", "2"), ("overall", "0", "2"), ("overall", "0.5", "2")]
    for row in summary[:2]:
        expected = np.mean([float(r["clip_t"]) for r in images if r["lambda"] == row["lambda"]])
        assert float(row["clip_t"]) == pytest.approx(expected, abs=1e-6)


def test_eval_of_references_without_a_face_is_a_one_line_error(tmp_path, capsys):
    needs("facenet_pytorch")
    samples, references = tmp_path / "samples" / "ann", tmp_path / "refs" / "ann"
    samples.mkdir(parents=True), references.mkdir(parents=True)
    Image.new("RGB", (96, 96), (90, 120, 150)).save(samples / "00_0.png")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(references / "blank.png")
    arcface = tmp_path / "arcface.pt"
    torch.jit.save(torch.jit.script(LinearEmbedder(torch.zeros(3 * 112 * 112, 4))), str(arcface))

    assert cli.main(["eval", "--samples", str(tmp_path / "samples"), "--references", str(tmp_path / "refs"),
                     "--prompts", "paper12", "--partial", "--metrics", "id", "--arcface", str(arcface)]) == 2
    error = capsys.readouterr().err
    assert error == "pidiff eval: identity ann: no face found in its reference image (blank.png)\n"


def test_eval_of_a_truncated_sample_or_reference_image_is_a_one_line_error(tiny_clip, tmp_path, capsys):
    prompts = read_prompts("paper12")
    samples, references = tmp_path / "samples" / "ann", tmp_path / "refs" / "ann"
    samples.mkdir(parents=True), references.mkdir(parents=True)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    noise.save(samples / "000.png")
    noise.save(references / "ref.png")
    write_sidecar(samples / "sample.json", {"placeholder": "S*"}, 0, {"identity": "ann"},
                  [{"file": "000.png", "prompt": prompts[0], "lambda": 0.4}])
    argv = ["eval", "--samples", str(tmp_path / "samples"), "--references", str(tmp_path / "refs"), "--prompts", "paper12",
            "--partial", "--metrics", "clip_t", "--clip", str(tiny_clip), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    capsys.readouterr()

    for broken in (samples / "000.png", references / "ref.png"):  # a PNG cut short: PIL fails only on decoding
        whole = broken.read_bytes()
        broken.write_bytes(whole[: len(whole) // 2])
        assert cli.main(argv) == 2
        error = capsys.readouterr().err  # after transformers' progress bar, loading the CLIP model
        assert error.splitlines()[-1].startswith(f"pidiff eval: {broken}: not a readable image (")
        assert "Traceback" not in error, error
        broken.write_bytes(whole)


# ----------------------------------------------------------------------------------------------
def test_eval_without_models_names_each_model_to_supply(tmp_path, capsys):
    (tmp_path / "s" / "ann").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "s" / "ann" / "00_0.png")
    assert cli.main(["eval", "--samples", str(tmp_path / "s"), "--references", str(tmp_path / "r"),
                     "--prompts", "paper12"]) == 2
    error = capsys.readouterr().err
    assert "--arcface" in error and "ArcFace" in error
    assert "--lpips-vgg" in error and "VGG16" in error
    assert "--clip" in error and "CLIP ViT-B/16" in error


def test_missing_model_files_are_named(tmp_path):
    with pytest.raises(MissingModelError, match="arcface.onnx: not found"):
        ArcFaceEmbedder(tmp_path / "arcface.onnx")
    with pytest.raises(MissingModelError, match="vgg16.pth: not found"):
        LpipsVgg.from_backbone(tmp_path / "vgg16.pth")


def dlib_descriptor() -> DlibDescriptor:
    needs("dlib")
    return DlibDescriptor(cached_file(MODELS / "dlib_face_recognition_resnet_model_v1.dat"))


def test_dlib_fallback_without_model_files_names_them(tmp_path):
    needs("dlib")
    with pytest.raises(MissingModelError, match="dlib_face_recognition_resnet_model_v1.dat: not found"):
        DlibDescriptor(tmp_path / "dlib_face_recognition_resnet_model_v1.dat")


def test_dlib_descriptor_tells_the_sample_people_apart():
    """dlib's own rule: descriptors of one person lie within 0.6 (Euclidean) of each other."""
    describe = dlib_descriptor().describe
    obama = [describe(photo(name, size=640)) for name in ("obama.jpg", "obama2.jpg", "obama3.jpg")]
    biden = describe(Image.open(cached_file(PHOTOS.parent / "biden" / "biden.jpg")))
    assert all(v is not None and v.shape == (128,) for v in obama + [biden])
    same = [np.linalg.norm(a - b) for i, a in enumerate(obama) for b in obama[i + 1:]]
    assert max(same) < 0.6 and min(np.linalg.norm(v - biden) for v in obama) > 0.6, (same, biden)
    assert describe(Image.new("RGB", (160, 160), (90, 120, 150))) is None  # no face


def test_eval_command_scores_id_with_the_dlib_fallback(tmp_path, capsys):
    descriptor = dlib_descriptor()
    samples, references = tmp_path / "samples" / "obama", tmp_path / "refs" / "obama"
    samples.mkdir(parents=True), references.mkdir(parents=True)
    photo("obama2.jpg", size=640).save(samples / "00_0.png")
    photo("obama.jpg", size=640).save(references / "obama.png")

    assert cli.main(["eval", "--samples", str(tmp_path / "samples"), "--references", str(tmp_path / "refs"),
                     "--prompts", "paper12", "--partial", "--metrics", "id", "--dlib-descriptor",
                     str(MODELS / "dlib_face_recognition_resnet_model_v1.dat"), "--out", str(tmp_path / "out")]) == 0
    assert "ID (dlib)" in capsys.readouterr().out
    row = next(csv.DictReader(open(tmp_path / "out" / "eval_images.csv")))
    expected = cosine(descriptor.describe(Image.open(samples / "00_0.png")),
                      descriptor.describe(Image.open(references / "obama.png")))
    assert row["face_found"] == "1" and float(row["id"]) == pytest.approx(expected, abs=1e-6)  # the CSV keeps 6 decimals
    assert expected > 0.9


def test_eval_command_scores_a_real_face_with_every_metric(tmp_path, tiny_clip, lpips_metric, capsys):
    needs("facenet_pytorch"), needs("onnxruntime")
    generated, reference = photo("obama2.jpg"), photo("obama.jpg")
    samples, references = tmp_path / "samples" / "obama", tmp_path / "refs" / "obama"
    samples.mkdir(parents=True), references.mkdir(parents=True)
    generated.save(samples / "01_0.png")
    Image.new("RGB", (96, 96), (90, 120, 150)).save(samples / "00_0.png")  # no face in it
    reference.save(references / "obama.png")
    weight = np.random.default_rng(5).standard_normal((3 * 112 * 112, 16)).astype(np.float32) * 0.01
    arcface = onnx_linear_embedder(tmp_path / "arcface.onnx", weight)

    assert cli.main(["eval", "--samples", str(tmp_path / "samples"), "--references", str(tmp_path / "refs"),
                     "--prompts", "paper12", "--partial", "--arcface", str(arcface), "--lpips-vgg", str(lpips_metric.path),
                     "--lpips-size", "64", "--clip", str(tiny_clip), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| identity | images | faces | face rate | ID ↑ | LPIPS ↓ | CLIP-T ↑ |" in printed
    assert "| method | identities | images | face rate | ID ↑ | LPIPS ↓ | CLIP-T ↑ |" in printed
    assert "a generated image without a detected face scores 0" in printed and "placeholder -> 'person'" in printed

    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(tmp_path / "out" / "eval_images.csv"))}
    # by hand, from the pieces tested above
    aligner = MtcnnAligner()
    embed = ArcFaceEmbedder(arcface)
    expected_id = cosine(embed([aligner.align(Image.open(samples / "01_0.png"))])[0],
                         embed([aligner.align(Image.open(references / "obama.png"))])[0])
    clip_score = ClipTextScore(tiny_clip)
    prompts = read_prompts("paper12")
    assert rows["01_0.png"]["face_found"] == "1" and float(rows["01_0.png"]["id"]) == pytest.approx(expected_id, abs=1e-5)
    # the paper's protocol: a generation without a face is a failure, scored 0, not left out
    assert rows["00_0.png"]["face_found"] == "0" and float(rows["00_0.png"]["id"]) == 0.0
    assert rows["00_0.png"]["clip_text"] == prompts[0].replace("S*", "person")
    assert float(rows["01_0.png"]["lpips"]) == pytest.approx(
        lpips_metric(Image.open(samples / "01_0.png"), Image.open(references / "obama.png")), abs=1e-5)
    assert float(rows["00_0.png"]["clip_t"]) == pytest.approx(
        clip_score(Image.open(samples / "00_0.png"), prompts[0].replace("S*", "person")), abs=1e-5)

    summary = list(csv.DictReader(open(tmp_path / "out" / "eval_summary.csv")))
    assert [r["identity"] for r in summary] == ["obama", "overall"]
    assert summary[1]["faces"] == "1" and float(summary[1]["id"]) == pytest.approx(expected_id / 2, abs=1e-5)
    assert float(summary[1]["face_rate"]) == 0.5
    assert (tmp_path / "out" / "eval.md").read_text().startswith("## Methods (Table 1)")
    assert (tmp_path / "out" / "eval_id_vs_clip.png").is_file()
