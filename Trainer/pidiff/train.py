"""`pidiff train`: fine-tune PIDiff's mapping network and style cross-attention per identity.

    pidiff train --encoded ENC --identity ID --sd SD15 --out OUT         # one identity
    pidiff train --encoded ENC --identities A,B,C --sd SD15 --out OUT    # K identities, one UNet pass
    pidiff train --encoded ENC --split NAME --sd SD15 --out OUT          # every identity of a split
    accelerate launch -m pidiff.cli train ...                            # identity groups over GPUs

The encoded folder is the only input besides SD1.5: its files carry each sample's identity and
role (pidiff.data). A training step is one frozen-UNet forward + backward: VAE latents are drawn
from the stored mean/std and the text embeddings of the finite template set are computed once, so
neither the VAE nor the text encoder is in the loop. Identities are trained in groups that share
one UNet pass; each identity has its own weights, random stream and loss term, so a group gives
the same per-identity result as one-by-one runs (up to floating point).

Read top to bottom: the configuration, the data draw and step, the loop, the outputs, main.
Group sizes, identity folders, checkpoint files, --resume checks and ranks: pidiff.runs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pidiff import runs
from pidiff.data import IdentitySamples, encode_prompts, load_training_samples, prompt_texts
from pidiff.model import DEFAULT_INFERENCE_SCALE, PIDiffAdapter, model_fingerprint, save_weights
from pidiff.schedule import SD15, Schedule
from pidiff.terminal import shown


# ----------------------------------------------------------------------------------------------
# Defaults: the paper's recipe. Every field is a command-line flag (--learning-rate 2e-4, ...).
@dataclass
class TrainConfig:
    # what to train, from where, to where
    encoded: str = ""             # folder of encoded shards written by `pidiff encode`
    sd: str = ""                  # Stable Diffusion 1.5 folder, diffusers layout
    out: str = ""                 # output folder
    identity: str = ""            # set by --identity ID: the one identity, written straight into OUT
    identities: str = ""          # comma-separated identity ids (--identity ID is one of them)
    split: str = ""               # or: every identity in the encoded shards NAME-NNNNNN.safetensors
    group_size: int = 0           # identities trained together, sharing one frozen UNet pass; 0 = auto
    # the recipe (PIDiff, after the W+ Adapter)
    steps: int = 600
    batch_size: int = 4           # per identity
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    visual_dropout: float = 0.5   # p of replacing w+ by zeros (the unconditional visual input)
    text_dropout: float = 0.3     # p of replacing the prompt by the empty prompt
    w_plus_noise: float = 0.05    # σ of Gaussian noise added to w+ (our choice; the paper gives none)
    placeholder: str = "S*"       # the identity's word in prompts; a plain string, not a learned token
    templates: str = ""           # file with one prompt template per line, "{}" = placeholder
    default_lambda: float = DEFAULT_INFERENCE_SCALE  # λ recorded for inference
    seed: int = 0
    # speed
    device: str = "auto"          # auto = cuda if available
    precision: str = "auto"       # bf16 (frozen UNet in bf16, trainables fp32, cast at use) | fp32
    autocast: bool = False        # bf16 only: also run the step under autocast (see train_step)
    compile: bool = False         # torch.compile the UNet (pays off over many identities)
    compile_mode: str = "default"  # torch.compile mode, e.g. max-autotune-no-cudagraphs
    gradient_checkpointing: bool = False
    channels_last: bool = False   # CUDA only; off: slower on an H100 (Docs/benchmarks.md, "Trainer on GPU")
    # checkpoints and logging
    checkpoint_every: int = 200   # steps; 0 = never
    keep_checkpoints: bool = False  # keep them after the final weights are written
    resume: bool = False          # continue every unfinished group from its latest checkpoint (pidiff.runs)
    skip_unchanged: bool = False  # keep weights trained from the same samples, recipe and base model
    log_every: int = 50


def identity_seed(seed: int, identity: str) -> int:
    """Each identity's random stream depends only on (seed, identity), not on its group."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{identity}".encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# The data draw, the training step and the loop.
