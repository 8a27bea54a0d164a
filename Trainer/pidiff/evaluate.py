"""`pidiff eval`: the paper's metrics (§3.2, §3.3.1) for generated images, one or several methods.

    pidiff eval --method PIDiff=samples/ --method DreamBooth=db/ --refs REFS --prompts paper12 \\
        --arcface w600k_r50.onnx --lpips-vgg vgg16-397923af.pth --clip clip-vit-base-patch16/

The paper's protocol by default, and stated in the output (eval.md, eval_protocol.json):
- ID: cosine of ArcFace embeddings after MTCNN alignment, each generated face vs the identity's
  reference image (`--id-reference single`); `most-similar` takes the best of the identity's
  reference images (the paper's choice for methods that take no reference), `mean` their mean. A
  generated image without a detected face scores 0 (a failure, not a skipped sample); the face
  detection rate is its own column. Faces: facenet-pytorch's MTCNN (weights in its wheel), the 5
  landmarks of the most probable face, a similarity transform onto insightface's 112×112 template.
  The ArcFace-compatible model is the user's: ONNX or TorchScript, [N, 3, 112, 112] RGB,
  (x − 127.5) / 127.5 (`--arcface-mean/-std/-bgr` otherwise), output [N, D]. Fallback
  `--dlib-descriptor` (column "ID (dlib)", not comparable with ArcFace numbers).
- LPIPS (VGG, v0.1), generated vs the same reference (`single`), the mean over the references
  (`mean`) or the closest one (`most-similar`), both at --lpips-size² (256); VGG16 weights from
  --lpips-vgg (lpips would download them).
- CLIP-T: raw cosine (≈0.2–0.35, not ×100) of CLIP ViT-B/16 image and text features (--clip, a
  local transformers folder); the text is the prompt with the placeholder replaced by
  --class-text ("person"), recorded per image.

Layout: each method's folder holds SAMPLES/<identity>/ (one `pidiff sample` output with its
sample.json, or images named NN_*.png, NN = the 0-based prompt line), or is one identity's folder
itself. Every (method, identity) must have images for every prompt (--partial allows fewer), and
every method the same identities. References: REFS/<identity>/ images; with REFS/refs.json
(`pidiff-data refs`) the identity of each file, which is the reference (role "reference", the
first listed when several) and the labels (race, age, gender) are read from it.

Outputs in --out (default: the one method's folder, else required): eval_table.md/.csv (Table 1:
one row per method, per λ when a method's images hold several), eval_summary.csv (per method and
identity), eval_images.csv (per image), eval.md (protocol, table, per-identity rows),
eval_protocol.json, eval_id_vs_clip.png (ID against CLIP-T, one point per method) and, when the
references carry labels, eval_demographics.csv/.png (metrics per race × age cell, cf. Fig. 7).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pidiff.terminal import shown

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SIDECAR_NAME = "sample.json"
DEFAULT_PLACEHOLDER = "S*"

# insightface's ArcFace 112×112 template: left eye, right eye, nose tip, mouth left, mouth right
# (the order of MTCNN's landmarks).
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)

HOW_TO_SUPPLY = {
    "id": "ID needs an ArcFace-compatible face-recognition model: --arcface PATH.onnx (onnxruntime) or PATH.pt "
          "(TorchScript), input [N,3,112,112] RGB, output [N,D]; e.g. insightface's w600k_r50.onnx. "
          "Fallback: --dlib-descriptor dlib_face_recognition_resnet_model_v1.dat (needs the Python dlib binding)",
    "lpips": "LPIPS needs VGG16 backbone weights: --lpips-vgg PATH, torchvision's vgg16-397923af.pth or a state dict "
             "with the 26 features.* tensors (the lpips linear layers ship in its wheel)",
    "clip_t": "CLIP-T needs a local CLIP ViT-B/16 folder: --clip DIR with config.json, the weights and the processor "
              "files (tokenizer + preprocessor_config.json), e.g. a saved openai/clip-vit-base-patch16",
}


class MissingModelError(RuntimeError):
    """A metric was asked for without the model it needs."""


def cosine(a, b) -> float:
    """Cosine similarity of two vectors."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64).flatten()
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64).flatten()
    return float(F.cosine_similarity(a, b, dim=0, eps=1e-12))


