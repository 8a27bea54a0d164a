"""Style editing, λ sweeps and the sampler's JSON sidecar.

Style mixing (paper Fig. 11): StyleGAN's w+ rows go from coarse (0–3: pose, face shape, head
outline) through middle (4–7: hair style, eyes, finer facial features) to fine (8–17: colour scheme
incl. skin and hair colour, micro-structure). Taking some rows from a second "style" face and the
rest from the identity face moves those attributes into the generated person:

    mixed = mix_w_plus(identity_w, style_w, parse_layers("coarse"))   # or "0-7", "0-3,8", "middle,fine"

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
# StyleGAN2 w+ rows of a 1024² generator (e4e's FFHQ model), by what they control.
LAYER_PRESETS = {
    "coarse": (range(0, 4), "pose, face shape"),
    "middle": (range(4, 8), "hair style, eyes"),
    "fine": (range(8, 18), "colour scheme incl. skin and hair colour, micro-structure"),
}
DEFAULT_STYLE_LAYERS = "0-7"


# ----------------------------------------------------------------------------------------------
# Style mixing.
def parse_layers(spec: str, rows: int = W_PLUS_ROWS) -> list[int]:
    """"0-7" → [0..7]; "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11]; the presets "coarse" (0-3), "middle"
    (4-7) and "fine" (8-17) may stand for ranges, e.g. "coarse,fine". Ranges are inclusive."""
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"style layers {spec!r}: empty item")
        if part.lower() in LAYER_PRESETS:
            layers.update(LAYER_PRESETS[part.lower()][0])
            continue
        try:
            if "-" in part:
                start_text, end_text = part.split("-", 1)
                start, end = int(start_text), int(end_text)
            else:
                start = end = int(part)
        except ValueError:
            raise ValueError(f"style layers {spec!r}: {part!r} is not a row, an a-b range or one of "
                             f"{', '.join(LAYER_PRESETS)}") from None
        if start > end:
            raise ValueError(f"style layers {spec!r}: range {part!r} runs backwards")
        if start < 0 or end >= rows:
            raise ValueError(f"style layers {spec!r}: {part!r} is outside the w+ rows 0-{rows - 1}")
        layers.update(range(start, end + 1))
    return sorted(layers)


def rows_text(rows: list[int]) -> str:
    """[0, 1, 2, 3, 8] → "0-3,8"."""
    parts, start = [], None
    for i, row in enumerate(rows):
        if start is None:
            start = row
        if i + 1 == len(rows) or rows[i + 1] != row + 1:
            parts.append(str(start) if start == row else f"{start}-{row}")
            start = None
    return ",".join(parts)


def describe_layers(rows: list[int]) -> str:
    """Rows and what they control: "0-3 (coarse: pose, face shape)", "0-7 (coarse + middle: …)",
    "0-3,9 (coarse: …; part of fine)"."""
    taken = set(rows)
    whole, partial = [], []
    for name, (preset, meaning) in LAYER_PRESETS.items():
        if set(preset) <= taken:
            whole.append((name, meaning))
        elif taken & set(preset):
            partial.append(name)
    notes = [" + ".join(name for name, _ in whole) + ": " + ", ".join(meaning for _, meaning in whole)] if whole else []
    notes += [f"part of {name}" for name in partial]
    return f"{rows_text(rows)} ({'; '.join(notes)})"


class LayerSpec(list):
    """The rows of --style-layers (a list of ints), remembering the text given."""

    def __init__(self, text: str):
        super().__init__(parse_layers(text))
        self.text = text


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
# A grid holds at most this many pixels (48 MB as RGB): more or larger cells are drawn smaller, so
# the grid of a long run costs bounded memory (64 cells of 512² fit at full size).
GRID_MAX_PIXELS = 64 * 512 * (512 + LABEL_HEIGHT)


def _font():
    from PIL import ImageFont

    return ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else ImageFont.load_default()


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def wrap_text(text: str, width: int, font) -> list[str]:
    """`text` in lines no wider than `width` pixels (broken at spaces, else inside a word)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:  # a word wider than the grid (a path)
                cut = 1
                while cut < len(word) - 1 and font.getlength(word[:cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


class GridCanvas:
    """A labelled grid filled cell by cell as images finish: `cells` cells of `columns` per row, each
    an image with its label in a strip below it (cut at the cell's width), in PIL's default bitmap
    font (Latin-1; others become '?'), under an optional title (wrapped to the grid's width).

    The canvas is made when the first image arrives (its size sets the cell size). Cells are drawn at
    the images' size unless the grid would exceed `max_pixels`; then every cell is scaled down by one
    factor, so a run of any length keeps one bounded image in memory.
    """

    def __init__(self, cells: int, columns: int, title: str = "", background: str = "white",
                 max_pixels: int | None = GRID_MAX_PIXELS):
        if cells < 1:
            raise ValueError("labelled grid: no images")
        if columns < 1:
            raise ValueError(f"labelled grid: columns must be ≥ 1, got {columns}")
        self.cells, self.columns, self.title, self.background = cells, columns, title, background
        self.max_pixels = max_pixels
        self.image = None
        self.image_size: tuple[int, int] | None = None
        self.cell_size: tuple[int, int] | None = None
        self.top = 0
        self.font = _font()

    def _start(self, size: tuple[int, int]) -> None:
        from PIL import Image, ImageDraw

        width, height = size
        rows = -(-self.cells // self.columns)
        scale = 1.0
        if self.max_pixels is not None:  # the s with columns·rows·w·s·(h·s + LABEL_HEIGHT) = max_pixels
            a, b = self.columns * rows * width * height, self.columns * rows * width * LABEL_HEIGHT
            scale = min(1.0, (-b + (b * b + 4 * a * self.max_pixels) ** 0.5) / (2 * a))
        self.image_size = size
        self.cell_size = (max(8, int(width * scale)), max(8, int(height * scale)))
        grid_width = self.columns * self.cell_size[0]
        title_lines = wrap_text(_latin1(self.title), grid_width - 4, self.font) if self.title else []
        self.top = len(title_lines) * LABEL_HEIGHT
        self.image = Image.new("RGB", (grid_width, self.top + rows * (self.cell_size[1] + LABEL_HEIGHT)), self.background)
        draw = ImageDraw.Draw(self.image)
        for i, line in enumerate(title_lines):
            draw.text((2, 1 + i * LABEL_HEIGHT), line, fill="black", font=self.font)

    def paste(self, index: int, image, label: str) -> None:
        from PIL import Image, ImageDraw

        if not 0 <= index < self.cells:
            raise ValueError(f"labelled grid: cell {index} outside 0-{self.cells - 1}")
        if self.image is None:
            self._start(image.size)
        if image.size != self.image_size:
            raise ValueError(f"labelled grid: image {index} is {image.size[0]}x{image.size[1]}, "
                             f"not {self.image_size[0]}x{self.image_size[1]}")
        width, height = self.cell_size
        x, y = (index % self.columns) * width, self.top + (index // self.columns) * (height + LABEL_HEIGHT)
        cell = image.convert("RGB")
        if cell.size != self.cell_size:
            cell = cell.resize(self.cell_size, Image.BILINEAR)
        self.image.paste(cell, (x, y))
        strip = Image.new("RGB", (width, LABEL_HEIGHT), self.background)  # a long label is cut at its cell
        ImageDraw.Draw(strip).text((2, 1), _latin1(label), fill="black", font=self.font)
        self.image.paste(strip, (x, y + height))


def labelled_grid(images: list, labels: list[str], columns: int, background: str = "white", title: str = ""):
    """One PIL image: `images` (all the same size) in rows of `columns`, each with its label in a
    strip below it, under an optional title (`GridCanvas`).

    Size without a title: columns·w × rows·(h + LABEL_HEIGHT), rows = ceil(len(images) / columns);
    a title adds LABEL_HEIGHT per line on top.
    """
    if not images:
        raise ValueError("labelled grid: no images")
    if len(labels) != len(images):
        raise ValueError(f"labelled grid: {len(images)} images but {len(labels)} labels")
    canvas = GridCanvas(len(images), columns, title, background, max_pixels=None)  # the caller holds them all anyway
    for i, (image, label) in enumerate(zip(images, labels)):
        canvas.paste(i, image, label)
    return canvas.image


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
    group = parser.add_argument_group("style editing (paper Fig. 11) and λ sweep (Fig. 12)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--style-wplus", metavar="FILE",
                        help="w+ of a style face (`pidiff wplus` output, or .safetensors/.pt/.npy holding [18, 512]); "
                             "its --style-layers rows replace the identity's")
    source.add_argument("--style-photo", metavar="PHOTO",
                        help="a photo of the style face: prepared by `pidiff-data face` and encoded with --e4e, then as "
                             "--style-wplus")
    group.add_argument("--style-layers", type=_argument(LayerSpec), metavar="ROWS",
                       help="w+ rows taken from the style face: the presets coarse (0-3: pose, face shape), middle "
                            "(4-7: hair style, eyes), fine (8-17: colour scheme incl. skin and hair colour, "
                            f"micro-structure), or rows and ranges such as 0-3,8 (presets combine: coarse,fine); "
                            f"default {DEFAULT_STYLE_LAYERS} (coarse and middle)")
    group.add_argument("--lambda-sweep", type=_argument(parse_lambdas), help="λ values, e.g. 0,0.2,0.4,0.6,0.8,1.0: every image at each λ with the same "
                                              "seed; grid.png has one column per λ")


def load_style_wplus(path: str | Path) -> tuple[torch.Tensor, dict]:
    """The style code of --style-wplus and what the sidecar records about it (for a `pidiff wplus`
    file, also the photo it was made from)."""
    from pidiff.wplus import w_plus_file_metadata

    try:
        style = load_w_plus(path)
    except (OSError, ValueError) as error:  # say which option named the file
        raise ValueError(f"--style-wplus: {error}") from error
    info = {"style_source": str(path), "style_source_kind": "w+ file", "style_wplus": str(path),
            "style_wplus_sha256": file_sha256(path)}
    made_from = w_plus_file_metadata(path)
    if made_from:
        info["style_wplus_made_from"] = {key: made_from[key] for key in ("source", "source_kind", "source_sha256", "e4e_sha256")
                                         if key in made_from}
    return style, info


def style_mixed(w_plus: torch.Tensor, args, photo_style: tuple[torch.Tensor, dict] | None = None) -> tuple[torch.Tensor, dict]:
    """The identity's w+ with the style face's rows mixed in, and what was done (for the sidecar).

    The style face is --style-wplus, or `photo_style` = (w+, info) that the sampler encoded from
    --style-photo. Without either, w_plus comes back unchanged."""
    photo = getattr(args, "style_photo", None)
    if not (args.style_wplus or photo):
        if args.style_layers is not None:
            raise ValueError("--style-layers needs --style-wplus or --style-photo (the face the rows come from)")
        return w_plus, {}
    layers = args.style_layers if args.style_layers is not None else LayerSpec(DEFAULT_STYLE_LAYERS)
    if args.style_wplus:
        style, info = load_style_wplus(args.style_wplus)
    else:
        if photo_style is None:
            raise ValueError("--style-photo: the photo's w+ was not computed")
        style, info = photo_style
        info = dict(info)
    info.update({"style_layers": list(layers), "style_layers_spec": getattr(layers, "text", rows_text(list(layers))),
                 "style_layers_meaning": describe_layers(list(layers))})
    return mix_w_plus(w_plus, style.to(w_plus.device), list(layers)), info


def style_title(info: dict) -> str:
    """The grid's title for a style-mixed run: the rows, what they control and the style face."""
    if not info:
        return ""
    return f"style: w+ rows {info['style_layers_meaning']} from {info['style_source_kind']} {Path(info['style_source']).name}"


def sweep_lambdas(args, default: float) -> list[float]:
    return list(args.lambda_sweep) if args.lambda_sweep else [default]


class SampleWriter:
    """The outputs of a sampling run, written as the images finish: one PNG per image (NNN.png, or
    NNN_lambda<λ>.png in a sweep, λ as `lambda_text` writes it), and at the end grid.png (one row per
    prompt, one column per image; in a sweep one row per image, one column per λ; a style run's grid
    is titled with the style rows and source) and the sample.json sidecar.

    A sample.json and grid.png left in `out` by an earlier run are removed first, so a run stopped
    half way never leaves a sidecar describing images it did not make. Memory stays bounded whatever
    the number of images: each image is written and pasted into the (size-capped) grid as it comes.
    """

    def __init__(self, out: str | Path, prompts: list[str], lambdas: list[float], sweep: bool, columns: int,
                 title: str = ""):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("sample.json", "grid.png"):
            (self.out / stale).unlink(missing_ok=True)
        self.prompts, self.lambdas, self.sweep = prompts, list(lambdas), sweep
        self.grid = GridCanvas(len(prompts) * len(self.lambdas), len(self.lambdas) if sweep else max(1, columns), title)
        self.entries: list[dict] = []

    def add(self, scale: float, indices: list[int], images: torch.Tensor) -> list[dict]:
        """Write images [B, 3, H, W] in [0, 1] of prompts `indices` made at λ `scale`; returns their entries."""
        added = []
        for i, image in zip(indices, images):
            name = f"{i:03d}_lambda{lambda_text(scale)}.png" if self.sweep else f"{i:03d}.png"
            picture = tensor_to_pil(image)
            picture.save(self.out / name)
            self.grid.paste(i * len(self.lambdas) + self.lambdas.index(scale), picture, f"#{i} lambda={lambda_text(scale)}")
            entry = {"file": name, "prompt": self.prompts[i], "lambda": scale, "batch_index": i}
            self.entries.append(entry)
            added.append(entry)
        return added

    def finish(self, args, seed: int, weights_metadata: dict[str, str], resolved: dict,
               extra_files: dict[str, str | Path] | None = None) -> Path:
        """grid.png and sample.json (every option, `resolved`, the models' fingerprints, the images)."""
        self.grid.image.save(self.out / "grid.png")
        parameters = {key: value for key, value in sorted(vars(args).items())}
        parameters.update(resolved)
        return write_sidecar(self.out / "sample.json", parameters, seed,
                             model_fingerprints(args.weights, weights_metadata, extra_files), self.entries)
