"""`pidiff wplus`: the e4e w+ code of one face, from any photo or from a prepared e4e input.

    pidiff wplus photo.jpg --e4e e4e_ffhq_encode.pt --out face.safetensors
    pidiff wplus faces/obama.e4e.png --e4e e4e_ffhq_encode.pt --out face.safetensors

A photo goes through `pidiff-data face` first: the same decode → detect → 68 landmarks → FFHQ
alignment → quality → background removal → 256×256 e4e input as `pidiff-data ingest`, with the same
pipeline parameters and models, without a catalog. The e4e input (white background) is then encoded
by e4e. A prepared e4e input (a file named `*.e4e.png`, as `pidiff-data face` and shard exports write
them, or any image with `--prepared`) must be exactly 256×256 and look prepared (its border mostly
the white fill: `check_looks_prepared`); it is encoded as it is. One whose NAME.json says
`pidiff-data face` refused the photo ("ok": false: several faces, a failed quality gate or mask) is
refused, with that reason.

The output is a safetensors file with `w_plus` [1, 18, 512] (float32) and metadata naming its source
(photo or file, SHA-256), the e4e checkpoint (SHA-256) and the face `pidiff-data face` found
(landmarks, quality, which face); `pidiff sample --wplus` and `--style-wplus` read it
(Docs/evaluation.md). `pidiff sample --photo` and `--style-photo` use the same code.

Finding `pidiff-data`: `$PIDIFF_DATA` if set, else `pidiff-data` on PATH, else the repository's
`.build/release/pidiff-data`, then `.build/debug/pidiff-data` (the repository is the first folder
above this package holding `Package.swift`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pidiff.terminal import shown

E4E_INPUT_SIZE = 256
WPLUS_FORMAT = "pidiff-wplus/1"
PREPARED_SUFFIX = ".e4e.png"
TOOL_ENVIRONMENT = "PIDIFF_DATA"
# `pidiff-data face` exit statuses: 0 every photo prepared, 3 some photos failed (each named on
# stderr and as {"ok": false, "error": …} on stdout), 1 the command failed as a whole, 64 usage.
SOME_PHOTOS_FAILED = 3
USAGE = 64


class FaceError(ValueError):
    """A face that cannot be prepared or encoded, or a missing `pidiff-data`; one line naming it."""


# ----------------------------------------------------------------------------------------------
# `pidiff-data face`.
def repository_root(start: Path | None = None) -> Path | None:
    """The first folder at or above `start` (default: this package) holding Package.swift."""
    here = (start or Path(__file__)).resolve()
    for folder in (here, *here.parents):
        if (folder / "Package.swift").is_file():
            return folder
    return None


def find_pidiff_data() -> Path:
    """The `pidiff-data` executable: $PIDIFF_DATA, else on PATH, else the repository's build."""
    given = os.environ.get(TOOL_ENVIRONMENT)
    if given:
        path = Path(given)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FaceError(f"{TOOL_ENVIRONMENT}={given}: not an executable file; point it at pidiff-data "
                            "(`swift build -c release` builds .build/release/pidiff-data)")
        return path
    on_path = shutil.which("pidiff-data")
    if on_path:
        return Path(on_path)
    root = repository_root()
    if root is not None:
        for build in ("release", "debug"):
            candidate = root / ".build" / build / "pidiff-data"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    where = f" in {root}" if root is not None else ""
    raise FaceError(f"pidiff-data not found (needed to prepare a face from a photo): build it with "
                    f"`swift build -c release`{where}, or set {TOOL_ENVIRONMENT} to its path")


@dataclass
class FaceOptions:
    """How `pidiff-data face` picks and prepares the face (its own options)."""
    face_index: int | None = None
    largest: bool = False
    pipeline: str | None = None
    models: str | None = None

    def arguments(self) -> list[str]:
        args = []
        if self.face_index is not None:
            args += ["--face-index", str(self.face_index)]
        if self.largest:
            args.append("--largest")
        if self.pipeline:
            args += ["--pipeline", str(self.pipeline)]
        if self.models:
            args += ["--models", str(self.models)]
        return args