# ----------------------------------------------------------------------------------------------
# Face alignment: MTCNN landmarks → ArcFace template.
def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2×3 least-squares similarity (rotation, uniform scale, translation) mapping source points
    onto target points (Umeyama 1991, as skimage's SimilarityTransform that insightface uses)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    s, t = source - mean_s, target - mean_t
    covariance = t.T @ s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (singular * d).sum() / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_t - scale * rotation @ mean_s
    return matrix


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """cv2.warpAffine(image, matrix, (size, size)) semantics: bilinear, pixel centres at integer
    coordinates, zeros outside. image: H×W×3 uint8 → size×size×3 uint8."""
    height, width = image.shape[:2]
    forward = np.vstack([matrix, [0, 0, 1]])
    inverse = np.linalg.inv(forward)[:2]
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    points = np.stack([xs, ys, np.ones_like(xs)], -1) @ inverse.T  # output pixel → input position
    grid = torch.from_numpy(np.stack([points[..., 0] * 2 / (width - 1) - 1, points[..., 1] * 2 / (height - 1) - 1], -1))
    source = torch.from_numpy(np.ascontiguousarray(image).copy()).permute(2, 0, 1)[None].double()
    out = F.grid_sample(source, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class MtcnnAligner:
    """The most probable face of an image, aligned to 112×112 for ArcFace (None when no face)."""

    def __init__(self, device: str | torch.device = "cpu"):
        try:
            from facenet_pytorch import MTCNN
        except ModuleNotFoundError as error:
            raise MissingModelError("ID needs facenet-pytorch for MTCNN (pip install --no-deps facenet-pytorch; "
                                    "its MTCNN weights ship in the wheel)") from error
        self.mtcnn = MTCNN(device=torch.device(device), keep_all=True, select_largest=False)

    def landmarks(self, image) -> np.ndarray | None:
        """5×2 landmarks of the most probable face, or None."""
        boxes, probs, points = self.mtcnn.detect(image.convert("RGB"), landmarks=True)
        if boxes is None or len(boxes) == 0:
            return None
        return np.asarray(points[int(np.argmax(probs))], np.float64)

    def align(self, image, size: int = 112) -> np.ndarray | None:
        points = self.landmarks(image)
        if points is None:
            return None
        matrix = similarity_transform(points, ARCFACE_TEMPLATE_112 * (size / 112))
        return warp_affine(np.asarray(image.convert("RGB")), matrix, size)


# ----------------------------------------------------------------------------------------------
# Face embedders.
class ArcFaceEmbedder:
    """An ArcFace-compatible model: aligned 112×112 RGB uint8 faces → embeddings [N, D]."""

    def __init__(self, path: str | Path, mean: float = 127.5, std: float = 127.5, bgr: bool = False):
        path = Path(path)
        if not path.is_file():
            raise MissingModelError(f"ArcFace model {path}: not found. {HOW_TO_SUPPLY['id']}")
        self.path, self.mean, self.std, self.bgr = path, mean, std, bgr
        if path.suffix.lower() == ".onnx":
            try:
                import onnxruntime
            except ModuleNotFoundError as error:
                raise MissingModelError(f"ArcFace model {path}: ONNX models need onnxruntime (pip install onnxruntime)") from error
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.module = None
        else:
            try:
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
            except RuntimeError as error:
                raise ValueError(f"ArcFace model {path}: not a TorchScript file ({error.__class__.__name__}); "
                                 "give an .onnx or a torch.jit.save'd model") from error
            self.session = None

    def preprocess(self, faces: list[np.ndarray]) -> np.ndarray:
        x = np.stack(faces).astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(((x - self.mean) / self.std).transpose(0, 3, 1, 2))

    def __call__(self, faces: list[np.ndarray]) -> np.ndarray:
        x = self.preprocess(faces)
        if self.session is not None:
            out = self.session.run(None, {self.input_name: x})[0]
        else:
            with torch.no_grad():
                out = self.module(torch.from_numpy(x))
            out = (out[0] if isinstance(out, (tuple, list)) else out).float().numpy()
        out = np.asarray(out, np.float64).reshape(len(faces), -1)
        return out


class DlibDescriptor:
    """dlib's 128-D face descriptor with dlib's own HOG detector and 5-point chip alignment."""

    def __init__(self, descriptor_path: str | Path, landmarks_path: str | Path | None = None):
        try:
            import dlib
        except ModuleNotFoundError as error:
            raise MissingModelError(
                "--dlib-descriptor needs the Python dlib binding, which is not installed here: "
                "pip install dlib-bin (a prebuilt wheel; scripts/setup.sh installs it) or pip install dlib "
                "(builds from source); or use --arcface") from error
        descriptor_path = Path(descriptor_path)
        landmarks_path = Path(landmarks_path) if landmarks_path else descriptor_path.with_name("shape_predictor_5_face_landmarks.dat")
        for path in (descriptor_path, landmarks_path):
            if not path.is_file():
                raise MissingModelError(f"dlib model {path}: not found (face_recognition_models ships both "
                                        "dlib_face_recognition_resnet_model_v1.dat and shape_predictor_5_face_landmarks.dat)")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(landmarks_path))
        self.model = dlib.face_recognition_model_v1(str(descriptor_path))

    def describe(self, image) -> np.ndarray | None:
        pixels = np.asarray(image.convert("RGB"))
        detections, scores, _ = self.detector.run(pixels, 1)
        if not detections:
            return None
        best = detections[int(np.argmax(scores))]
        return np.asarray(self.model.compute_face_descriptor(pixels, self.predictor(pixels, best)), np.float64)


ARCFACE_ID_COLUMN = "ID"
DLIB_ID_COLUMN = "ID (dlib)"  # the --dlib-descriptor fallback: not comparable with ArcFace numbers


def id_column(args) -> str:
    """How the ID metric is labelled for these metric options: ArcFace when --arcface is given (it
    wins over --dlib-descriptor), else the dlib fallback. `pidiff ablate` labels its table the same."""
    return ARCFACE_ID_COLUMN if args.arcface else DLIB_ID_COLUMN


class IdentityScorer:
    """Face embedding of an image (None when no face), by MTCNN + ArcFace or by dlib."""

    def __init__(self, arcface: ArcFaceEmbedder | None = None, dlib: DlibDescriptor | None = None,
                 aligner: MtcnnAligner | None = None):
        if (arcface is None) == (dlib is None):
            raise ValueError("IdentityScorer takes an ArcFace model or a dlib descriptor, one of them")
        self.arcface, self.dlib = arcface, dlib
        self.aligner = aligner if aligner is not None or arcface is None else MtcnnAligner()
        self.column = ARCFACE_ID_COLUMN if arcface is not None else DLIB_ID_COLUMN

    def embed(self, image) -> np.ndarray | None:
        if self.dlib is not None:
            return self.dlib.describe(image)
        face = self.aligner.align(image)
        return None if face is None else self.arcface([face])[0]


# ----------------------------------------------------------------------------------------------
# LPIPS and CLIP-T.
VGG_FEATURE_LAYERS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # the conv layers of vgg16.features


def load_vgg_backbone(lpips_model, path: str | Path) -> None:
    """Load torchvision VGG16 `features.*` weights into an lpips.LPIPS(net='vgg') backbone."""
    path = Path(path)
    if not path.is_file():
        raise MissingModelError(f"VGG16 weights {path}: not found. {HOW_TO_SUPPLY['lpips']}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    features = {name.removeprefix("features."): t for name, t in state.items() if name.startswith("features.")}
    if not features:
        features = {name: t for name, t in state.items() if name.split(".")[0].isdigit()}
    targets = {}
    for slice_name, module in lpips_model.net.named_children():
        for index, layer in module.named_children():
            for param_name, param in layer.named_parameters(recurse=False):
                targets[f"{index}.{param_name}"] = param
    missing = sorted(set(targets) - set(features), key=lambda n: (int(n.split(".")[0]), n))
    if missing:
        raise ValueError(f"VGG16 weights {path}: missing {', '.join('features.' + m for m in missing[:4])}"
                         f"{' …' if len(missing) > 4 else ''} (expected torchvision's vgg16 state dict)")
    with torch.no_grad():
        for name, param in targets.items():
            if features[name].shape != param.shape:
                raise ValueError(f"VGG16 weights {path}: features.{name} has shape {tuple(features[name].shape)}, "
                                 f"VGG16 needs {tuple(param.shape)}")
            param.copy_(features[name])


class LpipsVgg:
    """LPIPS (v0.1, VGG) distance between two PIL images, both resized to `size`."""

    def __init__(self, model, size: int = 256, device: str | torch.device = "cpu"):
        self.model, self.size, self.device = model.to(device).eval(), size, torch.device(device)

    @classmethod
    def from_backbone(cls, vgg_path: str | Path, size: int = 256, device: str | torch.device = "cpu") -> "LpipsVgg":
        if not Path(vgg_path).is_file():
            raise MissingModelError(f"VGG16 weights {vgg_path}: not found. {HOW_TO_SUPPLY['lpips']}")
        try:
            import lpips
        except ModuleNotFoundError as error:
            raise MissingModelError("LPIPS needs the lpips package (pip install lpips)") from error
        # pnet_rand: build VGG16 without torchvision's download; its weights come from vgg_path.
        model = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        load_vgg_backbone(model, vgg_path)
        return cls(model, size, device)

    def to_tensor(self, image) -> torch.Tensor:
        from PIL import Image

        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float()
        return (x / 127.5 - 1).to(self.device)  # lpips takes [-1, 1]

    @torch.no_grad()
    def __call__(self, a, b) -> float:
        return float(self.model(self.to_tensor(a), self.to_tensor(b)).mean())


class ClipTextScore:
    """CLIP-T: raw cosine of CLIP image features and text features (not ×100)."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MissingModelError(f"CLIP folder {folder}: no config.json. {HOW_TO_SUPPLY['clip_t']}")
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(folder).to(self.device).eval()
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(folder)
            self.image_processor = CLIPImageProcessor.from_pretrained(folder)
        except (OSError, TypeError, ValueError) as error:
            raise MissingModelError(f"CLIP folder {folder}: tokenizer or preprocessor_config.json missing "
                                    f"({error}). {HOW_TO_SUPPLY['clip_t']}") from error
        vision = self.model.config.vision_config
        self.description = f"{folder.name} (patch {vision.patch_size}, width {vision.hidden_size})"

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers ≥ 5 returns a model output whose pooler_output is the projected feature
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return self._features(self.model.get_image_features(pixel_values=pixels.to(self.device))).float()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.model.config.text_config.max_position_embeddings,
                                return_tensors="pt").to(self.device)
        return self._features(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                           attention_mask=tokens["attention_mask"])).float()

    def __call__(self, image, text: str) -> float:
        return float(F.cosine_similarity(self.image_features([image]), self.text_features([text]), dim=-1)[0])


# ----------------------------------------------------------------------------------------------
# Samples, references, prompts.
PACKAGED_PROMPTS = Path(__file__).parent / "prompts"
ID_REFERENCE_CHOICES = ("single", "most-similar", "mean")
REFS_INDEX_NAME = "refs.json"


def prompts_path(path: str | Path) -> Path:
    """A prompts file, or a bare name such as "paper12" for a file shipped in pidiff/prompts/."""
    if not Path(path).exists() and (PACKAGED_PROMPTS / f"{path}.txt").is_file():
        return PACKAGED_PROMPTS / f"{path}.txt"
    return Path(path)


def read_prompts(path: str | Path) -> list[str]:
    """Prompt lines (blank lines and '#' comments skipped). A bare name such as "paper12" is a
    prompts file shipped in pidiff/prompts/."""
    path = prompts_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path}: not found (give a file, one prompt a line, or paper12)")
    lines = [line.strip() for line in path.read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path}: no prompts")
    return prompts


@dataclass
class SampleImage:
    identity: str
    path: Path
    prompt: str  # with the placeholder, as in the prompts file
    placeholder: str = DEFAULT_PLACEHOLDER
    lam: float | None = None  # λ the image was made with, when its sidecar records it
    scores: dict[str, float] = field(default_factory=dict)
    face_found: bool | None = None
    method: str = ""
    reference: str = ""   # the reference file(s) ID and LPIPS compared with
    clip_text: str = ""   # the text CLIP-T compared with


def open_rgb(path: Path):
    """The image at `path` as PIL RGB, fully read; a file PIL cannot read (cut short, corrupt, not an
    image) is a ValueError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError) as error:  # UnidentifiedImageError, "image file is truncated", a broken PNG chunk
        raise ValueError(f"{path}: not a readable image ({error})") from error


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sample_folders(samples_dir: Path) -> list[Path]:
    """SAMPLES itself when it holds images or a sidecar (one identity), else its subfolders."""
    if images_in(samples_dir) or (samples_dir / SIDECAR_NAME).is_file():
        return [samples_dir]
    return sorted(p for p in samples_dir.iterdir() if p.is_dir())


def samples_from_sidecar(folder: Path, prompts: list[str]) -> list[SampleImage]:
    """A `pidiff sample` output: exactly the images its sidecar lists, with their prompts and λ.

    Other images in the folder are not this run's samples: grid.png (all of them in one picture)
    or files an earlier run into the same folder left, which would be scored under wrong prompts.
    """
    from pidiff.style import read_sidecar

    sidecar = folder / SIDECAR_NAME
    try:
        record = read_sidecar(sidecar)
    except json.JSONDecodeError as error:
        raise ValueError(f"{sidecar}: not readable JSON ({error})") from None
    identity = record.get("models", {}).get("identity") or folder.name
    placeholder = record.get("parameters", {}).get("placeholder", DEFAULT_PLACEHOLDER)
    samples = []
    for entry in record.get("images", []):
        path = folder / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {sidecar} but not there")
        if entry["prompt"] not in prompts:
            raise ValueError(f"{path}: its prompt {entry['prompt']!r} (from {sidecar}) is not in the prompts file")
        lam = entry.get("lambda")
        samples.append(SampleImage(identity, path, entry["prompt"], placeholder, None if lam is None else float(lam)))
    return samples


def samples_by_file_number(folder: Path, prompts: list[str]) -> list[SampleImage]:
    """Images of a folder without a sidecar: the prompt is line NN of the prompts file for `NN_*.png`."""
    samples = []
    for path in images_in(folder):
        match = re.match(r"(\d+)_", path.name)
        if not match:
            raise ValueError(f"{path}: no prompt for it: no {SIDECAR_NAME} sidecar in its folder and its name "
                             "does not start with a prompt number (NN_*.png, NN = 0-based prompt line)")
        index = int(match.group(1))
        if index >= len(prompts):
            raise ValueError(f"{path}: prompt number {index}, but the prompts file has {len(prompts)}")
        samples.append(SampleImage(folder.name, path, prompts[index]))
    return samples


def collect_samples(samples_dir: str | Path, prompts: list[str], method: str = "") -> list[SampleImage]:
    samples_dir = Path(samples_dir)
    if not samples_dir.is_dir():
        raise FileNotFoundError(f"samples folder {samples_dir}: not found")
    samples = []
    for folder in sample_folders(samples_dir):
        if (folder / SIDECAR_NAME).is_file():
            samples += samples_from_sidecar(folder, prompts)
        else:
            samples += samples_by_file_number(folder, prompts)
    if not samples:
        raise ValueError(f"samples folder {samples_dir}: no images")
    for sample in samples:
        sample.method = method
    return samples


def check_complete(samples: list[SampleImage], prompts: list[str], methods: dict[str, Path], prompts_name: str,
                   partial: bool = False) -> None:
    """The protocol scores every identity on every prompt: a (method, identity) without images for
    some prompts (unless `partial`), or a method without an identity the others have (always: its
    row would average over other people), is an error naming the folder."""
    identities = sorted({s.identity for s in samples})
    for method, folder in methods.items():
        mine = [s for s in samples if s.method == method]
        have = {s.identity for s in mine}
        if missing := [i for i in identities if i not in have]:
            raise ValueError(f"{folder}: method {method!r} has no images of {', '.join(map(repr, missing))} "
                             "(other methods have them); every method must cover the same identities")
        for identity in identities if not partial else []:
            images = [s for s in mine if s.identity == identity]
            covered = {s.prompt for s in images}
            absent = [i for i, p in enumerate(prompts) if p not in covered]
            if absent:
                where = images[0].path.parent
                raise ValueError(f"{where}: no images for prompts {', '.join(map(str, absent))} of {prompts_name} "
                                 f"(e.g. {prompts[absent[0]]!r}) for identity {identity!r} of method {method!r}; "
                                 "sample them (pidiff sample --prompts) or pass --partial")


@dataclass
class IdentityReferences:
    identity: str
    images: list[Path]            # every reference image of the identity
    reference: Path | None        # the identity's reference image (the single one of the protocol)
    labels: dict[str, str] = field(default_factory=dict)


def read_refs_index(references_dir: Path) -> list[dict] | None:
    """REFS/refs.json as `pidiff-data refs` writes it: {"split", "references": [{identity, role,
    file (relative to REFS), source_path, source_sha256, labels}]}; None when absent."""
    path = references_dir / REFS_INDEX_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    entries = record.get("references") if isinstance(record, dict) else record
    if not isinstance(entries, list):
        raise ValueError(f"{path}: no 'references' list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("identity"), str) or not isinstance(entry.get("file"), str):
            raise ValueError(f"{path}: entry {i} needs a string 'identity' and 'file'")
        if not (references_dir / entry["file"]).is_file():
            raise FileNotFoundError(f"{path}: entry {i} names {entry['file']}, which is not in {references_dir}")
    return entries


def collect_references(references_dir: str | Path, identities: list[str], id_reference: str = "single") -> dict[str, IdentityReferences]:
    """Each identity's reference images, which one is *the* reference, and its labels.

    With refs.json: the files it lists per identity; the reference is the first with role
    "reference" (else the first listed). Without: REFS/<identity>/ images; for `single` the folder
    must hold exactly one (which is the reference would otherwise be a guess)."""
    references_dir = Path(references_dir)
    if not references_dir.is_dir():
        raise FileNotFoundError(f"references folder {references_dir}: not found")
    index = read_refs_index(references_dir)
    found = {}
    for identity in identities:
        if index is not None:
            entries = [e for e in index if e["identity"] == identity]
            if not entries:
                raise ValueError(f"{references_dir / REFS_INDEX_NAME}: no reference of identity {identity!r}")
            images = [references_dir / e["file"] for e in entries]
            chosen = next((e for e in entries if e.get("role", "reference") == "reference"), entries[0])
            labels = {k: str(v) for k, v in (chosen.get("labels") or {}).items()}
            found[identity] = IdentityReferences(identity, images, references_dir / chosen["file"], labels)
            continue
        folder = references_dir / identity
        if not folder.is_dir() or not images_in(folder):
            raise FileNotFoundError(f"identity {identity}: no reference images in {folder}")
        images = images_in(folder)
        if id_reference == "single" and len(images) > 1:
            raise ValueError(f"{folder}: {len(images)} images and no {REFS_INDEX_NAME} saying which is the reference; "
                             "--id-reference single needs one (write REFS with pidiff-data refs), or use "
                             "--id-reference most-similar|mean")
        found[identity] = IdentityReferences(identity, images, images[0] if len(images) == 1 else None)
    return found


# ----------------------------------------------------------------------------------------------
# The evaluation.
METRIC_COLUMNS = {"id": "ID", "lpips": "LPIPS", "clip_t": "CLIP-T"}


def clip_text(prompt: str, placeholder: str, class_text: str) -> str:
    return prompt.replace(placeholder, class_text)


def evaluate(samples: list[SampleImage], references: dict, identity_scorer: IdentityScorer | None,
             lpips_metric: LpipsVgg | None, clip_metric: ClipTextScore | None, class_text: str = "person",
             id_reference: str = "single") -> None:
    """Fill each sample's scores ('id', 'lpips', 'clip_t'); a metric without its model is left out.

    `references`: identity → IdentityReferences (or a list of paths, as `mean` over them). ID: a
    generated image without a detected face scores 0."""
    if id_reference not in ID_REFERENCE_CHOICES:
        raise ValueError(f"--id-reference {id_reference!r}: choose from {', '.join(ID_REFERENCE_CHOICES)}")
    references = {identity: r if isinstance(r, IdentityReferences) else IdentityReferences(identity, list(r), None)
                  for identity, r in references.items()}
    compared: dict[str, list[Path]] = {}
    for identity, refs in references.items():
        if id_reference == "single":
            if refs.reference is None:
                raise ValueError(f"identity {identity}: no single reference image among {', '.join(p.name for p in refs.images)}")
            compared[identity] = [refs.reference]
        else:
            compared[identity] = refs.images
    reference_images = {identity: [open_rgb(p) for p in paths] for identity, paths in compared.items()}
    reference_embeddings: dict[str, list[np.ndarray]] = {}
    if identity_scorer is not None:
        for identity, images in reference_images.items():
            embeddings = [e for e in (identity_scorer.embed(im) for im in images) if e is not None]
            if not embeddings:
                which = "its reference image" if id_reference == "single" else "any reference image"
                raise ValueError(f"identity {identity}: no face found in {which} "
                                 f"({', '.join(p.name for p in compared[identity])})")
            reference_embeddings[identity] = embeddings
    for sample in samples:
        image = open_rgb(sample.path)
        refs = reference_images[sample.identity]
        sample.reference = ";".join(str(p) for p in compared[sample.identity]) if id_reference != "single" \
            else str(compared[sample.identity][0])
        if identity_scorer is not None:
            embedding = identity_scorer.embed(image)
            sample.face_found = embedding is not None
            if embedding is None:
                sample.scores["id"] = 0.0  # the paper's protocol: a generation without a face is a failure
            else:
                similarities = [cosine(embedding, r) for r in reference_embeddings[sample.identity]]
                sample.scores["id"] = float(max(similarities) if id_reference == "most-similar" else np.mean(similarities))
        if lpips_metric is not None:
            distances = [lpips_metric(image, ref) for ref in refs]
            sample.scores["lpips"] = float(min(distances) if id_reference == "most-similar" else np.mean(distances))
        if clip_metric is not None:
            sample.clip_text = clip_text(sample.prompt, sample.placeholder, class_text)
            sample.scores["clip_t"] = clip_metric(image, sample.clip_text)


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def lambda_order(lam: float | None) -> float:
    return -math.inf if lam is None else lam  # unrecorded λ first


def method_order(samples: list[SampleImage]) -> list[str]:
    return list(dict.fromkeys(s.method for s in samples))  # as given on the command line


def summary_groups(samples: list[SampleImage]) -> list[tuple[str, str, float | None, list[SampleImage]]]:
    """(method, identity, λ, images): one group per method and identity, split by λ when its images
    hold several (averaging over a λ sweep would mix pictures made to look different)."""
    groups = []
    for method in method_order(samples):
        of_method = [s for s in samples if s.method == method]
        for identity in sorted({s.identity for s in of_method}):
            mine = [s for s in of_method if s.identity == identity]
            for lam in sorted({s.lam for s in mine}, key=lambda_order):
                groups.append((method, identity, lam, [s for s in mine if s.lam == lam]))
    return groups


def _aggregate(row: dict, parts: list[dict], metrics: list[str]) -> dict:
    row["images"] = sum(r["images"] for r in parts)
    if "id" in metrics:
        row["faces"] = sum(r["faces"] for r in parts)
        row["face_rate"] = mean([r["face_rate"] for r in parts])
    for metric in metrics:
        row[metric] = mean([r[metric] for r in parts if not math.isnan(r[metric])])
    return row


def summarise(samples: list[SampleImage], metrics: list[str]) -> list[dict]:
    """One row per method and identity (mean over its images; one per λ when they hold several) and
    an 'overall' row per method and λ (mean over the identities' rows: each identity weighs the same)."""
    rows = []
    for method, identity, lam, mine in summary_groups(samples):
        row = {"method": method, "identity": identity, "lambda": lam, "images": len(mine)}
        if "id" in metrics:
            row["faces"] = sum(bool(s.face_found) for s in mine)
            row["face_rate"] = row["faces"] / len(mine)
        for metric in metrics:
            row[metric] = mean([s.scores[metric] for s in mine if metric in s.scores])
        rows.append(row)
    overall_rows = []
    for method in method_order(samples):
        of_method = [r for r in rows if r["method"] == method]
        for lam in sorted({r["lambda"] for r in of_method}, key=lambda_order):
            at_lam = [r for r in of_method if r["lambda"] == lam]
            overall_rows.append(_aggregate({"method": method, "identity": "overall", "lambda": lam}, at_lam, metrics))
    return rows + overall_rows


def demographic_rows(rows: list[dict], labels: dict[str, dict[str, str]], metrics: list[str]) -> list[dict]:
    """Per method, λ and race × age cell of the references' labels: the mean over its identities' rows."""
    cells = []
    per_identity = [r for r in rows if r["identity"] != "overall"]
    for method in dict.fromkeys(r["method"] for r in per_identity):
        for lam in sorted({r["lambda"] for r in per_identity if r["method"] == method}, key=lambda_order):
            mine = [r for r in per_identity if r["method"] == method and r["lambda"] == lam]
            keys = sorted({(labels.get(r["identity"], {}).get("race", "unknown"),
                            labels.get(r["identity"], {}).get("age", "unknown")) for r in mine})
            for race, age in keys:
                part = [r for r in mine if (labels.get(r["identity"], {}).get("race", "unknown"),
                                            labels.get(r["identity"], {}).get("age", "unknown")) == (race, age)]
                cell = _aggregate({"method": method, "lambda": lam, "race": race, "age": age,
                                   "identities": len(part)}, part, metrics)
                cells.append(cell)
    return cells


def lambda_text(lam: float | None) -> str:
    return "" if lam is None else f"{lam:g}"


def several_lambdas(rows: list[dict]) -> bool:
    return len({r["lambda"] for r in rows}) > 1


def number(value: float, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


ARROWS = {"id": " ↑", "clip_t": " ↑", "lpips": " ↓"}


def markdown_table(rows: list[dict], metrics: list[str], id_column: str = "ID") -> str:
    """Per-identity rows (and each method's overall rows); a method column when there are several."""
    names = {**METRIC_COLUMNS, "id": id_column}
    with_lambda = several_lambdas(rows)  # a λ column only when rows differ in λ
    with_method = len({r.get("method", "") for r in rows}) > 1
    header = ((["method"] if with_method else []) + ["identity"] + (["λ"] if with_lambda else []) + ["images"]
              + (["faces", "face rate"] if "id" in metrics else []) + [names[m] + ARROWS[m] for m in metrics])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [shown(row.get("method", ""))] if with_method else []  # names as they are: in the CSVs
        cells += [f"**{row['identity']}**" if row["identity"] == "overall" else shown(row["identity"])]
        cells += ([lambda_text(row["lambda"]) or "–"] if with_lambda else []) + [str(row["images"])]
        if "id" in metrics:
            cells += [str(row["faces"]), number(row["face_rate"], 3)]
        cells += [number(row[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_label(row: dict, several: bool) -> str:
    return f"{row['method']} (λ={lambda_text(row['lambda'])})" if several and row["lambda"] is not None else row["method"]


def methods_table(rows: list[dict], metrics: list[str], id_column: str = "ID") -> str:
    """Table 1: one row per method (per λ when its images hold several): the overall rows."""
    names = {**METRIC_COLUMNS, "id": id_column}
    overall = [r for r in rows if r["identity"] == "overall"]
    several = several_lambdas(overall)
    header = ["method", "identities", "images"] + (["face rate"] if "id" in metrics else []) + [names[m] + ARROWS[m] for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in overall:
        identities = sum(1 for r in rows if r["identity"] != "overall" and r["method"] == row["method"]
                         and r["lambda"] == row["lambda"])
        cells = [shown(method_label(row, several)), str(identities), str(row["images"])]
        if "id" in metrics:
            cells.append(number(row["face_rate"], 3))
        cells += [number(row[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_value(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return "" if value is None else str(value)


def write_csvs(out: Path, samples: list[SampleImage], rows: list[dict], metrics: list[str], prompts: list[str] | None = None,
               demographics: list[dict] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prompt_index = {p: i for i, p in enumerate(prompts or [])}
    with open(out / "eval_images.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "identity", "file", "prompt_index", "prompt", "clip_text", "lambda", "face_found",
                         "reference"] + metrics)
        for s in samples:
            writer.writerow([s.method, s.identity, str(s.path), prompt_index.get(s.prompt, ""), s.prompt, s.clip_text,
                             lambda_text(s.lam), "" if s.face_found is None else int(s.face_found), s.reference]
                            + [f"{s.scores[m]:.6f}" if m in s.scores else "" for m in metrics])
    with_id = ["faces", "face_rate"] if "id" in metrics else []
    with open(out / "eval_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "identity", "lambda", "images"] + with_id + metrics, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (lambda_text(v) if k == "lambda" else _csv_value(v)) for k, v in row.items()})
    overall = [r for r in rows if r["identity"] == "overall"]
    with open(out / "eval_table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "lambda", "identities", "images"] + with_id + metrics,
                                extrasaction="ignore")
        writer.writeheader()
        for row in overall:
            identities = sum(1 for r in rows if r["identity"] != "overall" and r["method"] == row["method"]
                             and r["lambda"] == row["lambda"])
            writer.writerow({**{k: (lambda_text(v) if k == "lambda" else _csv_value(v)) for k, v in row.items()},
                             "identities": identities})
    if demographics:
        with open(out / "eval_demographics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["method", "lambda", "race", "age", "identities", "images"] + with_id + metrics,
                                    extrasaction="ignore")
            writer.writeheader()
            for row in demographics:
                writer.writerow({k: (lambda_text(v) if k == "lambda" else _csv_value(v)) for k, v in row.items()})


# ----------------------------------------------------------------------------------------------
# Plots, drawn with Pillow (matplotlib is not a dependency).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _font():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else ImageFont.load_default()


def _nice_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.05, high + 0.05
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def scatter_plot(points: list[tuple[str, float, float]], path: Path, x_label: str, y_label: str, title: str,
                 size=(720, 480)) -> None:
    """One labelled point per (name, x, y), axes with their ranges, drawn with Pillow."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 30, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.text((left, 10), title, fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    finite = [(n, x, y) for n, x, y in points if math.isfinite(x) and math.isfinite(y)]
    if finite:
        x0, x1 = _nice_range([x for _, x, _ in finite])
        y0, y1 = _nice_range([y for _, _, y in finite])
        for i in range(5):  # ticks
            fx, fy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
            px = left + (width - left - right) * i / 4
            py = height - bottom - (height - top - bottom) * i / 4
            draw.line([(px, height - bottom), (px, height - bottom + 4)], fill="black")
            draw.text((px - 14, height - bottom + 6), f"{fx:.3f}", fill="black", font=font)
            draw.line([(left - 4, py), (left, py)], fill="black")
            draw.text((8, py - 5), f"{fy:.3f}", fill="black", font=font)
        for i, (name, x, y) in enumerate(finite):
            px = left + (width - left - right) * (x - x0) / (x1 - x0)
            py = height - bottom - (height - top - bottom) * (y - y0) / (y1 - y0)
            colour = PALETTE[i % len(PALETTE)]
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour, outline="black")
            draw.text((px + 8, py - 6), name.encode("latin-1", "replace").decode("latin-1"), fill=colour, font=font)
    draw.text(((width - left) // 2, height - 18), x_label, fill="black", font=font)
    draw.text((8, top - 14), y_label, fill="black", font=font)
    image.save(path)


def _cell_colour(value: float, low: float, high: float, higher_is_better: bool) -> tuple[int, int, int]:
    if not math.isfinite(value):
        return (230, 230, 230)
    t = 0.5 if high - low < 1e-12 else (value - low) / (high - low)
    t = t if higher_is_better else 1 - t
    return (int(230 - 150 * t), int(150 + 90 * t), int(150 + 30 * t))  # red-ish (worse) → green-ish (better)


def demographics_plot(cells: list[dict], metrics: list[str], path: Path, id_column: str = "ID", cell=(86, 34)) -> None:
    """Fig. 7-style: for each metric (rows of panels) and method (columns), a race × age grid of the
    mean over the cell's identities, coloured within the metric's range (green = better)."""
    from PIL import Image, ImageDraw

    font = _font()
    names = {**METRIC_COLUMNS, "id": id_column}
    methods = list(dict.fromkeys(method_label(c, several_lambdas(cells)) for c in cells))
    races = sorted({c["race"] for c in cells})
    ages = sorted({c["age"] for c in cells})
    label_w, head_h, gap = 90, 30, 20
    panel_w, panel_h = label_w + cell[0] * len(ages), head_h + cell[1] * len(races)
    width = gap + len(methods) * (panel_w + gap)
    height = 24 + len(metrics) * (panel_h + gap + 14)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((gap, 6), "metrics per race x age cell (mean over the cell's identities; n = identities)", fill="black", font=font)
    several = several_lambdas(cells)
    for m_index, metric in enumerate(metrics):
        values = [c[metric] for c in cells if math.isfinite(c[metric])]
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        y0 = 24 + m_index * (panel_h + gap + 14)
        for k, method in enumerate(methods):
            x0 = gap + k * (panel_w + gap)
            draw.text((x0, y0), f"{names[metric]}{ARROWS[metric]} - {method}".encode("latin-1", "replace").decode("latin-1"),
                      fill="black", font=font)
            for j, age in enumerate(ages):
                draw.text((x0 + label_w + j * cell[0] + 4, y0 + 16), str(age)[:12], fill="black", font=font)
            for i, race in enumerate(races):
                y = y0 + head_h + i * cell[1]
                draw.text((x0 + 2, y + 10), str(race)[:14], fill="black", font=font)
                for j, age in enumerate(ages):
                    x = x0 + label_w + j * cell[0]
                    found = [c for c in cells if method_label(c, several) == method and c["race"] == race and c["age"] == age]
                    value = found[0][metric] if found else math.nan
                    draw.rectangle([x, y, x + cell[0] - 2, y + cell[1] - 2],
                                   fill=_cell_colour(value, low, high, metric != "lpips"), outline="white")
                    if found:
                        draw.text((x + 4, y + 4), number(value, 3), fill="black", font=font)
                        draw.text((x + 4, y + 18), f"n={found[0]['identities']}", fill=(60, 60, 60), font=font)
    image.save(path)


# ----------------------------------------------------------------------------------------------
# The command.
def check_models(metrics: list[str], args) -> None:
    """Raise MissingModelError naming every requested metric whose model was not given."""
    missing = []
    if "id" in metrics and not (args.arcface or args.dlib_descriptor):
        missing.append(HOW_TO_SUPPLY["id"])
    if "lpips" in metrics and not args.lpips_vgg:
        missing.append(HOW_TO_SUPPLY["lpips"])
    if "clip_t" in metrics and not args.clip:
        missing.append(HOW_TO_SUPPLY["clip_t"])
    if missing:
        raise MissingModelError("missing models (or choose fewer with --metrics): " + "; ".join(missing))


def add_metric_arguments(parser) -> None:
    """The metric options (shared with `pidiff ablate`)."""
    parser.add_argument("--metrics", default="id,lpips,clip_t", help="comma-separated subset of id,lpips,clip_t")
    parser.add_argument("--id-reference", choices=ID_REFERENCE_CHOICES, default="single",
                        help="what each generated face is compared with: single = the identity's reference image (the "
                             "paper's protocol, default), most-similar = the closest of its reference images (the paper's "
                             "choice for methods without a reference), mean = the mean over them")
    parser.add_argument("--arcface", help="ArcFace-compatible model, .onnx or TorchScript .pt")
    parser.add_argument("--arcface-mean", type=float, default=127.5)
    parser.add_argument("--arcface-std", type=float, default=127.5)
    parser.add_argument("--arcface-bgr", action="store_true", help="the model takes BGR input")
    parser.add_argument("--dlib-descriptor", help="fallback for ID: dlib_face_recognition_resnet_model_v1.dat")
    parser.add_argument("--lpips-vgg", help="VGG16 weights for LPIPS (torchvision vgg16-397923af.pth)")
    parser.add_argument("--lpips-size", type=int, default=256)
    parser.add_argument("--clip", help="local CLIP ViT-B/16 folder (transformers layout)")
    parser.add_argument("--class-text", default="person", help="replaces the placeholder in prompts for CLIP-T (default person)")
    parser.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pidiff eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:4]))
    parser.add_argument("--method", action="append", default=[], metavar="NAME=DIR",
                        help="a method's generated images (repeatable): DIR/<identity>/ as --samples; one table row each")
    parser.add_argument("--samples", help="generated images of one method: SAMPLES/<identity>/*.png (named after the folder)")
    parser.add_argument("--references", "--refs", dest="references", required=True,
                        help="real images: REFS/<identity>/*.png|jpg, with REFS/refs.json from pidiff-data refs")
    parser.add_argument("--prompts", required=True, help="the prompts file, or paper12 for the shipped 12-prompt protocol")
    parser.add_argument("--method-id-reference", action="append", default=[], metavar="NAME=CHOICE",
                        help="one method's own --id-reference (repeatable), e.g. DreamBooth=most-similar for a method "
                             "that takes no reference image")
    parser.add_argument("--partial", action="store_true",
                        help="allow identities without images for some prompts (not the paper's protocol)")
    add_metric_arguments(parser)
    parser.add_argument("--out", help="folder for the tables, CSVs and plots (default: --samples, or the one --method folder)")
    return parser


def parse_methods(args) -> dict[str, Path]:
    methods: dict[str, Path] = {}
    for spec in args.method:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder:
            raise ValueError(f"--method {spec!r}: expected NAME=DIR")
        if name in methods:
            raise ValueError(f"--method {name!r} is given twice")
        methods[name.strip()] = Path(folder)
    if args.samples:
        name = Path(args.samples).resolve().name or "samples"
        methods.setdefault(name if name not in methods else f"{name} (--samples)", Path(args.samples))
    if not methods:
        raise ValueError("give the generated images: --method NAME=DIR (repeatable) or --samples DIR")
    return methods


def method_id_references(args, methods: dict[str, Path]) -> dict[str, str]:
    """Each method's --id-reference: --method-id-reference NAME=CHOICE, else --id-reference."""
    choices = {name: args.id_reference for name in methods}
    for spec in args.method_id_reference:
        name, sep, choice = spec.rpartition("=")
        if not sep or choice not in ID_REFERENCE_CHOICES:
            raise ValueError(f"--method-id-reference {spec!r}: expected NAME={'|'.join(ID_REFERENCE_CHOICES)}")
        if name not in methods:
            raise ValueError(f"--method-id-reference {spec!r}: no method {name!r} (methods: {', '.join(methods)})")
        choices[name] = choice
    return choices


def protocol_record(args, metrics: list[str], scorer, lpips_metric, clip_metric, prompts_name: str, prompts: list[str],
                    choices: dict[str, str]) -> dict:
    id_texts = {"single": "the identity's reference image (the paper's protocol)",
                "most-similar": "the most similar of the identity's reference images (the paper's choice for methods "
                                "without a reference)",
                "mean": "the mean over the identity's reference images (not the paper's protocol)"}
    id_text = id_texts[args.id_reference]
    record = {"prompts": prompts_name, "prompt_count": len(prompts), "id_reference": args.id_reference,
              "complete": not args.partial}
    if others := {name: choice for name, choice in choices.items() if choice != args.id_reference}:
        record["method_id_reference"] = others
        record["others"] = "; ".join(f"method {name!r}: ID and LPIPS vs {id_texts[choice]}" for name, choice in others.items())
    if "id" in metrics:
        record["id"] = (f"{scorer.column}: cosine of {'ArcFace' if scorer.arcface is not None else 'dlib'} embeddings "
                        f"({'after MTCNN alignment, ' if scorer.arcface is not None else ''}generated vs {id_text}); "
                        "a generated image without a detected face scores 0; face rate = share of generated images with a face")
    if lpips_metric:
        record["lpips"] = (f"LPIPS: VGG, v0.1, {args.lpips_size}x{args.lpips_size}, vs "
                           + {"single": "the reference image", "most-similar": "the closest reference image",
                              "mean": "each reference image (mean)"}[args.id_reference])
    if clip_metric:
        record["clip_t"] = f"CLIP-T: raw cosine (not x100), {clip_metric.description}, placeholder -> {args.class_text!r}"
        record["class_text"] = args.class_text
    return record


def run(args) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRIC_COLUMNS]
    if unknown or not metrics:
        print(shown(f"pidiff eval: unknown metric(s) {unknown or metrics}; choose from id, lpips, clip_t"), file=sys.stderr)
        return 2
    try:
        methods = parse_methods(args)
        if args.out is None and len(methods) > 1:
            raise ValueError("several methods: give --out for the table")
        check_models(metrics, args)
        prompts = read_prompts(args.prompts)
        samples = []
        for name, folder in methods.items():
            samples += collect_samples(folder, prompts, name)
        check_complete(samples, prompts, methods, str(args.prompts), args.partial)
        choices = method_id_references(args, methods)
        identities = sorted({s.identity for s in samples})
        references = collect_references(args.references, identities, args.id_reference)
        for choice in set(choices.values()) - {args.id_reference}:  # a method's own choice: its references too
            collect_references(args.references, identities, choice)
        scorer = None
        if "id" in metrics:
            if args.arcface:
                scorer = IdentityScorer(arcface=ArcFaceEmbedder(args.arcface, args.arcface_mean, args.arcface_std, args.arcface_bgr),
                                        aligner=MtcnnAligner(args.device))
            else:
                scorer = IdentityScorer(dlib=DlibDescriptor(args.dlib_descriptor))
        lpips_metric = LpipsVgg.from_backbone(args.lpips_vgg, args.lpips_size, args.device) if "lpips" in metrics else None
        clip_metric = ClipTextScore(args.clip, args.device) if "clip_t" in metrics else None
        # Inside: references without a face, like the inputs above, are the user's to fix.
        for method, choice in choices.items():
            evaluate([s for s in samples if s.method == method], references, scorer, lpips_metric, clip_metric,
                     args.class_text, choice)
    except (MissingModelError, FileNotFoundError, ValueError) as error:
        print(f"pidiff eval: {shown(error)}", file=sys.stderr)
        return 2

    id_column = scorer.column if scorer else "ID"
    rows = summarise(samples, metrics)
    labels = {identity: refs.labels for identity, refs in references.items() if refs.labels}
    demographics = demographic_rows(rows, labels, metrics) if labels else []
    protocol = protocol_record(args, metrics, scorer, lpips_metric, clip_metric, str(args.prompts), prompts, choices)
    per_lambda = ", per λ" if several_lambdas(rows) else ""
    notes = [f"Protocol: {len(prompts)} prompts ({shown(args.prompts)})"
             + ("" if not args.partial else ", --partial: identities may miss some") + "; "
             + f"{len(samples)} images, {len({s.identity for s in samples})} identities, {len(methods)} method(s); "
             f"overall = mean over identities{per_lambda}."]
    notes += [protocol[key] + "." for key in ("id", "lpips", "clip_t", "others") if key in protocol]
    table = methods_table(rows, metrics, id_column)
    report = ("## Methods (Table 1)\n\n" + table + "\n\n" + "\n".join(f"- {n}" for n in notes)
              + "\n\n## Per identity\n\n" + markdown_table(rows, metrics, id_column) + "\n")
    out = Path(args.out or next(iter(methods.values())))
    write_csvs(out, samples, rows, metrics, prompts, demographics)
    (out / "eval_table.md").write_text(table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    (out / "eval.md").write_text(report)
    (out / "eval_protocol.json").write_text(json.dumps({**protocol, "methods": {k: str(v) for k, v in methods.items()}},
                                                       indent=2) + "\n")
    written = ["eval_table.md", "eval_table.csv", "eval_summary.csv", "eval_images.csv", "eval.md", "eval_protocol.json"]
    overall = [r for r in rows if r["identity"] == "overall"]
    if "id" in metrics and "clip_t" in metrics:
        several = several_lambdas(overall)
        scatter_plot([(method_label(r, several), r["clip_t"], r["id"]) for r in overall], out / "eval_id_vs_clip.png",
                     "CLIP-T (text alignment) ->", f"{id_column} (identity) ^", "identity vs text alignment per method")
        written.append("eval_id_vs_clip.png")
    if demographics:
        demographics_plot(demographics, metrics, out / "eval_demographics.png", id_column)
        written += ["eval_demographics.csv", "eval_demographics.png"]
    print(report, end="")
    print(shown(f"wrote {', '.join(str(out / name) for name in written)}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
