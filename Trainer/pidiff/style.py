"""Style editing, λ sweeps and the sampler's JSON sidecar.

Style mixing (paper Fig. 11): StyleGAN's w+ rows go from coarse (0–3: pose, face shape) through
middle (4–7: features, hair style) to fine (8–17: colour, texture). Taking some rows from a second
"style" face and the rest from the identity face moves those attributes into the generated person:

    mixed = mix_w_plus(identity_w, style_w, parse_layers("0-7"))

λ sweep (Fig. 12): the same seed and prompt at several λ, drawn as one labelled grid
(`labelled_grid`). The sidecar (`write_sidecar`) records every parameter, the seed and fingerprints
of the models, so a picture can be traced to what made it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

W_PLUS_ROWS, W_PLUS_DIM = 18, 512
SIDECAR_FORMAT = "pidiff-sample/1"


# ----------------------------------------------------------------------------------------------
# Style mixing.
def parse_layers(spec: str, rows: int = W_PLUS_ROWS) -> list[int]:
    """"0-7" → [0..7]; "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11]. Ranges are inclusive."""
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"style layers {spec!r}: empty item")
        try:
            if "-" in part:
                start_text, end_text = part.split("-", 1)
                start, end = int(start_text), int(end_text)
            else:
                start = end = int(part)
        except ValueError:
            raise ValueError(f"style layers {spec!r}: {part!r} is not a row or an a-b range") from None
        if start > end:
            raise ValueError(f"style layers {spec!r}: range {part!r} runs backwards")
        if start < 0 or end >= rows:
            raise ValueError(f"style layers {spec!r}: {part!r} is outside the w+ rows 0-{rows - 1}")
        layers.update(range(start, end + 1))
    return sorted(layers)