@dataclass
class PreparedFace:
    """One photo's face as `pidiff-data face` wrote it: DIR/NAME.{e4e.png,crop512.png,mask256.png,json}."""
    photo: Path
    folder: Path
    record: dict  # NAME.json: photo, name, face_index, faces_found, landmarks68, quad, quality, mask, files

    def file(self, entry: str) -> Path:
        return self.folder / self.record[entry]

    @property
    def e4e_input(self) -> Path:
        return self.file("e4e_input")

    def files(self) -> list[Path]:
        """The files written for this face (those that exist), the JSON last."""
        names = [self.record.get(entry) for entry in ("e4e_input", "crop512", "mask256")]
        name = self.record.get("name") or Path(self.record["e4e_input"]).name[: -len(PREPARED_SUFFIX)]
        paths = [self.folder / n for n in names if isinstance(n, str)] + [self.folder / f"{name}.json"]
        return [p for p in paths if p.is_file()]


def _error_line(stderr: str) -> str:
    """The line of pidiff-data's stderr that says what went wrong: its usage error (`Error: …`, the
    lines after it are the usage) or else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    return errors[0] if errors else (lines[-1] if lines else "")


def has_face_command(tool: Path) -> bool:
    """Whether `tool face --help` shows the face command's usage (an older build prints its general
    help for an unknown subcommand, also with exit status 0)."""
    try:
        result = subprocess.run([str(tool), "face", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, check=False)
    except OSError:
        return False
    return result.returncode == 0 and "pidiff-data face" in result.stdout


def _named(what: str, path: Path) -> str:
    return f"{what} {path}" if what else str(path)


def prepare_face(photo: str | Path, out_dir: str | Path, options: FaceOptions | None = None,
                 what: str = "--photo") -> PreparedFace:
    """Run `pidiff-data face PHOTO --out OUT_DIR --json` and return the prepared face.

    Any failure (no face, several faces without --face-index/--largest, not an image, the tool
    missing or failing) is a FaceError of one line starting with `what` and naming the photo."""
    photo = Path(photo)
    if not photo.is_file():
        raise FaceError(f"{_named(what, photo)}: not found")
    tool = find_pidiff_data()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [str(tool), "face", str(photo), "--out", str(out_dir), "--json", *(options or FaceOptions()).arguments()]
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    except OSError as error:
        raise FaceError(f"{_named(what, photo)}: could not run {tool}: {error}") from None
    records = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    failed = [r for r in records if r.get("ok") is False]
    if result.returncode == USAGE and not has_face_command(tool):
        raise FaceError(f"{tool} has no `face` command (a build older than this pidiff): rebuild it with "
                        f"`swift build -c release`, or set {TOOL_ENVIRONMENT} to a newer pidiff-data")
    if result.returncode != 0 or failed:
        reason = (failed[0].get("error") if failed else None) or _error_line(result.stderr) \
            or f"exit status {result.returncode}"
        status = "" if result.returncode in (0, SOME_PHOTOS_FAILED) else f" (pidiff-data exit status {result.returncode})"
        raise FaceError(f"{_named(what, photo)}: {reason}{status}")
    prepared = [r for r in records if r.get("ok", True) is not False and isinstance(r.get("e4e_input"), str)]
    if len(prepared) != 1:
        raise FaceError(f"{_named(what, photo)}: pidiff-data face printed {len(prepared)} prepared faces for one photo "
                        f"(expected one JSON line with e4e_input); is {tool} an older build?")
    face = PreparedFace(photo, out_dir, prepared[0])
    if not face.e4e_input.is_file():
        raise FaceError(f"{_named(what, photo)}: pidiff-data face reported {face.e4e_input}, which does not exist")
    return face


# ----------------------------------------------------------------------------------------------
# The e4e input and its encoding.
def default_hint(what: str) -> str:
    return (f"{what} takes a prepared 256x256 e4e input (aligned face, white background, as `pidiff-data face` "
            "writes NAME.e4e.png); for a photo use --photo PHOTO")


def read_e4e_input(path: str | Path, what: str = "--image", hint: str | None = None):
    """A prepared e4e input as uint8 [256, 256, 3]. Anything else (not an image, another size) is a
    FaceError naming `what` and the file, with `hint` (default: use --photo, which prepares any
    photo): nothing is resized."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FaceError(f"{_named(what, path)}: not found")
    hint = hint or default_hint(what)
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
            pixels = np.asarray(image.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise FaceError(f"{_named(what, path)}: not a readable image ({error}); {hint}") from None
    if size != (E4E_INPUT_SIZE, E4E_INPUT_SIZE):
        raise FaceError(f"{_named(what, path)}: {size[0]}x{size[1]}, not 256x256; {hint}")
    return pixels


# Does a 256×256 picture look like a prepared e4e input, or like a photo squashed to 256×256? A
# prepared input is the FFHQ-aligned face (hair, ears, neck) composited on a pure white fill, so most
# of its outer ring is that fill: both sides always (the aligned face is centred), the top and bottom
# where hair and shoulders do not reach. The statistic: the share of the pixels in the outer
# PREPARED_BORDER-pixel ring whose three channels are all ≥ WHITE_LEVEL (≥ 250 rather than = 255, so
# a JPEG re-save of a prepared input still counts).
# Measured (ring 2 px, level 250), on the real data of the repository:
#   - prepared e4e inputs: 13 distinct ones, the 8 of out/sample.sqlite.data/e4e and those
#     `pidiff-data face` writes for the 7 sample photos of $PIDIFF_CACHE/sample/identities and for a
#     two-face photo composed of two of them: 0.768–1.000 (0.904–1.000 for the 11 that pass the
#     quality gates; the two lower ones are partial faces that `pidiff-data face` refuses);
#     the same saved as JPEG (quality 75): 0.761–1.000;
#   - negatives: the 7 sample photos resized to 256×256 with PIL: 0.000–0.097; the 8 aligned
#     512×512 crops without background removal (NAME.crop512.png) resized to 256×256: 0.000–0.108.
# MIN_WHITE_BORDER = 0.4 sits between, with a margin of about 0.3 on either side; and as the two
# side columns of an aligned face are white, a prepared input stays at or above ~0.5 even when hair
# and shoulders cover the whole top and bottom rows. What it cannot tell apart: a photo whose own
# background is white along the border (a studio portrait) passes; a prepared input is still the
# only thing --image means.
PREPARED_BORDER = 2
WHITE_LEVEL = 250
MIN_WHITE_BORDER = 0.4
MEASURED_PREPARED = "77-100%"
MEASURED_PHOTOS = "0-11%"


def white_border_share(pixels) -> float:
    """The share of the outer PREPARED_BORDER-pixel ring of uint8 [H, W, 3] pixels that is white fill."""
    import numpy as np

    ring = np.ones(pixels.shape[:2], bool)
    ring[PREPARED_BORDER:-PREPARED_BORDER, PREPARED_BORDER:-PREPARED_BORDER] = False
    return float(np.all(pixels[ring] >= WHITE_LEVEL, axis=-1).mean())


def check_looks_prepared(pixels, path: Path, what: str, hint: str) -> None:
    """A FaceError unless the picture's border is mostly the white fill of a prepared e4e input."""
    share = white_border_share(pixels)
    if share < MIN_WHITE_BORDER:
        raise FaceError(f"{_named(what, path)}: does not look like a prepared e4e input: {share:.0%} of its "
                        f"{PREPARED_BORDER}-pixel border is white background fill (prepared inputs measured "
                        f"{MEASURED_PREPARED}, photos resized to 256x256 {MEASURED_PHOTOS}; at least "
                        f"{MIN_WHITE_BORDER:.0%} needed); {hint}")


def encode_e4e_inputs(images: list, encoder) -> torch.Tensor:
    """w+ [B, 18, 512] (float32, on the CPU) of uint8 [256, 256, 3] e4e inputs, scaled to [-1, 1]
    as `pidiff encode` scales them; `encoder` from `pidiff.e4e.load_e4e`."""
    import numpy as np

    device = next(encoder.parameters()).device
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        return encoder(x.to(device)).float().cpu()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FaceInput:
    """A face to encode: a photo (prepared by pidiff-data face) or a prepared e4e input."""
    source: Path                    # what the user gave
    kind: str                       # "photo" | "e4e-input"
    e4e_input: Path                 # the 256×256 image e4e reads
    face: PreparedFace | None = None
    record: dict | None = None      # the face JSON (a photo's, or NAME.json beside a prepared input)
    pixels: object = field(default=None, repr=False)

    def describe(self) -> dict:
        """Source, kind, SHA-256s and the face summary, for sidecars and w+ metadata."""
        info = {"source": str(self.source), "source_kind": self.kind, "source_sha256": file_sha256(self.source),
                "e4e_input_sha256": file_sha256(self.e4e_input)}
        if self.record is not None:
            info["face"] = {key: self.record[key] for key in ("photo", "face_index", "faces_found", "quality", "mask")
                            if key in self.record}
        return info


def photo_input(photo: str | Path, out_dir: str | Path, options: FaceOptions | None, what: str) -> FaceInput:
    face = prepare_face(photo, out_dir, options, what)
    pixels = read_e4e_input(face.e4e_input, f"{_named(what, Path(photo))}: pidiff-data face's e4e input",
                            "pidiff-data face writes 256x256 e4e inputs; is it an older build?")
    return FaceInput(Path(photo), "photo", face.e4e_input, face, face.record, pixels)


def refused_face_error(path: Path, what: str, beside: Path, record: dict, photo_usage: str) -> FaceError:
    """`pidiff-data face` writes NAME.e4e.png even for a photo it refuses (for inspection), with
    "ok": false and the reason in NAME.json: such a file is not to be encoded."""
    quality, mask = record.get("quality"), record.get("mask")
    reason = record.get("error") or (quality.get("reason") if isinstance(quality, dict) else None) \
        or (mask.get("reason") if isinstance(mask, dict) else None) or '"ok": false'
    several = isinstance(record.get("faces_found"), int) and record["faces_found"] > 1
    quality_failed = isinstance(quality, dict) and quality.get("passed") is False
    mask_failed = isinstance(mask, dict) and mask.get("ok") is False
    if several and not (quality_failed or mask_failed):
        advice = (f"give the photo with {photo_usage} --face-index N (0 = the largest) or --largest, or prepare it "
                  "again with `pidiff-data face PHOTO --face-index N` (or `--largest`)")
    else:
        advice = f"this face cannot be used: give another photo with {photo_usage}"
    return FaceError(f"{_named(what, path)}: pidiff-data face refused its photo ({beside.name}: {reason}); {advice}")


def prepared_input(path: str | Path, what: str, hint: str | None = None, photo_usage: str = "--photo PHOTO") -> FaceInput:
    """A prepared e4e input; the face JSON `pidiff-data face` wrote beside it (NAME.json) is kept.

    Refused, in one FaceError naming the file: anything `read_e4e_input` refuses; a file whose
    NAME.json says `pidiff-data face` refused the photo ("ok": false, e.g. several faces, a failed
    quality gate or mask); a picture that does not look prepared (`check_looks_prepared`: a photo
    resized to 256×256). `photo_usage`: how this command takes a photo instead."""
    path = Path(path)
    pixels = read_e4e_input(path, what, hint)
    record = None
    beside = path.with_name(path.name[: -len(PREPARED_SUFFIX)] + ".json") if path.name.lower().endswith(PREPARED_SUFFIX) else None
    if beside is not None and beside.is_file():
        try:
            loaded = json.loads(beside.read_text())
            record = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError):
            record = None
    if record is not None and record.get("ok") is False:
        raise refused_face_error(path, what, beside, record, photo_usage)
    check_looks_prepared(pixels, path, what, hint or default_hint(what))
    return FaceInput(path, "e4e-input", path, None, record, pixels)