class IdentityGroupTrainer:
    """Trains K identities at once on a frozen UNet: batch = K × batch_size, identity-major."""

    def __init__(self, unet, text_embeddings: torch.Tensor, samples: list[IdentitySamples], config: TrainConfig,
                 schedule: Schedule = SD15):
        self.config = config
        self.device = torch.device(config.device)
        # Hashed once, from the host copies: checkpoints and the weights' metadata record them.
        self.data_fingerprints = [s.fingerprint() for s in samples]
        self.samples = [s.to(self.device) for s in samples]
        self.identities = [s.identity for s in samples]
        self.text_embeddings = text_embeddings  # [templates + 1, 77, D]; last row = empty prompt
        self.num_templates = text_embeddings.shape[0] - 1
        self.sqrt_alpha_bar, self.sqrt_one_minus_alpha_bar = schedule.noise_levels(self.device)
        self.use_bf16 = config.precision == "bf16"

        self.unet = unet
        self.adapter = PIDiffAdapter(unet, num_identities=len(samples))
        self.adapter.mapper.reset_parameters(
            [torch.Generator().manual_seed(identity_seed(config.seed, name)) for name in self.identities])
        self.adapter.to(self.device).train()
        self.adapter.install(unet)
        self.adapter.set_scale(1.0)  # λ = 1 in training
        # Fixed shapes (dynamic=False): a group's batch never changes, and a short last group gets its
        # own static compilation instead of dynamic-shape kernels for every group.
        self.forward_unet = torch.compile(unet, mode=config.compile_mode, dynamic=False) if config.compile else unet

        self.optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
            betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
            fused=self.device.type == "cuda")
        # One generator per identity, on the device, so drawing a batch never waits for the host.
        self.generators = [torch.Generator(self.device).manual_seed(identity_seed(config.seed, name) + 1)
                           for name in self.identities]
        self.step = 0
        self.losses: list[list[float]] = [[] for _ in samples]

    def draw_batch(self, data: IdentitySamples, generator: torch.Generator):
        """One identity's batch; the draws and their order define its random stream."""
        cfg, b, dev = self.config, self.config.batch_size, self.device
        index = torch.randint(len(data.keys), (b,), generator=generator, device=dev)
        mean, std = data.latent_mean[index], data.latent_std[index]
        latents = mean + std * torch.randn(mean.shape, generator=generator, device=dev)
        w_plus = data.w_plus[index]
        w_plus = w_plus + cfg.w_plus_noise * torch.randn(w_plus.shape, generator=generator, device=dev)
        drop_visual = torch.rand(b, generator=generator, device=dev) < cfg.visual_dropout
        w_plus = torch.where(drop_visual[:, None, None], torch.zeros_like(w_plus), w_plus)
        prompt = torch.randint(self.num_templates, (b,), generator=generator, device=dev)
        drop_text = torch.rand(b, generator=generator, device=dev) < cfg.text_dropout
        prompt = torch.where(drop_text, self.num_templates, prompt)  # the empty prompt's row
        timesteps = torch.randint(len(self.sqrt_alpha_bar), (b,), generator=generator, device=dev)
        noise = torch.randn(latents.shape, generator=generator, device=dev)
        noisy = (self.sqrt_alpha_bar[timesteps, None, None, None] * latents
                 + self.sqrt_one_minus_alpha_bar[timesteps, None, None, None] * noise)
        return noisy, timesteps, prompt, w_plus, noise

    def train_step(self) -> torch.Tensor:
        """One optimiser step for every identity in the group; returns the K losses (on device)."""
        batches = [self.draw_batch(d, g) for d, g in zip(self.samples, self.generators)]
        noisy, timesteps, prompt, w_plus, noise = (torch.cat(parts) for parts in zip(*batches))
        if self.device.type == "cuda" and self.config.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        # The trainable weights are fp32 and are cast to the UNet's dtype where they are used (in
        # the processors and after the mapper), which is what autocast would do for them. Autocast
        # would also run the frozen UNet's GroupNorm/LayerNorm/softmax in fp32, which costs memory
        # traffic and per-op dispatch; it stays available as a flag to compare.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16 and self.config.autocast):
            prediction = self.adapter.denoise(self.forward_unet, noisy.to(self.unet.dtype), timesteps,
                                              self.text_embeddings[prompt], w_plus)
        per_sample = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        per_identity = per_sample.view(len(self.samples), -1).mean(dim=1)
        # Summing (not averaging) over identities gives each identity exactly its own gradient.
        per_identity.sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return per_identity.detach()

    def run(self, checkpoint_dir: Path | None, log=print) -> None:
        cfg = self.config
        pending: list[torch.Tensor] = []  # losses stay on the device until logged: no sync per step
        started, first_step = time.perf_counter(), self.step  # a resumed run times only its own steps
        while self.step < cfg.steps:
            pending.append(self.train_step())
            at_log = self.step % cfg.log_every == 0 or self.step == cfg.steps
            at_checkpoint = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            if at_log or at_checkpoint:
                stacked = torch.stack(pending).cpu()
                pending.clear()
                # Checked before any checkpoint or weights are written: a diverged run leaves the
                # last good checkpoint, never non-finite weights that --resume would keep.
                if not torch.isfinite(stacked).all():
                    bad = sorted({self.identities[k] for k in (~torch.isfinite(stacked)).nonzero()[:, 1].tolist()})
                    raise FloatingPointError(f"training diverged: non-finite loss by step {self.step} for {bad} "
                                             f"(learning rate {cfg.learning_rate}); nothing written for this group")
                for k, losses in enumerate(stacked.T.tolist()):
                    self.losses[k].extend(losses)
            if at_log:
                elapsed = time.perf_counter() - started
                mean_loss = sum(losses[-1] for losses in self.losses) / len(self.losses)
                log(f"step {self.step}/{cfg.steps}  loss {mean_loss:.4f}  {elapsed / (self.step - first_step):.3f} s/step "
                    f"({len(self.identities)} identities)")
            if at_checkpoint and checkpoint_dir is not None and self.step < cfg.steps:
                self.save_checkpoint(checkpoint_dir)

    # Checkpoints (files: runs.write_checkpoint): resuming from one continues bit-for-bit on the same device.
    def save_checkpoint(self, checkpoint_dir: Path) -> Path:
        state = {"step": self.step, "identities": self.identities, "losses": self.losses,
                 "config": dataclasses.asdict(self.config), "data_fingerprints": self.data_fingerprints}
        return runs.write_checkpoint(checkpoint_dir, self.step, self.adapter.state_dict(), self.optimizer.state_dict(),
                                     [g.get_state() for g in self.generators], state)

    def load_checkpoint(self, path: Path) -> None:
        state = runs.read_checkpoint_state(path)
        runs.check_checkpoint_state(path, state, self.config, self.identities, self.data_fingerprints)
        tensors, optimizer_state, rng_states = runs.read_checkpoint_tensors(path, self.device)
        self.adapter.load_state_dict(tensors)
        self.optimizer.load_state_dict(optimizer_state)
        for generator, rng_state in zip(self.generators, rng_states):
            generator.set_state(rng_state)
        self.step, self.losses = state["step"], state["losses"]


