"""`pidiff eval`: the paper's metrics (§3.2) for generated images of each identity.

    pidiff eval --samples SAMPLES --references REFS --prompts paper12 \\
        --arcface arcface_r100.onnx --lpips-vgg vgg16-397923af.pth --clip clip-vit-base-patch16/

- ID: cosine of ArcFace embeddings, generated face vs each reference face of the identity (mean over
  the references). Faces are found and aligned with facenet-pytorch's MTCNN (its weights ship in
  its wheel): the 5 landmarks of the most probable face, a similarity transform onto the standard
  ArcFace 112×112 template (insightface's), bilinear warp. The ArcFace-compatible model is the
  user's: ONNX (onnxruntime) or TorchScript, input [N, 3, 112, 112], RGB, (x − 127.5) / 127.5 by
  default (`--arcface-mean/--arcface-std/--arcface-bgr` for other conventions), output [N, D].
  A generated image with no detected face gets no ID score; the table counts faces found.
  Fallback `--dlib-descriptor`: dlib's 128-D face descriptor (dlib's own detector, 5-point
  landmarks and chip) through the Python dlib binding (setup installs the dlib-bin wheel); the
  column is then "ID (dlib)".
- LPIPS (VGG), generated vs each reference (mean), both resized to 256×256: the `lpips` package's
  linear layers (v0.1, shipped in its wheel) on a VGG16 backbone whose weights the user supplies
  (torchvision's `vgg16-397923af.pth` or any state dict with the 26 `features.*` tensors); lpips
  would otherwise download them.
- CLIP-T: raw cosine (≈0.2-0.35, not ×100) of CLIP image and text features from a local CLIP
  ViT-B/16 folder (transformers `CLIPModel` + processor files). The text is the image's prompt
  with the placeholder replaced by `--class-text` ("person").

Layout: SAMPLES/<identity>/*.png (or SAMPLES itself for one identity). A folder with the
`sample.json` sidecar written by `pidiff sample` holds exactly the images the sidecar lists, with
their prompts and λ (grid.png and files an earlier run left there are not scored); in a folder
without one, an image's prompt comes from its file name `NN_*.png` (NN = 0-based line of
--prompts). References: REFS/<identity>/*.{png,jpg,jpeg}. The identity is the sidecar's (weights
metadata) or the folder's name.

Per identity: mean over its images, per λ when its images were made at several λ (a
`--lambda-sweep`); overall: mean over identities (each identity weighs the same), per λ likewise.
Writes eval_images.csv, eval_summary.csv and eval.md to --out (default: SAMPLES).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


class IdentityScorer:
    """Face embedding of an image (None when no face), by MTCNN + ArcFace or by dlib."""

    def __init__(self, arcface: ArcFaceEmbedder | None = None, dlib: DlibDescriptor | None = None,
                 aligner: MtcnnAligner | None = None):
        if (arcface is None) == (dlib is None):
            raise ValueError("IdentityScorer takes an ArcFace model or a dlib descriptor, one of them")
        self.arcface, self.dlib = arcface, dlib
        self.aligner = aligner if aligner is not None or arcface is None else MtcnnAligner()
        self.column = "ID" if arcface is not None else "ID (dlib)"

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


def read_prompts(path: str | Path) -> list[str]:
    """Prompt lines (blank lines and '#' comments skipped). A bare name such as "paper12" is a
    prompts file shipped in pidiff/prompts/."""
    if not Path(path).exists() and (PACKAGED_PROMPTS / f"{path}.txt").is_file():
        path = PACKAGED_PROMPTS / f"{path}.txt"
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
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
    record = read_sidecar(sidecar)
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


def collect_samples(samples_dir: str | Path, prompts: list[str]) -> list[SampleImage]:
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
    return samples


def collect_references(references_dir: str | Path, identities: list[str]) -> dict[str, list[Path]]:
    references_dir = Path(references_dir)
    found = {}
    for identity in identities:
        folder = references_dir / identity
        if not folder.is_dir() or not images_in(folder):
            raise FileNotFoundError(f"identity {identity}: no reference images in {folder}")
        found[identity] = images_in(folder)
    return found


# ----------------------------------------------------------------------------------------------
# The evaluation.
METRIC_COLUMNS = {"id": "ID", "lpips": "LPIPS", "clip_t": "CLIP-T"}


def clip_text(prompt: str, placeholder: str, class_text: str) -> str:
    return prompt.replace(placeholder, class_text)


def evaluate(samples: list[SampleImage], references: dict[str, list[Path]], identity_scorer: IdentityScorer | None,
             lpips_metric: LpipsVgg | None, clip_metric: ClipTextScore | None, class_text: str = "person") -> None:
    """Fill each sample's scores ('id', 'lpips', 'clip_t'); a metric without its model is left out."""
    reference_images = {identity: [open_rgb(p) for p in paths] for identity, paths in references.items()}
    reference_embeddings: dict[str, list[np.ndarray]] = {}
    if identity_scorer is not None:
        for identity, images in reference_images.items():
            embeddings = [e for e in (identity_scorer.embed(im) for im in images) if e is not None]
            if not embeddings:
                raise ValueError(f"identity {identity}: no face found in any reference image "
                                 f"({', '.join(p.name for p in references[identity])})")
            reference_embeddings[identity] = embeddings
    for sample in samples:
        image = open_rgb(sample.path)
        refs = reference_images[sample.identity]
        if identity_scorer is not None:
            embedding = identity_scorer.embed(image)
            sample.face_found = embedding is not None
            if embedding is not None:
                sample.scores["id"] = float(np.mean([cosine(embedding, r) for r in reference_embeddings[sample.identity]]))
        if lpips_metric is not None:
            sample.scores["lpips"] = float(np.mean([lpips_metric(image, ref) for ref in refs]))
        if clip_metric is not None:
            sample.scores["clip_t"] = clip_metric(image, clip_text(sample.prompt, sample.placeholder, class_text))


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def lambda_order(lam: float | None) -> float:
    return -math.inf if lam is None else lam  # unrecorded λ first