def is_prepared_name(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(PREPARED_SUFFIX)


# ----------------------------------------------------------------------------------------------
# w+ files.
def write_w_plus(path: str | Path, w_plus: torch.Tensor, metadata: dict[str, object]) -> Path:
    """`w_plus` [1, 18, 512] float32 and string metadata (non-strings as JSON), written beside the
    target and renamed over it."""
    from pidiff.model import save_safetensors

    w = w_plus.detach().float().cpu().reshape(1, 18, 512).contiguous()
    header = {"format": WPLUS_FORMAT}
    for key, value in metadata.items():
        header[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    save_safetensors({"w_plus": w}, partial, metadata=header)
    os.replace(partial, path)
    return path


def w_plus_file_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a `pidiff wplus` file (empty for other w+ files: .npy, .pt, foreign safetensors)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # load_w_plus reports an unreadable file
        return {}
    return metadata if metadata.get("format") == WPLUS_FORMAT else {}


def e4e_description(e4e_path: str | Path) -> dict[str, str]:
    return {"e4e_checkpoint": Path(e4e_path).name, "e4e_sha256": file_sha256(e4e_path)}


# ----------------------------------------------------------------------------------------------
# The command.
def add_face_options(parser, photo_options: str) -> None:
    group = parser.add_argument_group(f"preparing a photo ({photo_options}; passed to `pidiff-data face`)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--face-index", type=int, metavar="N",
                        help="the face to take when a photo holds several: 0 the largest, 1 the next, …; without it "
                             "or --largest, such a photo is an error")
    choice.add_argument("--largest", action="store_true", help="take the largest face of a photo holding several")
    group.add_argument("--face-pipeline", metavar="FILE", help="pidiff-data pipeline file (its ingest: and mask: "
                                                                "sections), as ingest and masks use it")
    group.add_argument("--face-models", metavar="DIR", help="folder of pidiff-data's dlib models (default: "
                                                             "$PIDIFF_MODELS or $PIDIFF_CACHE/models)")


def face_options(args) -> FaceOptions:
    return FaceOptions(args.face_index, args.largest, args.face_pipeline, args.face_models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pidiff wplus", description=__doc__.split("\n\n")[0],
        epilog="example: pidiff wplus photo.jpg --e4e e4e_ffhq_encode.pt --out face.safetensors; "
               "then pidiff sample --wplus face.safetensors (or --style-wplus face.safetensors)")
    parser.add_argument("input", metavar="PHOTO|E4E_PNG", help="a photo (any size; prepared by pidiff-data face) or a "
                                                               "prepared 256x256 e4e input named *.e4e.png")
    parser.add_argument("--out", required=True, help="the w+ file to write (.safetensors)")
    parser.add_argument("--e4e", required=True, help="e4e checkpoint (official e4e_ffhq_encode.pt layout)")
    parser.add_argument("--prepared", action="store_true", help="INPUT is a prepared 256x256 e4e input whatever its name")
    parser.add_argument("--face-dir", metavar="DIR", help="keep pidiff-data face's files for a photo here "
                                                          "(NAME.e4e.png, NAME.crop512.png, NAME.mask256.png, NAME.json); "
                                                          "default: a temporary folder, removed")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_face_options(parser, "a photo INPUT")
    return parser


PREPARED_HINT = ("a prepared e4e input (a file named *.e4e.png, or --prepared) must be the 256x256 aligned face on white that "
                 "`pidiff-data face` writes; give the photo itself (any other name) to have it prepared")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    try:
        if out.suffix.lower() != ".safetensors":
            raise FaceError(f"--out {out}: give a .safetensors file name")
        if out.is_dir():
            raise FaceError(f"--out {out}: is a folder; give a .safetensors file name")
        if not out.parent.is_dir():
            raise FaceError(f"--out {out}: the folder {out.parent} does not exist")
        from pidiff.e4e import read_e4e_checkpoint

        read_e4e_checkpoint(args.e4e)  # a wrong checkpoint before pidiff-data runs
        prepared = args.prepared or is_prepared_name(args.input)
        if prepared and (args.face_index is not None or args.largest):
            raise FaceError("--face-index and --largest choose a face in a photo; a prepared e4e input holds one face")
        with tempfile.TemporaryDirectory(prefix="pidiff-face-") as scratch:
            if prepared:
                face = prepared_input(args.input, "", PREPARED_HINT, "pidiff wplus PHOTO")
            else:
                face = photo_input(args.input, args.face_dir or scratch, face_options(args), "")
            device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                                  ("cpu" if args.device == "auto" else args.device))
            from pidiff import __version__
            from pidiff.e4e import load_e4e

            encoder = load_e4e(args.e4e, device)
            w_plus = encode_e4e_inputs([face.pixels], encoder)
            metadata = {**face.describe(), **e4e_description(args.e4e),
                        "random_weights": "e4e" if encoder.random_weights else "none",
                        "pidiff_version": __version__}
            if face.face is not None and args.face_dir:
                metadata["face_files"] = [str(p) for p in face.face.files()]
            write_w_plus(out, w_plus, metadata)
    except (FaceError, OSError, ValueError) as error:  # E4ECheckpointError is a ValueError
        print(f"pidiff wplus: {shown(error)}", file=sys.stderr)
        return 2
    where = ""
    if face.record is not None and "face_index" in face.record:
        where = f", face {face.record['face_index']} of {face.record.get('faces_found', '?')}"
    print(shown(f"pidiff wplus: {out}: w+ [1, 18, 512] of {face.source} ({face.kind}{where})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
