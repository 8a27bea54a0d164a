"""`pidiff ablate`: the paper's ablations as one resumable grid — train, sample and evaluate each setting.

    pidiff ablate --grid steps=200,400,600,800,1000 --encoded ENC --split NAME --sd SD15 --refs REFS \\
        --out ablation/ --arcface w600k_r50.onnx --lpips-vgg vgg16-397923af.pth --clip clip-vit-base-patch16/

Grid keys (repeat --grid for the product of several):

| key | what changes | paper |
| --- | --- | --- |
| `steps` | `pidiff train --steps` | Table 3 |
| `images` | training photos per identity: the first N `train` samples by key (style samples kept) | Table 5 |
| `lambda` | `pidiff sample --lambda` (inference λ; training keeps λ = 1) | §3.4.8 |
| `augment` | `pidiff train --w-plus-noise` (Gaussian noise on w+): `on` (the default 0.05), `off` (0) or σ | Table 4 |
| `drop_visual` | `pidiff train --visual-dropout` p | Table 4 |
| `drop_text` | `pidiff train --text-dropout` p | Table 4 |

Each setting trains every identity of the split (`pidiff train --split --resume`), samples each
identity's weights on the prompts (`pidiff sample --encoded --prompts`, the identity's split
reference as the face) and scores them (`pidiff eval`, the paper's protocol). OUT/<setting>/ holds
samples/, eval/ and result.json; weights go to OUT/weights/<training values>/, shared by settings
that differ only in λ (trained once), and an `images` subset of the encoded split to
OUT/encoded/images-N/. A setting with a result.json made with the same options is skipped on a
rerun, an interrupted one continues (training resumes from its checkpoints, finished weights are
kept, identities already sampled are kept). OUT/ablation.md, ablation.csv and
ablation.png (each metric against the settings) collect the rows.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from pidiff import evaluate
from pidiff.terminal import shown

GRID_KEYS = ("steps", "images", "lambda", "augment", "drop_visual", "drop_text")
TRAINING_KEYS = ("steps", "images", "augment", "drop_visual", "drop_text")  # the others change only sampling
RESULT_NAME = "result.json"
RESULT_FORMAT = "pidiff-ablation/1"
DEFAULT_W_PLUS_NOISE = 0.05  # TrainConfig.w_plus_noise: what `augment=on` means


class AblationError(ValueError):
    """A user mistake: one line, exit status 2."""


# ----------------------------------------------------------------------------------------------
# The grid.
def parse_value(key: str, text: str):
    text = text.strip()
    try:
        if key in ("steps", "images"):
            value = int(text)
            if value < 1:
                raise ValueError
            return value
        if key == "augment":
            if text.lower() in ("on", "off"):
                return text.lower()
            value = float(text)
            if not value >= 0:
                raise ValueError
            return value
        value = float(text)
        if not math.isfinite(value) or (key in ("drop_visual", "drop_text") and not 0 <= value <= 1):
            raise ValueError
        return value
    except ValueError:
        expected = {"steps": "an integer ≥ 1", "images": "an integer ≥ 1", "lambda": "a number",
                    "augment": "on, off or a noise σ ≥ 0", "drop_visual": "a probability in [0, 1]",
                    "drop_text": "a probability in [0, 1]"}[key]
        raise AblationError(f"--grid {key}: {text!r} is not {expected}") from None


def parse_grid(specs: list[str]) -> list[tuple[str, list]]:
    """["steps=200,400", "lambda=0.4"] → [("steps", [200, 400]), ("lambda", [0.4])]."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in GRID_KEYS:
            raise AblationError(f"--grid {spec!r}: expected KEY=V1,V2,… with KEY one of {', '.join(GRID_KEYS)}")
        if key in (k for k, _ in grid):
            raise AblationError(f"--grid {key} is given twice")
        parsed = [parse_value(key, v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise AblationError(f"--grid {spec!r}: no values")
        if len(set(map(str, parsed))) != len(parsed):
            raise AblationError(f"--grid {spec!r}: a value is given twice")
        grid.append((key, parsed))
    if not grid:
        raise AblationError("give at least one --grid KEY=V1,V2,…")
    return grid


def value_text(value) -> str:
    return repr(value).removesuffix(".0") if isinstance(value, float) else str(value)


@dataclass
class Setting:
    values: dict  # grid key → value

    @property
    def name(self) -> str:
        return ",".join(f"{k}={value_text(v)}" for k, v in self.values.items())

    @property
    def folder(self) -> str:
        return "_".join(f"{k}-{re.sub(r'[^A-Za-z0-9.]+', '-', value_text(v))}" for k, v in self.values.items())

    def train_args(self) -> list[str]:
        args = []
        for key, value in self.values.items():
            if key == "steps":
                args += ["--steps", str(value)]
            elif key == "augment":
                noise = DEFAULT_W_PLUS_NOISE if value == "on" else 0.0 if value == "off" else value
                args += ["--w-plus-noise", value_text(float(noise))]
            elif key == "drop_visual":
                args += ["--visual-dropout", value_text(value)]
            elif key == "drop_text":
                args += ["--text-dropout", value_text(value)]
        return args

    @property
    def training_folder(self) -> str:
        """Where this setting's weights live: settings that differ only in inference options (λ) share them."""
        trained = {k: v for k, v in self.values.items() if k in TRAINING_KEYS}
        return Setting(trained).folder if trained else "default"

    def sample_args(self) -> list[str]:
        return ["--lambda", value_text(self.values["lambda"])] if "lambda" in self.values else []


def settings_of(grid: list[tuple[str, list]]) -> list[Setting]:
    return [Setting(dict(zip([k for k, _ in grid], combination))) for combination in itertools.product(*[v for _, v in grid])]


# ----------------------------------------------------------------------------------------------
# Inputs: the split's identities and training samples, checked before anything is trained.
def split_samples(encoded: str, split: str) -> dict[str, list[tuple[str, str]]]:
    """identity → [(key, role)] of the split, sorted by key (every role)."""
    from pidiff.data import read_encoded_split

    found: dict[str, list[tuple[str, str]]] = {}
    for shard in read_encoded_split(encoded, split):
        for key, sample in zip(shard.keys, shard.samples):
            found.setdefault(sample["identity"], []).append((key, sample["role"]))
    return {identity: sorted(rows) for identity, rows in sorted(found.items())}


def check_images(settings: list[Setting], samples: dict[str, list[tuple[str, str]]], encoded: str, split: str) -> None:
    wanted = max((s.values["images"] for s in settings if "images" in s.values), default=0)
    for identity, rows in samples.items():
        train = [key for key, role in rows if role == "train"]
        if wanted and len(train) < wanted:
            raise AblationError(f"--grid images={wanted}: identity {identity!r} has only {len(train)} train samples in "
                                f"the split {split!r} of {encoded}")


def write_image_subset(encoded: str, split: str, count: int, out: Path) -> Path:
    """The split's encoded shards with only the first `count` train samples (by key) of each identity;
    reference and style samples stay. Same file names, so `--split` reads them."""
    from safetensors.torch import save_file

    from pidiff.data import read_encoded_split

    out.mkdir(parents=True, exist_ok=True)
    keep: set[str] = set()
    for identity, rows in split_samples(encoded, split).items():
        keep.update([key for key, role in rows if role == "train"][:count])
        keep.update(key for key, role in rows if role != "train")
    for shard in read_encoded_split(encoded, split):
        rows = [i for i, key in enumerate(shard.keys) if key in keep]
        if not rows:
            continue
        metadata = dict(shard.metadata)
        metadata.update({"keys": json.dumps([shard.keys[i] for i in rows]),
                         "samples": json.dumps([shard.samples[i] for i in rows], sort_keys=True),
                         "count": str(len(rows)), "ablation_images": str(count)})
        tensors = {name: getattr(shard, name)[rows].contiguous() for name in ("w_plus", "latent_mean", "latent_std")}
        partial = out / f".{shard.path.name}.partial"
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(out / shard.path.name)
    return out


# ----------------------------------------------------------------------------------------------
# One setting: train, sample, evaluate.
def run_step(what: str, module, argv: list[str], setting: Setting) -> None:
    status = module.main(argv)
    if status:
        raise SystemExit(f"pidiff ablate: setting {setting.name}: pidiff {what} failed (exit status {status}; "
                         f"its error is above)")


def sampled_completely(folder: Path, expected: int) -> bool:
    sidecar = folder / "sample.json"
    if not sidecar.is_file():
        return False
    try:
        return len(json.loads(sidecar.read_text()).get("images", [])) == expected
    except (OSError, ValueError):
        return False


def run_setting(setting: Setting, args, base: dict, identities: list[str], metric_argv: list[str], log) -> dict:
    from pidiff import sample, train
    from pidiff.model import load_weights_metadata
    from pidiff.runs import identity_folder

    folder = Path(args.out) / setting.folder
    result_path = folder / RESULT_NAME
    if result_path.is_file():
        try:
            done = json.loads(result_path.read_text())
        except ValueError:
            done = {}
        if done.get("format") == RESULT_FORMAT and done.get("base") == base and done.get("setting") == setting.name:
            log(f"{setting.name}: already done ({result_path}), skipped")
            return done
        raise AblationError(f"{result_path}: made with other options than this run; remove {folder} or pick another --out")
    folder.mkdir(parents=True, exist_ok=True)
    encoded = args.encoded
    if "images" in setting.values:
        images = setting.values["images"]
        encoded = str(write_image_subset(args.encoded, args.split, images, Path(args.out) / "encoded" / f"images-{images}"))
    weights_dir = Path(args.out) / "weights" / setting.training_folder  # shared by settings differing only in λ
    log(f"{setting.name}: training {len(identities)} identities ({weights_dir})")
    run_step("train", train, ["--encoded", encoded, "--split", args.split, "--sd", args.sd, "--out", str(weights_dir),
                              "--resume", "--device", args.device, *shlex.split(args.train_options), *setting.train_args()],
             setting)
    prompts = evaluate.read_prompts(args.prompts)
    for identity in identities:
        weights = weights_dir / identity_folder(identity) / "pidiff.safetensors"
        if not weights.is_file() or load_weights_metadata(weights).get("identity") != identity:
            raise AblationError(f"{weights}: no weights of {identity!r} after training")
        out = folder / "samples" / identity_folder(identity)
        if sampled_completely(out, len(prompts) * args.num_images):
            log(f"{setting.name}: {identity} already sampled, kept")
            continue
        log(f"{setting.name}: sampling {identity}")
        run_step("sample", sample, ["--sd", args.sd, "--weights", str(weights), "--encoded", encoded, "--prompts", args.prompts,
                                    "--num-images", str(args.num_images), "--seed", str(args.seed), "--device", args.device,
                                    "--out", str(out), *shlex.split(args.sample_options), *setting.sample_args()], setting)
    log(f"{setting.name}: evaluating")
    run_step("eval", evaluate, ["--method", f"{setting.name.replace('=', ':')}={folder / 'samples'}", "--refs", args.refs,
                                "--prompts", args.prompts, "--out", str(folder / "eval"), *metric_argv], setting)
    with open(folder / "eval" / "eval_table.csv") as f:
        rows = list(csv.DictReader(f))
    result = {"format": RESULT_FORMAT, "setting": setting.name, "values": setting.values, "base": base,
              "rows": rows, "weights": str(weights_dir), "encoded": encoded, "eval": str(folder / "eval")}
    partial = folder / f".{RESULT_NAME}.partial"
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(result_path)
    return result


# ----------------------------------------------------------------------------------------------
# The table and the plot.
def metrics_of(args) -> list[str]:
    return [m.strip() for m in args.metrics.split(",") if m.strip()]


def table_rows(results: list[dict], grid_keys: list[str], metrics: list[str]) -> list[dict]:
    rows = []
    for result in results:
        for row in result["rows"]:
            out = {key: value_text(result["values"][key]) for key in grid_keys}
            out.update({"setting": result["setting"], "lambda": row.get("lambda", ""), "identities": row.get("identities", ""),
                        "images": row.get("images", "")})
            for column in ["face_rate"] + metrics:
                if column in row:
                    out[column] = row[column]
            rows.append(out)
    return rows


def write_table(out: Path, rows: list[dict], grid_keys: list[str], metrics: list[str], notes: list[str],
                id_column: str = evaluate.ARCFACE_ID_COLUMN) -> None:
    """ablation.csv (machine names: id, lpips, clip_t) and ablation.md, whose ID column is labelled as
    `pidiff eval` labels it (`id_column`: "ID" for ArcFace, "ID (dlib)" for the dlib fallback)."""
    columns = grid_keys + ["identities", "images"] + (["face_rate"] if "id" in metrics else []) + metrics
    with open(out / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["setting"] + columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    names = {"face_rate": "face rate", "id": f"{id_column} ↑", "lpips": "LPIPS ↓", "clip_t": "CLIP-T ↑"}
    header = [names.get(c, c) for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if column in names and value != "":
                value = f"{float(value):.{3 if column == 'face_rate' else 4}f}"
            cells.append(str(value) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")


def plot(out: Path, rows: list[dict], metrics: list[str], title: str, panel=(360, 240),
         id_column: str = evaluate.ARCFACE_ID_COLUMN) -> Path:
    """One panel per metric: the value at each setting (in grid order), joined by a line. Pillow.
    The ID panel is labelled `id_column`, as in the table."""
    from PIL import Image, ImageDraw

    font = evaluate._font()
    columns = (["face_rate"] if "id" in metrics else []) + metrics
    names = {"face_rate": "face rate", "id": f"{id_column} (higher is better)", "lpips": "LPIPS (lower is better)",
             "clip_t": "CLIP-T (higher is better)"}
    width, height = panel[0] * len(columns) + 20, panel[1] + 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), title.encode("latin-1", "replace").decode("latin-1"), fill="black", font=font)
    left, right, top, bottom = 50, 16, 40, 50
    for p, column in enumerate(columns):
        x0 = 10 + p * panel[0]
        values = [float(r[column]) if r.get(column, "") != "" else math.nan for r in rows]
        draw.text((x0 + left, 24), names[column], fill="black", font=font)
        draw.rectangle([x0 + left, top, x0 + panel[0] - right, height - bottom], outline="black")
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            continue
        low, high = evaluate._nice_range(finite)
        points = []
        for i, value in enumerate(values):
            px = x0 + left + (panel[0] - left - right) * ((i + 0.5) / len(values))
            label = rows[i]["setting"]
            draw.text((px - 3 * min(len(label), 14), height - bottom + 6 + (i % 2) * 12), label[:14], fill="black", font=font)
            if math.isfinite(value):
                py = height - bottom - (height - top - bottom) * (value - low) / (high - low)
                points.append((px, py))
                draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=evaluate.PALETTE[p % len(evaluate.PALETTE)])
                draw.text((px + 6, py - 12), f"{value:.3f}", fill="black", font=font)
        if len(points) > 1:
            draw.line(points, fill=evaluate.PALETTE[p % len(evaluate.PALETTE)], width=2)
        draw.text((x0 + 2, top), f"{high:.3f}", fill="black", font=font)
        draw.text((x0 + 2, height - bottom - 10), f"{low:.3f}", fill="black", font=font)
    path = out / "ablation.png"
    image.save(path)
    return path


# ----------------------------------------------------------------------------------------------
# The command.
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pidiff ablate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,…",
                        help=f"a grid axis ({', '.join(GRID_KEYS)}); several --grid: every combination")
    parser.add_argument("--encoded", required=True, help="encoded shards (pidiff encode)")
    parser.add_argument("--split", required=True, help="the split: its identities are trained, sampled and scored")
    parser.add_argument("--sd", required=True, help="Stable Diffusion 1.5 folder, diffusers layout")
    parser.add_argument("--refs", "--references", dest="refs", required=True,
                        help="the split's references: REFS/<identity>/ and REFS/refs.json (pidiff-data refs)")
    parser.add_argument("--out", required=True, help="OUT/<setting>/ per setting, OUT/ablation.{md,csv,png}")
    parser.add_argument("--prompts", default="paper12", help="prompts file or paper12 (default)")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt and identity (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-options", default="", metavar="'OPTIONS'",
                        help="more pidiff train options for every setting, e.g. '--batch-size 4 --group-size 8'")
    parser.add_argument("--sample-options", default="", metavar="'OPTIONS'",
                        help="more pidiff sample options for every setting, e.g. '--steps 50 --guidance 7.5'")
    evaluate.add_metric_arguments(parser)  # --metrics, --id-reference, --arcface, --lpips-vgg, --clip, …, --device
    parser.set_defaults(device="auto")
    return parser


def eval_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def metric_argv(args) -> list[str]:
    argv = ["--metrics", args.metrics, "--id-reference", args.id_reference, "--class-text", args.class_text,
            "--lpips-size", str(args.lpips_size), "--arcface-mean", str(args.arcface_mean),
            "--arcface-std", str(args.arcface_std)]
    for flag, value in (("--arcface", args.arcface), ("--dlib-descriptor", args.dlib_descriptor),
                        ("--lpips-vgg", args.lpips_vgg), ("--clip", args.clip)):
        if value:
            argv += [flag, value]
    return argv + (["--arcface-bgr"] if args.arcface_bgr else []) + ["--device", eval_device(args.device)]  # device last


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    log = lambda message: print(f"pidiff ablate: {shown(message)}", flush=True)  # noqa: E731
    try:
        grid = parse_grid(args.grid)
        settings = settings_of(grid)
        metrics = metrics_of(args)
        if unknown := [m for m in metrics if m not in evaluate.METRIC_COLUMNS]:
            raise AblationError(f"unknown metric(s) {unknown}; choose from id, lpips, clip_t")
        if args.num_images < 1:
            raise AblationError(f"--num-images must be at least 1, got {args.num_images}")
        evaluate.check_models(metrics, args)
        prompts = evaluate.read_prompts(args.prompts)
        samples = split_samples(args.encoded, args.split)
        identities = [i for i, rows in samples.items() if any(role == "train" for _, role in rows)]
        if not identities:
            raise AblationError(f"the split {args.split!r} in {args.encoded} has no identity with train samples")
        check_images(settings, samples, args.encoded, args.split)
        evaluate.collect_references(args.refs, identities, args.id_reference)  # refs without an identity: stop now
        base = {"encoded": str(Path(args.encoded).resolve()), "split": args.split, "sd": str(Path(args.sd).resolve()),
                "refs": str(Path(args.refs).resolve()), "prompts": args.prompts, "prompt_count": len(prompts),
                "num_images": args.num_images, "seed": args.seed, "train_options": args.train_options,
                "sample_options": args.sample_options,
                "metrics": metric_argv(args)[:-2]}  # without --device: a rerun elsewhere keeps finished settings
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = [run_setting(setting, args, base, identities, metric_argv(args), log) for setting in settings]
    except (evaluate.MissingModelError, AblationError, FileNotFoundError, ValueError, OSError) as error:
        print(f"pidiff ablate: {shown(error)}", file=sys.stderr)
        return 2
    except SystemExit as stop:
        print(shown(stop.code), file=sys.stderr)
        return 1
    grid_keys = [k for k, _ in grid]
    rows = table_rows(results, grid_keys, metrics)
    notes = [f"{len(identities)} identities of the split {args.split!r}, {len(prompts)} prompts ({shown(args.prompts)}), "
             f"{args.num_images} image(s) per prompt; each row: the mean over identities (pidiff eval, "
             f"--id-reference {args.id_reference}); per setting: OUT/<setting>/eval/eval.md."]
    id_column = evaluate.id_column(args)
    if "id" in metrics and id_column == evaluate.DLIB_ID_COLUMN:
        notes.append(f"{id_column}: cosine of dlib face descriptors (--dlib-descriptor, the fallback without "
                     "--arcface), not comparable with ArcFace ID numbers.")
    write_table(out, rows, grid_keys, metrics, notes, id_column)
    plot(out, rows, metrics, f"ablation over {', '.join(grid_keys)} ({args.split}, {len(identities)} identities)",
         id_column=id_column)
    print((out / "ablation.md").read_text(), end="")
    print(shown(f"wrote {out / 'ablation.md'}, {out / 'ablation.csv'}, {out / 'ablation.png'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