def summary_groups(samples: list[SampleImage]) -> list[tuple[str, float | None, list[SampleImage]]]:
    """(identity, λ, images): one group per identity, split by λ when its images hold several.

    Averaging over a λ sweep would mix pictures made to look different; λ is None where no
    sidecar recorded it.
    """
    groups = []
    for identity in sorted({s.identity for s in samples}):
        mine = [s for s in samples if s.identity == identity]
        for lam in sorted({s.lam for s in mine}, key=lambda_order):
            groups.append((identity, lam, [s for s in mine if s.lam == lam]))
    return groups


def summarise(samples: list[SampleImage], metrics: list[str]) -> list[dict]:
    """One row per identity (mean over its images; one per λ when they hold several) and an
    'overall' row per λ (mean over the identities' rows at that λ; one row when all share it)."""
    rows = []
    for identity, lam, mine in summary_groups(samples):
        row = {"identity": identity, "lambda": lam, "images": len(mine)}
        if "id" in metrics:
            row["faces"] = sum(bool(s.face_found) for s in mine)
        for metric in metrics:
            row[metric] = mean([s.scores[metric] for s in mine if metric in s.scores])
        rows.append(row)
    overall_rows = []
    for lam in sorted({r["lambda"] for r in rows}, key=lambda_order):
        at_lam = [r for r in rows if r["lambda"] == lam]
        overall = {"identity": "overall", "lambda": lam, "images": sum(r["images"] for r in at_lam)}
        if "id" in metrics:
            overall["faces"] = sum(r["faces"] for r in at_lam)
        for metric in metrics:
            overall[metric] = mean([r[metric] for r in at_lam if not math.isnan(r[metric])])
        overall_rows.append(overall)
    return rows + overall_rows


def lambda_text(lam: float | None) -> str:
    return "" if lam is None else f"{lam:g}"


def several_lambdas(rows: list[dict]) -> bool:
    return len({r["lambda"] for r in rows}) > 1