def mix_w_plus(identity: torch.Tensor, style: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """w+ [18, 512] (or [B, 18, 512]) with rows `layers` from `style` and the rest from `identity`."""
    if identity.shape[-2:] != (W_PLUS_ROWS, W_PLUS_DIM) or style.shape[-2:] != (W_PLUS_ROWS, W_PLUS_DIM):
        raise ValueError(f"w+ codes must end in [18, 512]: identity {tuple(identity.shape)}, style {tuple(style.shape)}")
    style = style.to(identity.dtype).expand_as(identity)
    mixed = identity.clone()
    mixed[..., layers, :] = style[..., layers, :]
    return mixed


def load_w_plus(path: str | Path) -> torch.Tensor:
    """One w+ code [18, 512] (float32) from .safetensors (tensor `w_plus`, or the only tensor),
    .pt/.pth (a tensor, or a dict with `w_plus`) or .npy. A leading batch axis of 1 is dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"w+ file {path}: not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if "w_plus" in tensors:
            w = tensors["w_plus"]
        elif len(tensors) == 1:
            w = next(iter(tensors.values()))
        else:
            raise ValueError(f"w+ file {path}: several tensors ({', '.join(sorted(tensors))}) and none named w_plus")
    elif suffix in (".pt", ".pth"):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        w = loaded.get("w_plus") if isinstance(loaded, dict) else loaded
        if not isinstance(w, torch.Tensor):
            raise ValueError(f"w+ file {path}: holds no tensor (or no w_plus entry)")
    elif suffix == ".npy":
        import numpy as np

        w = torch.from_numpy(np.load(path))
    else:
        raise ValueError(f"w+ file {path}: unknown type {suffix!r} (use .safetensors, .pt or .npy)")
    if w.ndim == 3 and w.shape[0] == 1:
        w = w[0]
    if tuple(w.shape) != (W_PLUS_ROWS, W_PLUS_DIM):
        raise ValueError(f"w+ file {path}: shape {tuple(w.shape)}, expected [18, 512] (one code)")
    return w.float()


# ----------------------------------------------------------------------------------------------
# λ sweep and grids.
def parse_lambdas(spec: str) -> list[float]:
    """"0,0.2,0.4" → [0.0, 0.2, 0.4]."""
    try:
        values = [float(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"lambda sweep {spec!r}: expected numbers separated by commas") from None
    if not values:
        raise ValueError(f"lambda sweep {spec!r}: no values")
    return values


def check_lambda_sweep(values: list[float]) -> None:
    """Each λ of a sweep once, and a number: the files and grid columns are told apart by λ."""
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise ValueError(f"--lambda-sweep: {value} is not a finite number")
        if value in values[:i]:
            raise ValueError(f"--lambda-sweep: λ {lambda_text(value)} is given twice")


def lambda_text(scale: float) -> str:
    """λ in the shortest form that reads back as the same number: 0.4, 1, 0.1234567 (where {:g}
    would round to 0.123457 and give two λ the same file name)."""
    return repr(float(scale)).removesuffix(".0")


LABEL_HEIGHT = 14  # PIL's bitmap font is 11 px tall


def labelled_grid(images: list, labels: list[str], columns: int, background: str = "white"):
    """One PIL image: `images` (all the same size) in rows of `columns`, each with its label in a
    strip below it (cut at the cell's width), in PIL's default bitmap font (Latin-1; others become '?').

    Size: columns·w × rows·(h + LABEL_HEIGHT), rows = ceil(len(images) / columns).
    """
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise ValueError("labelled grid: no images")
    if len(labels) != len(images):
        raise ValueError(f"labelled grid: {len(images)} images but {len(labels)} labels")
    if columns < 1:
        raise ValueError(f"labelled grid: columns must be ≥ 1, got {columns}")
    width, height = images[0].size
    for i, image in enumerate(images):
        if image.size != (width, height):
            raise ValueError(f"labelled grid: image {i} is {image.size[0]}x{image.size[1]}, not {width}x{height}")
    rows = -(-len(images) // columns)
    cell_height = height + LABEL_HEIGHT
    grid = Image.new("RGB", (columns * width, rows * cell_height), background)
    font = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else ImageFont.load_default()
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * width, (i // columns) * cell_height
        grid.paste(image.convert("RGB"), (x, y))
        text = label.encode("latin-1", "replace").decode("latin-1")
        strip = Image.new("RGB", (width, LABEL_HEIGHT), background)  # a long label is cut at its cell
        ImageDraw.Draw(strip).text((2, 1), text, fill="black", font=font)
        grid.paste(strip, (x, y + height))
    return grid


def tensor_to_pil(image: torch.Tensor):
    """[3, H, W] in [0, 1] → PIL RGB."""
    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels)


# ----------------------------------------------------------------------------------------------
# Sidecar.
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


FINGERPRINT_METADATA = ("identity", "base_model", "base_model_path", "random_base_model", "data_fingerprint",
                        "steps", "format_version")


def model_fingerprints(weights_path: str | Path, weights_metadata: dict[str, str],
                       extra_files: dict[str, str | Path] | None = None) -> dict[str, str]:
    """SHA-256 of the weights file, the base-model entries of its metadata (`base_model` is the
    UNet fingerprint written at training time) and SHA-256 of any other model files given."""
    fingerprints = {"weights_path": str(weights_path), "weights_sha256": file_sha256(weights_path)}
    for key in FINGERPRINT_METADATA:
        if key in weights_metadata:
            fingerprints[f"weights_{key}" if key in ("steps", "format_version") else key] = weights_metadata[key]
    for name, path in (extra_files or {}).items():
        fingerprints[f"{name}_sha256"] = file_sha256(path)
    return fingerprints


def write_sidecar(path: str | Path, parameters: dict, seed: int, fingerprints: dict[str, str],
                  images: list[dict]) -> Path:
    """Write the JSON sidecar of a sampling run: format, parameters (every option, defaults
    included), seed, model fingerprints and one entry per image (file, prompt, λ, …)."""
    from pidiff import __version__

    record = {"format": SIDECAR_FORMAT, "pidiff_version": __version__, "seed": seed,
              "parameters": parameters, "models": fingerprints, "images": images}
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    partial.replace(path)
    return path


def read_sidecar(path: str | Path) -> dict:
    record = json.loads(Path(path).read_text())
    if record.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path} is not a pidiff sample sidecar (format={record.get('format')!r})")
    return record


# ----------------------------------------------------------------------------------------------
# `pidiff sample` options: style editing, λ sweep, outputs (the sampler delegates these here).
def _argument(parse):
    """An argparse `type` that reports parse's ValueError as a usage error."""
    import argparse

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


def add_sample_arguments(parser) -> None:
    group = parser.add_argument_group("style editing and λ sweep")
    group.add_argument("--style-wplus", help="w+ of a style face (.safetensors/.pt/.npy, [18, 512]); its --style-layers "
                                             "rows replace the identity's")
    group.add_argument("--style-layers", type=_argument(parse_layers), help="w+ rows from the style face, e.g. 0-7 or 0-3,8 (default 0-7: coarse and "
                                              "middle rows: pose, face shape, hair style)")
    group.add_argument("--lambda-sweep", type=_argument(parse_lambdas), help="λ values, e.g. 0,0.2,0.4,0.6,0.8,1.0: every image at each λ with the same "
                                              "seed; grid.png has one column per λ")


def style_mixed(w_plus: torch.Tensor, args) -> tuple[torch.Tensor, dict]:
    """The identity's w+ with the style face's rows mixed in (when --style-wplus), and what was done."""
    if not args.style_wplus:
        if args.style_layers is not None:
            raise ValueError("--style-layers needs --style-wplus (the face the rows come from)")
        return w_plus, {}
    layers = args.style_layers if args.style_layers is not None else parse_layers("0-7")
    try:
        style = load_w_plus(args.style_wplus)
    except (OSError, ValueError) as error:  # say which option named the file
        raise ValueError(f"--style-wplus: {error}") from error
    info = {"style_wplus": str(args.style_wplus), "style_wplus_sha256": file_sha256(args.style_wplus), "style_layers": layers}
    return mix_w_plus(w_plus, style.to(w_plus.device), layers), info


def sweep_lambdas(args, default: float) -> list[float]:
    return list(args.lambda_sweep) if args.lambda_sweep else [default]


def save_sample_outputs(out: str | Path, runs: list[tuple[float, torch.Tensor]], prompts: list[str], args, seed: int,
                        weights_metadata: dict[str, str], resolved: dict) -> list[dict]:
    """Write one PNG per image (NNN.png, or NNN_lambda<λ>.png in a sweep, λ as `lambda_text` writes it), grid.png
    (one row per prompt, one column per image; in a sweep one row per image, one column per λ) and the sample.json
    sidecar. Returns the image entries.

    runs: (λ, images [B, 3, H, W] in [0, 1]) for each λ, all from the same seed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sweep = len(runs) > 1 or bool(getattr(args, "lambda_sweep", None))
    entries, cells, labels = [], {}, {}
    for scale, images in runs:
        for i, (prompt, image) in enumerate(zip(prompts, images)):
            name = f"{i:03d}_lambda{lambda_text(scale)}.png" if sweep else f"{i:03d}.png"
            picture = tensor_to_pil(image)
            picture.save(out / name)
            cells[(i, scale)], labels[(i, scale)] = picture, f"#{i} lambda={lambda_text(scale)}"
            entries.append({"file": name, "prompt": prompt, "lambda": scale, "batch_index": i})
    scales = [scale for scale, _ in runs]
    order = [(i, scale) for i in range(len(prompts)) for scale in scales]
    columns = len(scales) if sweep else max(1, getattr(args, "num_images", 1))  # else one row per prompt
    grid = labelled_grid([cells[k] for k in order], [labels[k] for k in order], columns=columns)
    grid.save(out / "grid.png")
    parameters = {key: value for key, value in sorted(vars(args).items())}
    parameters.update(resolved)
    write_sidecar(out / "sample.json", parameters, seed, model_fingerprints(args.weights, weights_metadata), entries)
    return entries