# ----------------------------------------------------------------------------------------------
# Training every group of a selection, and its outputs: weights with metadata, the loss curve.
def train_groups(unet, text_embeddings: torch.Tensor, samples: dict[str, IdentitySamples], config: TrainConfig,
                 base_fingerprint: str, rank: int = 0, world_size: int = 1, log=print,
                 extra_metadata: dict[str, object] | None = None, schedule: Schedule = SD15) -> dict[str, Path]:
    """Train every identity in `samples` in groups of `config.group_size` (0: resolved here); this
    rank takes every world_size-th group. Returns the weight paths. Rank 0 writes
    OUT/train_config.json, after --resume has checked what it would keep."""
    out, names = Path(config.out), sorted(samples)
    if not names:
        raise ValueError("no identities to train (the shards hold no training samples for this selection)")
    if config.identity and names != [config.identity]:
        raise ValueError(f"--identity {config.identity!r}, but the samples are of {names}")
    # The layout follows the command, not the data: a split that happens to hold one identity still
    # gets OUT/<identity>/, which is what callers of --split and --identities look for.
    dirs = runs.output_dirs(out, names, single=bool(config.identity))
    kept = runs.unchanged_identities(names, dirs, samples, config, base_fingerprint) if config.skip_unchanged else []
    if kept:
        log(f"{len(kept)} of {len(names)} identities unchanged since their weights were trained, kept: {', '.join(kept)}")
    names, written = [n for n in names if n not in kept], {n: dirs[n] / runs.WEIGHTS_NAME for n in kept}
    if not names:
        return written
    config = runs.resolve_group_size(config, world_size, len(names), log)
    groups = runs.identity_groups(names, config.group_size)
    if config.resume:
        runs.check_resumable(groups, dirs, samples, config, base_fingerprint)
    if rank == 0:
        runs.write_run_config(config)
    for group_index, group in list(enumerate(groups))[rank::world_size]:
        checkpoint_dir = runs.group_checkpoint_dir(out, group_index, len(groups))
        if config.resume and all((dirs[n] / runs.WEIGHTS_NAME).is_file() for n in group):
            log(f"group {group_index}: {', '.join(group)} already trained, skipped")
            written.update({n: dirs[n] / runs.WEIGHTS_NAME for n in group})
            continue
        trainer = IdentityGroupTrainer(unet, text_embeddings, [samples[n] for n in group], config, schedule)
        if (config.resume and (checkpoint := runs.latest_checkpoint(checkpoint_dir)) is not None
                and runs.read_checkpoint_state(checkpoint)["identities"] == group):
            trainer.load_checkpoint(checkpoint)
            log(f"group {group_index}: resumed from {checkpoint} at step {trainer.step}")
        log(f"group {group_index}: training {', '.join(group)} ({sum(len(samples[n].keys) for n in group)} samples)")
        trainer.run(checkpoint_dir if config.checkpoint_every else None, log=log)
        for k, name in enumerate(group):
            written[name] = write_identity_outputs(trainer, k, dirs[name], base_fingerprint, extra_metadata or {})
        trainer.adapter.uninstall(unet)
        if not config.keep_checkpoints:
            runs.remove_checkpoints(checkpoint_dir)
    if world_size == 1 and not config.keep_checkpoints:
        runs.remove_if_empty(out / "checkpoints")  # left empty by the groups above, unless another run's are there
    return written