def markdown_table(rows: list[dict], metrics: list[str], id_column: str = "ID") -> str:
    names = {**METRIC_COLUMNS, "id": id_column}
    arrows = {"id": " ↑", "clip_t": " ↑", "lpips": ""}
    with_lambda = several_lambdas(rows)  # a λ column only when rows differ in λ
    header = (["identity"] + (["λ"] if with_lambda else []) + ["images"] + (["faces"] if "id" in metrics else [])
              + [names[m] + arrows[m] for m in metrics])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"**{row['identity']}**" if row["identity"] == "overall" else row["identity"]]
        cells += ([lambda_text(row["lambda"]) or "–"] if with_lambda else []) + [str(row["images"])]
        if "id" in metrics:
            cells.append(str(row["faces"]))
        cells += ["–" if math.isnan(row[m]) else f"{row[m]:.4f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csvs(out: Path, samples: list[SampleImage], rows: list[dict], metrics: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "eval_images.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["identity", "file", "prompt", "lambda", "face_found"] + metrics)
        for s in samples:
            writer.writerow([s.identity, str(s.path), s.prompt, lambda_text(s.lam),
                             "" if s.face_found is None else int(s.face_found)]
                            + [f"{s.scores[m]:.6f}" if m in s.scores else "" for m in metrics])
    with open(out / "eval_summary.csv", "w", newline="") as f:
        columns = ["identity", "lambda", "images"] + (["faces"] if "id" in metrics else []) + metrics
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            cells = {k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else ("" if isinstance(v, float) else v))
                     for k, v in row.items() if k != "lambda"}
            writer.writerow({**cells, "lambda": lambda_text(row["lambda"])})


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
        raise MissingModelError("missing models (or choose fewer with --metrics):\n  - " + "\n  - ".join(missing))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pidiff eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    parser.add_argument("--samples", required=True, help="generated images: SAMPLES/<identity>/*.png")
    parser.add_argument("--references", required=True, help="real images: REFS/<identity>/*.png|jpg")
    parser.add_argument("--prompts", required=True, help="the prompts file, or paper12 for the shipped 12-prompt protocol")
    parser.add_argument("--metrics", default="id,lpips,clip_t", help="comma-separated subset of id,lpips,clip_t")
    parser.add_argument("--arcface", help="ArcFace-compatible model, .onnx or TorchScript .pt")
    parser.add_argument("--arcface-mean", type=float, default=127.5)
    parser.add_argument("--arcface-std", type=float, default=127.5)
    parser.add_argument("--arcface-bgr", action="store_true", help="the model takes BGR input")
    parser.add_argument("--dlib-descriptor", help="fallback for ID: dlib_face_recognition_resnet_model_v1.dat")
    parser.add_argument("--lpips-vgg", help="VGG16 weights for LPIPS (torchvision vgg16-397923af.pth)")
    parser.add_argument("--lpips-size", type=int, default=256)
    parser.add_argument("--clip", help="local CLIP ViT-B/16 folder (transformers layout)")
    parser.add_argument("--class-text", default="person", help="replaces the placeholder in prompts for CLIP-T")
    parser.add_argument("--out", help="folder for eval_images.csv, eval_summary.csv, eval.md (default: --samples)")
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRIC_COLUMNS]
    if unknown or not metrics:
        print(f"pidiff eval: unknown metric(s) {unknown or metrics}; choose from id, lpips, clip_t", file=sys.stderr)
        return 2
    try:
        check_models(metrics, args)
        prompts = read_prompts(args.prompts)
        samples = collect_samples(args.samples, prompts)
        references = collect_references(args.references, sorted({s.identity for s in samples}))
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
        evaluate(samples, references, scorer, lpips_metric, clip_metric, args.class_text)
    except (MissingModelError, FileNotFoundError, ValueError) as error:
        print(f"pidiff eval: {error}", file=sys.stderr)
        return 2

    rows = summarise(samples, metrics)
    table = markdown_table(rows, metrics, scorer.column if scorer else "ID")
    per_lambda = ", per λ" if several_lambdas(rows) else ""
    notes = [f"{len(samples)} images, {len({s.identity for s in samples})} identities; "
             f"overall = mean over identities{per_lambda}."]
    if clip_metric:
        notes.append(f"CLIP-T: raw cosine, {clip_metric.description}, placeholder → {args.class_text!r}.")
    if lpips_metric:
        notes.append(f"LPIPS: VGG, v0.1, {args.lpips_size}², mean over references.")
    report = table + "\n\n" + "\n".join(notes) + "\n"
    out = Path(args.out or args.samples)
    write_csvs(out, samples, rows, metrics)
    (out / "eval.md").write_text(report)
    print(report, end="")
    print(f"wrote {out / 'eval_images.csv'}, {out / 'eval_summary.csv'}, {out / 'eval.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