def write_identity_outputs(trainer: IdentityGroupTrainer, k: int, directory: Path, base_fingerprint: str,
                           extra_metadata: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = trainer.samples[k]
    metadata = {
        "identity": data.identity, "base_model": base_fingerprint, "placeholder": trainer.config.placeholder,
        "default_lambda": trainer.config.default_lambda, "steps": trainer.step,
        "data_fingerprint": trainer.data_fingerprints[k],
        "train_keys": data.keys,
        "style_keys": [key for key, role in zip(data.keys, data.roles) if role == "style"],
        "view": data.view,
        "final_loss": trainer.losses[k][-1] if trainer.losses[k] else None,
        "config": dataclasses.asdict(trainer.config),
        **extra_metadata,
    }
    save_weights(directory / runs.WEIGHTS_NAME, trainer.adapter, k, metadata)
    write_loss_curve(trainer.losses[k], directory, f"{data.identity}: training loss")
    return directory / runs.WEIGHTS_NAME


def write_loss_curve(losses: list[float], directory: Path, title: str) -> None:
    with open(directory / "loss.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows((step, f"{loss:.6f}") for step, loss in enumerate(losses, start=1))
    plot_loss_png(losses, directory / "loss.png", title)


def plot_loss_png(losses: list[float], path: Path, title: str, size=(640, 360)) -> None:
    """Per-step loss (light) and its running mean over 25 steps (dark), drawn with Pillow."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if losses:
        low, high = min(losses), max(losses)
        span = (high - low) or 1.0

        def point(i: int, value: float) -> tuple[float, float]:
            x = left + (width - left - right) * (i / max(len(losses) - 1, 1))
            y = height - bottom - (height - top - bottom) * ((value - low) / span)
            return x, y

        window = 25
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(losses))]
        if len(losses) > 1:
            draw.line([point(i, v) for i, v in enumerate(losses)], fill=(170, 190, 230), width=1)
            draw.line([point(i, v) for i, v in enumerate(smooth)], fill=(20, 60, 160), width=2)
        draw.text((4, top), f"{high:.3f}", fill="black")
        draw.text((4, height - bottom - 10), f"{low:.3f}", fill="black")
        draw.text((left, height - bottom + 8), "1", fill="black")
        draw.text((width - right - 40, height - bottom + 8), f"{len(losses)} steps", fill="black")
    image.save(path)


# ----------------------------------------------------------------------------------------------
# The command.
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pidiff train",
        description="Fine-tune the PIDiff mapping network and style cross-attention per identity "
                    "on encoded shards. Defaults are the paper's recipe.",
        epilog="example: pidiff train --encoded enc/ --identity person_0001 --sd sd15/ --out runs/person_0001")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", help="train one identity")
    who.add_argument("--identities", help="comma-separated identities, trained in groups sharing one UNet pass")
    who.add_argument("--split", help="every identity in the encoded shards SPLIT-NNNNNN.safetensors")
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("identity", "identities", "split"):
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float, "str": str}[field.type if isinstance(field.type, str) else field.type.__name__]
            parser.add_argument(flag, type=kind, default=field.default, required=field.name in ("encoded", "sd", "out"),
                                help=f"(default: {field.default})" if field.default != "" else None)
    parser.add_argument("--shards", help="ignored: the encoded files carry each sample's identity and role")
    return parser


def config_from_args(argv: list[str]) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    if args.pop("shards") is not None and os.environ.get("RANK", "0") == "0":
        print("pidiff train: --shards is ignored: the encoded files carry each sample's identity and role",
              file=sys.stderr, flush=True)
    if args["identity"] is not None and not args["identity"].strip():
        raise ValueError("--identity needs a name")
    if args["identities"] is not None and not [name for name in args["identities"].split(",") if name.strip()]:
        raise ValueError("--identities needs at least one name")
    if args["split"] is not None and not args["split"].strip():
        raise ValueError("--split needs a name")
    args["identity"] = args["identity"] or ""
    args["identities"] = args["identity"] or args["identities"] or ""
    args["split"] = args["split"] or ""
    return check_config(TrainConfig(**args))


def check_config(config: TrainConfig) -> TrainConfig:
    """Refuses values that cannot mean anything, naming the flag (before anything is loaded or written)."""
    limits = [("steps", config.steps >= 1, "at least 1"), ("batch-size", config.batch_size >= 1, "at least 1"),
              ("group-size", config.group_size >= 0, "0 (auto) or more"), ("log-every", config.log_every >= 1, "at least 1"),
              ("checkpoint-every", config.checkpoint_every >= 0, "0 (none) or more"),
              ("learning-rate", config.learning_rate > 0, "positive"), ("weight-decay", config.weight_decay >= 0, "0 or more"),
              ("visual-dropout", 0 <= config.visual_dropout <= 1, "in [0, 1]"),
              ("text-dropout", 0 <= config.text_dropout <= 1, "in [0, 1]"),
              ("w-plus-noise", config.w_plus_noise >= 0, "0 or more"), ("placeholder", bool(config.placeholder.strip()), "not empty")]
    for flag, ok, expected in limits:
        if not ok:
            raise ValueError(f"--{flag} must be {expected}, not {getattr(config, flag.replace('-', '_'))!r}")
    return config


def resolve_device_and_precision(config: TrainConfig) -> TrainConfig:
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"--precision must be bf16 or fp32, not {precision!r}")
    return dataclasses.replace(config, device=device, precision=precision)


def prepare_frozen_unet(unet, config: TrainConfig):
    """Freeze the UNet and put it in its training form (dtype, memory format, checkpointing)."""
    unet.requires_grad_(False).eval()
    unet.to(config.device, dtype=torch.bfloat16 if config.precision == "bf16" else torch.float32)
    if config.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv kernels once
        if config.channels_last:
            unet.to(memory_format=torch.channels_last)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def main(argv: list[str] | None = None) -> int:
    """User errors (flags, missing or broken inputs, --resume refusals) are one line and exit 2; a
    diverged run is one line and exit 1, its last good checkpoint left in place."""
    try:
        return run_training(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"pidiff train: {shown(error)}", file=sys.stderr, flush=True)
        return 1 if isinstance(error, FloatingPointError) else 2


def run_training(argv: list[str]) -> int:
    config = resolve_device_and_precision(config_from_args(argv))
    rank, world_size, config = runs.distributed_context(config)
    # Log lines name identities, paths and checkpoints: control characters in them are escaped.
    log = (lambda message: print(f"[rank {rank}] {shown(message)}", flush=True)) if world_size > 1 else \
        (lambda message: print(shown(message), flush=True))
    from diffusers import UNet2DConditionModel

    # --identity is taken whole: an identity may itself hold a comma.
    wanted = [config.identity] if config.identity else ([name for name in config.identities.split(",") if name] or None)
    samples = load_training_samples(config.encoded, wanted, config.split)
    if not samples:
        raise ValueError(f"no identities with training samples in {config.encoded}"
                         + (f" for the split {config.split!r}" if config.split else "") + " (only reference samples?)")
    log(f"{len(samples)} identities, {sum(len(s.keys) for s in samples.values())} training samples")

    schedule = Schedule.from_sd(config.sd)
    unet = UNet2DConditionModel.from_pretrained(Path(config.sd) / "unet")
    base_fingerprint = model_fingerprint(unet)
    unet = prepare_frozen_unet(unet, config)
    text_embeddings = encode_prompts(config.sd, prompt_texts(config.templates, config.placeholder), config.device)

    extra = {"base_model_path": str(config.sd), "random_base_model": (Path(config.sd) / "pidiff-random-model.json").is_file()}
    written = train_groups(unet, text_embeddings.to(unet.dtype), samples, config, base_fingerprint, rank, world_size,
                           log, extra, schedule)
    for name, path in written.items():
        log(f"{name}: {path}")
    runs.finish_ranks(world_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
