"""`pidiff train`: fine-tune PIDiff's mapping network and style cross-attention per identity.

    pidiff train --encoded ENC --identity ID --sd SD15 --out OUT         # one identity
    pidiff train --encoded ENC --identities A,B,C --sd SD15 --out OUT    # K identities, one UNet pass
    pidiff train --encoded ENC --split NAME --sd SD15 --out OUT          # every identity of a split
    accelerate launch -m pidiff.cli train ...                            # identity groups over GPUs

The fast path: a training step is one frozen-UNet forward + backward. VAE latents are sampled from
the stored mean/std and text embeddings of the finite template set are computed once, so neither
the VAE nor the text encoder is in the loop. Identities are trained in groups of `group_size`
(by default as many as the GPU's memory holds, up to 16; 4 on the CPU) that share one UNet pass; each identity has its own weights, its own random stream and its own
loss term, so a group gives the same per-identity result as one-by-one runs (up to floating point).

Outputs, for --identity OUT/pidiff.safetensors, for --identities and --split
OUT/<identity folder>/pidiff.safetensors (see `identity_folder`), each with loss.csv and loss.png
beside it; checkpoints under OUT/checkpoints/.
Read top to bottom: defaults, data, the training step, checkpoints, resuming, outputs, main.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pidiff.model import (DEFAULT_INFERENCE_SCALE, PIDiffAdapter, load_weights_metadata, model_fingerprint,
                          save_safetensors, save_weights)


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
    shards: str = ""              # folder of the source WebDataset shards, for identity labels (optional)
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
    # CUDA only. Off by default: on an H100 (bf16, K=8, eager) the contiguous UNet stepped in 0.249 s
    # against 0.276 s in channels_last (Docs/benchmarks.md, "Trainer on GPU").
    channels_last: bool = False
    # checkpoints and logging
    checkpoint_every: int = 200   # steps; 0 = never
    keep_checkpoints: bool = False  # keep them after the final weights are written
    resume: bool = False          # continue every unfinished group from its latest checkpoint
    log_every: int = 50


# What --resume compares with the weights and checkpoints it finds: the recipe fields change the
# trained weights; the run fields say where, how fast or how verbosely, and change them at most up
# to floating point (group_size, compile, ...). The data and the base model are compared through
# their fingerprints instead of their paths. `templates` is compared as the path it names.
# Every TrainConfig field is in exactly one of the two (tested).
RECIPE_FIELDS = ("steps", "batch_size", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps",
                 "visual_dropout", "text_dropout", "w_plus_noise", "placeholder", "templates", "seed",
                 "precision", "autocast")
RUN_FIELDS = ("encoded", "sd", "out", "identity", "identities", "split", "shards", "group_size", "default_lambda",
              "device", "compile", "compile_mode", "gradient_checkpointing", "channels_last", "checkpoint_every",
              "keep_checkpoints", "resume", "log_every")


# Prompt templates ("{}" = placeholder), in the style of Textual Inversion's small template set.
DEFAULT_TEMPLATES = (
    "a photo of {}",
    "a cropped photo of {}",
    "a close-up photo of {}",
    "a good photo of {}",
    "a bright photo of {}",
    "a dark photo of {}",
    "a clean photo of {}",
    "a nice photo of {}",
    "a portrait of {}",
    "a photo of the face of {}",
    "a blurry photo of {}",
    "a rendition of {}",
)


# ----------------------------------------------------------------------------------------------
# Data: one identity's training samples, resident on the device for the whole run.
@dataclass
class IdentitySamples:
    identity: str
    keys: list[str]
    w_plus: torch.Tensor       # [N, 18, 512]
    latent_mean: torch.Tensor  # [N, 4, h, w], already multiplied by the VAE scaling factor
    latent_std: torch.Tensor   # [N, 4, h, w], idem
    _fingerprint: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def to(self, device) -> "IdentitySamples":
        return dataclasses.replace(self, w_plus=self.w_plus.to(device), latent_mean=self.latent_mean.to(device),
                                   latent_std=self.latent_std.to(device))

    def fingerprint(self) -> str:
        """SHA-256 of the keys and tensors this identity was trained on; hashed once per object
        (the --resume checks and the trainer all ask for it)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps([self.identity, self.keys]).encode())
            for tensor in (self.w_plus, self.latent_mean, self.latent_std):
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def sample_labels(shard, shards_dir: str | Path | None) -> list[dict]:
    """Identity and role ("train" | "reference") of each row of an encoded shard.

    `pidiff encode` does not record them, so they come from, in order: a `samples` field in the
    encoded metadata (a JSON list aligned with `keys`), a sidecar `<shard>.samples.json` beside the
    encoded file ({key: {"identity": ..., "role": ...}}), or the `<key>.json` files of the source
    WebDataset shard `SHARDS_DIR/<source_shard>`.
    """
    if "samples" in shard.metadata:
        labels = json.loads(shard.metadata["samples"])
    else:
        sidecar = shard.path.with_name(shard.path.name.removesuffix(".safetensors") + ".samples.json")
        if sidecar.is_file():
            by_key = json.loads(sidecar.read_text())
        elif shards_dir is not None and "source_shard" in shard.metadata:
            by_key = read_shard_sample_json(Path(shards_dir) / shard.metadata["source_shard"])
        else:
            raise FileNotFoundError(f"{shard.path}: no identity labels: write {sidecar.name} beside it "
                                    "or pass --shards with the source WebDataset shards")
        missing = [key for key in shard.keys if key not in by_key]
        if missing:
            raise KeyError(f"{shard.path}: no identity label for samples {missing[:5]}")
        labels = [by_key[key] for key in shard.keys]
    for key, label in zip(shard.keys, labels):
        if not label.get("identity"):
            raise ValueError(f"{shard.path}: sample {key!r} has no identity")
        if label.get("role", "train") not in ("train", "reference"):
            raise ValueError(f"{shard.path}: sample {key!r} has role {label['role']!r}, not train/reference")
    return labels


def read_shard_sample_json(tar_path: Path) -> dict[str, dict]:
    """{key: parsed <key>.json} for every sample of a WebDataset shard."""
    from pidiff import shards

    index = shards.index_shard(tar_path, required_extensions=("json",))
    labels = {}
    with open(tar_path, "rb") as f:
        for key in index.keys:
            member = index.members[key]["json"]
            f.seek(member.offset)
            labels[key] = json.loads(f.read(member.size))
    return labels


def split_shard_paths(encoded_dir: Path, split: str) -> list[Path]:
    """The encoded shards of `split`, NAME-NNNNNN.safetensors (six digits), or every shard without a split.

    Matched on the whole file name rather than globbed: split names may hold '-', and `v1-*` would
    also take the shards of a split `v1-small`.
    """
    paths = sorted(encoded_dir.glob("*.safetensors"))
    if not split:
        return paths
    shard_name = re.compile(re.escape(split) + r"-[0-9]{6}\.safetensors")
    return [path for path in paths if shard_name.fullmatch(path.name)]


def load_training_samples(encoded_dir: str | Path, identities: list[str] | None, split: str = "",
                          shards_dir: str | Path | None = None) -> dict[str, IdentitySamples]:
    """Training samples (role "train") per identity, from the encoded shards in `encoded_dir`.

    Latent mean/std are stored unscaled; they are multiplied here by the shard's VAE scaling
    factor (0.18215 for SD1.5), as SD's training does with sampled latents.
    """
    from pidiff.encode import read_encoded_shard  # the reader of `pidiff encode`'s format

    encoded_dir = Path(encoded_dir)
    paths = split_shard_paths(encoded_dir, split)
    if not paths:
        pattern = f"{split}-NNNNNN.safetensors" if split else "*.safetensors"
        raise FileNotFoundError(f"no encoded shards {pattern} in {encoded_dir}")
    wanted = set(identities) if identities else None
    rows: dict[str, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    encoders: dict[tuple[str, str], Path] = {}  # (e4e, VAE) fingerprints → the first shard used made with them
    for path in paths:
        shard = read_encoded_shard(path)
        scale = shard.scaling_factor
        taken = [(i, key, label["identity"]) for i, (key, label) in enumerate(zip(shard.keys, sample_labels(shard, shards_dir)))
                 if label.get("role", "train") == "train" and (wanted is None or label["identity"] in wanted)]
        if not taken:
            continue  # only what is trained on is checked: other splits or identities may differ
        encoders.setdefault((shard.metadata.get("e4e_sha256", "unrecorded"), shard.metadata.get("vae_sha256", "unrecorded")), path)
        if len(encoders) > 1:
            ((e4e_a, vae_a), earlier), ((e4e_b, vae_b), later) = list(encoders.items())[:2]
            raise ValueError(f"{earlier.name} (e4e {e4e_a[:12]}, VAE {vae_a[:12]}) and {later.name} (e4e {e4e_b[:12]}, "
                             f"VAE {vae_b[:12]}) in {encoded_dir} were not encoded with the same models: their w+ and "
                             "latents do not share one space; re-encode them with one e4e and one VAE")
        for i, key, identity in taken:
            w, mean, std = shard.w_plus[i].float(), shard.latent_mean[i].float() * scale, shard.latent_std[i].float() * scale
            if not (torch.isfinite(w).all() and torch.isfinite(mean).all() and torch.isfinite(std).all()):
                raise ValueError(f"{path}: non-finite w+ or latents for the sample {key!r} of {identity!r}; re-encode the shard")
            rows.setdefault(identity, []).append((key, w, mean, std))
    if wanted is not None and (missing := sorted(wanted - set(rows))):
        raise ValueError(f"no training samples in {encoded_dir} for identities {missing}")
    samples = {}
    for identity in sorted(rows):
        keys, w, mean, std = zip(*sorted(rows[identity], key=lambda row: row[0]))
        samples[identity] = IdentitySamples(identity, list(keys), torch.stack(w), torch.stack(mean), torch.stack(std))
    return samples


def prompt_texts(config: TrainConfig) -> list[str]:
    """The template prompts with the placeholder filled in; the empty prompt comes last."""
    templates = DEFAULT_TEMPLATES
    if config.templates:
        templates = [line.strip() for line in Path(config.templates).read_text().splitlines() if line.strip()]
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"{config.templates}: every template needs a '{{}}' for the placeholder")
    return [t.format(config.placeholder) for t in templates] + [""]


@torch.no_grad()
def encode_prompts(sd_path: str | Path, prompts: list[str], device) -> torch.Tensor:
    """CLIP text-encoder embeddings [P, 77, D] (last hidden state, as SD1.5 uses), computed once."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(Path(sd_path) / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(Path(sd_path) / "text_encoder").to(device).eval()
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(device)
    return text_encoder(tokens)[0].float()


def ddpm_noise_levels(sd_path: str | Path | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """√ᾱ_t and √(1−ᾱ_t) of SD1.5's DDPM schedule (scaled_linear β 0.00085…0.012, 1000 steps)."""
    scheduler = {}
    config_path = Path(sd_path) / "scheduler" / "scheduler_config.json" if sd_path else None
    if config_path and config_path.is_file():
        scheduler = json.loads(config_path.read_text())
    if scheduler.get("beta_schedule", "scaled_linear") != "scaled_linear":
        raise ValueError(f"{config_path}: only SD1.5's scaled_linear β schedule is supported")
    beta_start, beta_end = scheduler.get("beta_start", 0.00085), scheduler.get("beta_end", 0.012)
    steps = scheduler.get("num_train_timesteps", 1000)
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return alphas_cumprod.sqrt().float().to(device), (1.0 - alphas_cumprod).sqrt().float().to(device)


def identity_seed(seed: int, identity: str) -> int:
    """Each identity's random stream depends only on (seed, identity), not on its group."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{identity}".encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# The training step.
class IdentityGroupTrainer:
    """Trains K identities at once on a frozen UNet: batch = K × batch_size, identity-major."""

    def __init__(self, unet, text_embeddings: torch.Tensor, samples: list[IdentitySamples],
                 config: TrainConfig, device, noise_levels):
        self.config = config
        self.device = torch.device(device)
        # Hashed once, from the host copies: checkpoints and the weights' metadata record them.
        self.data_fingerprints = [s.fingerprint() for s in samples]
        self.samples = [s.to(self.device) for s in samples]
        self.identities = [s.identity for s in samples]
        self.text_embeddings = text_embeddings  # [templates + 1, 77, D]; last row = empty prompt
        self.num_templates = text_embeddings.shape[0] - 1
        self.sqrt_alpha_bar, self.sqrt_one_minus_alpha_bar = noise_levels
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

    # ------------------------------------------------------------------------------------------
    # Checkpoints: weights (safetensors), optimizer, random streams, losses. Resuming from one
    # continues bit-for-bit on the same device.
    def save_checkpoint(self, checkpoint_dir: Path) -> Path:
        final = checkpoint_dir / f"step-{self.step:06d}"
        partial = checkpoint_dir / f".step-{self.step:06d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_safetensors({k: v.detach().contiguous() for k, v in self.adapter.state_dict().items()},
                         partial / "adapter.safetensors")
        torch.save(self.optimizer.state_dict(), partial / "optimizer.pt")
        torch.save([g.get_state() for g in self.generators], partial / "rng.pt")
        state = {"step": self.step, "identities": self.identities, "losses": self.losses,
                 "config": dataclasses.asdict(self.config), "data_fingerprints": self.data_fingerprints}
        (partial / "state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)  # a checkpoint directory is complete or absent
        for older in checkpoint_dir.glob("step-*"):
            if older != final:
                shutil.rmtree(older)
        return final

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((path / "state.json").read_text())
        check_checkpoint_state(path, state, self.config, self.identities, self.data_fingerprints)
        self.adapter.load_state_dict(load_file(str(path / "adapter.safetensors"), device=str(self.device)))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.device, weights_only=True))
        for generator, rng_state in zip(self.generators, torch.load(path / "rng.pt", weights_only=True)):
            generator.set_state(rng_state)
        self.step, self.losses = state["step"], state["losses"]


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob("step-*"))
    return found[-1] if found else None


def group_checkpoint_dir(out: Path, group_index: int, group_count: int) -> Path:
    return out / "checkpoints" / (f"group-{group_index:04d}" if group_count > 1 else "")


def remove_checkpoints(checkpoint_dir: Path) -> None:
    """A finished group's checkpoints, and the folders they leave empty; nothing of other groups
    (a one-group run's folder is OUT/checkpoints itself, which may hold another run's groups)."""
    for step in [*checkpoint_dir.glob("step-*"), *checkpoint_dir.glob(".step-*.partial")]:
        shutil.rmtree(step, ignore_errors=True)
    # Only the group's own folder: OUT/checkpoints itself may be being filled by another rank
    # (removed at the end of a one-process run, in train_groups).
    try:
        checkpoint_dir.rmdir()
    except OSError:
        pass  # not empty: other groups' (or other runs') checkpoints


# ----------------------------------------------------------------------------------------------
# Resuming: only from weights and checkpoints this run would itself have written.
def recipe_differences(saved_config: dict, config: TrainConfig) -> list[str]:
    """The recipe fields in which a saved configuration (decoded JSON) differs from `config`."""
    current = dataclasses.asdict(config)
    differences = []
    for name in RECIPE_FIELDS:
        if name not in saved_config:  # written before the field existed: its meaning then is unknown
            differences.append(f"{name} (not recorded) -> {current[name]!r}")
        elif saved_config[name] != current[name]:
            differences.append(f"{name} {saved_config[name]!r} -> {current[name]!r}")
    return differences


def check_finished_weights(path: Path, data: IdentitySamples, config: TrainConfig, base_fingerprint: str) -> None:
    """--resume keeps an identity's weights only if this run would write the same: the same identity,
    recipe, training samples and base model. Anything else is an error, not a skip: keeping them
    would silently mix recipes under one `train_config.json`."""
    metadata = load_weights_metadata(path)
    differences = []
    if metadata.get("identity") != data.identity:
        differences.append(f"identity {metadata.get('identity')!r} -> {data.identity!r}")
    differences += recipe_differences(json.loads(metadata.get("config", "{}")), config)
    if metadata.get("data_fingerprint") != data.fingerprint():
        differences.append(f"data_fingerprint (the training samples of {data.identity!r} changed)")
    if metadata.get("base_model") != base_fingerprint:
        differences.append(f"base_model {metadata.get('base_model', '')[:12]}… -> {base_fingerprint[:12]}…")
    if differences:
        raise ValueError(f"--resume: {path} was trained differently from this run ({'; '.join(differences)}); "
                         "remove it or pick another --out")


def check_checkpoint_state(path: Path, state: dict, config: TrainConfig, identities: list[str],
                           data_fingerprints: list[str]) -> None:
    """A checkpoint continues a run only under the recipe, identities and samples it was started with."""
    differences = []
    if state["identities"] != identities:
        differences.append(f"identities {state['identities']} -> {identities}")
    differences += recipe_differences(state.get("config", {}), config)
    # Checkpoints written before the fingerprints were recorded cannot be checked for their data;
    # those of other identities are not compared sample by sample.
    if state["identities"] == identities and state.get("data_fingerprints", data_fingerprints) != data_fingerprints:
        changed = [name for name, before, now in zip(identities, state["data_fingerprints"], data_fingerprints)
                   if before != now]
        differences.append(f"data_fingerprints (the training samples of {changed or identities} changed)")
    if differences:
        raise ValueError(f"--resume: checkpoint {path} belongs to a different run ({'; '.join(differences)}); "
                         "remove it or pick another --out")


def check_resumable(groups: list[list[str]], output_dirs: dict[str, Path], samples: dict[str, IdentitySamples],
                    config: TrainConfig, base_fingerprint: str) -> None:
    """Everything --resume would keep or continue from, checked before anything is trained or written.

    Every rank checks every group, so all ranks stop together rather than some training on."""
    out = Path(config.out)
    # Where this run looks for each group's checkpoints: a checkpoint anywhere else would be
    # silently started over, so it is an error unless its group is already finished.
    where = {tuple(group): group_checkpoint_dir(out, index, len(groups)) for index, group in enumerate(groups)}
    for state_file in sorted((out / "checkpoints").glob("**/step-*/state.json")):
        try:
            held = tuple(json.loads(state_file.read_text())["identities"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"--resume: checkpoint {state_file.parent} has no readable state.json; remove it") from None
        if not set(held) <= set(samples) or all((output_dirs[name] / "pidiff.safetensors").is_file() for name in held):
            continue  # another selection's group, or a finished one kept by --keep-checkpoints
        if held not in where:
            raise ValueError(f"--resume: checkpoint {state_file.parent} continues the group {list(held)}, which this run "
                             f"does not form (group size {config.group_size}); resume with --group-size {len(held)}, "
                             "or remove the checkpoint to start that group again")
        if state_file.parent.parent.resolve() != where[held].resolve():
            raise ValueError(f"--resume: checkpoint {state_file.parent} continues the group {list(held)}, which this run "
                             f"would continue from {where[held]} (its groups are numbered differently: another "
                             "selection of identities); resume with the interrupted run's identities, or move the "
                             "checkpoint folder there")
    for group_index, group in enumerate(groups):
        for name in group:
            if (path := output_dirs[name] / "pidiff.safetensors").is_file():
                check_finished_weights(path, samples[name], config, base_fingerprint)
        if (checkpoint := latest_checkpoint(group_checkpoint_dir(out, group_index, len(groups)))) is not None:
            state = json.loads((checkpoint / "state.json").read_text())
            if tuple(state["identities"]) != tuple(group) and tuple(state["identities"]) not in where:
                continue  # a finished group's kept checkpoint (checked above), not this group's
            check_checkpoint_state(checkpoint, state, config, group, [samples[name].fingerprint() for name in group])


# ----------------------------------------------------------------------------------------------
# Outputs: weights with metadata, loss curve as CSV and PNG.
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


def write_identity_outputs(trainer: IdentityGroupTrainer, k: int, directory: Path, base_fingerprint: str,
                           extra_metadata: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = trainer.samples[k]
    metadata = {
        "identity": data.identity,
        "base_model": base_fingerprint,
        "placeholder": trainer.config.placeholder,
        "default_lambda": trainer.config.default_lambda,
        "steps": trainer.step,
        "data_fingerprint": trainer.data_fingerprints[k],
        "train_keys": data.keys,
        "final_loss": trainer.losses[k][-1] if trainer.losses[k] else None,
        "config": dataclasses.asdict(trainer.config),
        **extra_metadata,
    }
    save_weights(directory / "pidiff.safetensors", trainer.adapter, k, metadata)
    write_loss_curve(trainer.losses[k], directory, f"{data.identity}: training loss")
    return directory / "pidiff.safetensors"


# ----------------------------------------------------------------------------------------------
# Putting it together.
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


# Training memory on an H100 (SD1.5 UNet in bf16, batch 4 per identity; Docs/benchmarks.md): eager
# 16.3 GiB at K=4 and 29.9 GiB at K=8, compiled 25.3 GiB at K=8 and 48.9 GiB at K=16. Eager, the
# dearer of the two, is 3.4 GiB per identity over 2.7 GiB; the auto group size allows 3.5 and 4.
# K=16 is the largest group measured (14.0 s per identity compiled, the best figure); on the CPU a
# larger group only makes each step longer, so it keeps 4.
AUTO_GROUP_GIB_PER_IDENTITY = 3.5
AUTO_GROUP_GIB_BASE = 4.0
AUTO_GROUP_MAX = 16
AUTO_GROUP_CPU = 4


def auto_group_size(config: TrainConfig, device_memory_bytes: int | None) -> int:
    """The group size `--group-size 0` resolves to: as many identities as 90 % of the card's memory
    holds (by the measured figures above, scaled with the batch and doubled in fp32), 1 to 16;
    AUTO_GROUP_CPU without a GPU."""
    if device_memory_bytes is None:
        return AUTO_GROUP_CPU
    per_identity = AUTO_GROUP_GIB_PER_IDENTITY * config.batch_size / 4 * (2 if config.precision == "fp32" else 1)
    base = AUTO_GROUP_GIB_BASE * (2 if config.precision == "fp32" else 1)
    fits = int((0.9 * device_memory_bytes / 2**30 - base) // per_identity)
    return max(1, min(AUTO_GROUP_MAX, fits))


def resolve_group_size(config: TrainConfig, world_size: int = 1, identities: int | None = None) -> TrainConfig:
    """Replace group_size 0 by auto_group_size; under several ranks the smallest card decides, since
    every rank must cut the identities into the same groups, and no group is larger than the ranks'
    fair share of `identities`, so no rank stays idle while another trains a big group."""
    if config.group_size:
        return config
    device = torch.device(config.device)
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    size = auto_group_size(config, memory)
    if identities and world_size > 1:
        size = max(1, min(size, -(-identities // world_size)))
    if world_size > 1 and torch.distributed.is_initialized():
        agreed = torch.tensor([size], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        size = int(agreed.item())
    return dataclasses.replace(config, group_size=size)


def resolved_group_size(config: TrainConfig, out: Path, world_size: int, identities: int, log=print) -> TrainConfig:
    """`--group-size 0` for this run. A --resume keeps the group size the interrupted run resolved
    (its train_config.json): checkpoints belong to groups, so another card or rank count must not
    regroup the identities and orphan them."""
    saved = out / "train_config.json"
    if config.resume and saved.is_file():
        try:
            size = int(json.loads(saved.read_text()).get("group_size", 0))
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"--resume: {saved} is not a readable run configuration ({error})") from None
        if size > 0:
            log(f"group size {size} (auto: the group size of the run being resumed, {saved})")
            return dataclasses.replace(config, group_size=size)
    config = resolve_group_size(config, world_size, identities)
    log(f"group size {config.group_size} (auto, for {config.device})")
    return config


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


# A folder name that is safe on every file system: portable characters, at most 100 of them, and
# no leading '.', so never '.', '..' or a hidden folder.
SAFE_FOLDER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
# What the run itself keeps under OUT: an identity of that name gets a hashed folder instead.
RESERVED_FOLDER_NAMES = ("checkpoints", "train_config.json")


def identity_folder(name: str) -> str:
    """The folder under OUT of an identity's outputs (the identity itself is in the weights' metadata).

    Identities are arbitrary catalog strings (slashes, dots, any unicode). A safe folder name is
    used as it is; any other becomes a readable ASCII slug of it plus '-' and 10 hex digits of its
    SHA-256, so it stays inside OUT and distinct identities never share a folder.
    """
    if SAFE_FOLDER_NAME.fullmatch(name) and name.casefold() not in RESERVED_FOLDER_NAMES:
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip("._-")[:80] or "identity"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def group_output_dirs(out: Path, identities: list[str], single: bool) -> dict[str, Path]:
    if single:
        return {name: out for name in identities}
    # "Ann" and "ann" are two identities but one folder on a case-insensitive file system (macOS's
    # default): the later one (in sorted order) gets its hash appended, as unsafe names do.
    dirs, taken = {}, set()
    for name in sorted(identities):
        folder = identity_folder(name)
        if folder.casefold() in taken:
            folder = f"{folder}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
        taken.add(folder.casefold())
        dirs[name] = out / folder
    return dirs


def train_groups(unet, text_embeddings: torch.Tensor, samples: dict[str, IdentitySamples], config: TrainConfig,
                 base_fingerprint: str, rank: int = 0, world_size: int = 1, log=print,
                 extra_metadata: dict[str, object] | None = None) -> dict[str, Path]:
    """Train every identity in `samples` in groups of `config.group_size`; returns weight paths.

    Writes OUT/train_config.json (rank 0), after --resume has checked what it would keep.
    """
    out = Path(config.out)
    names = sorted(samples)
    if not names:
        raise ValueError("no identities to train (the shards hold no training samples for this selection)")
    if not config.group_size:
        config = resolved_group_size(config, out, world_size, len(names), log)
    if config.identity and names != [config.identity]:
        raise ValueError(f"--identity {config.identity!r}, but the samples are of {names}")
    # The layout follows the command, not the data: a split that happens to hold one identity still
    # gets OUT/<identity>/, which is what callers of --split and --identities look for.
    output_dirs = group_output_dirs(out, names, single=bool(config.identity))
    groups = [names[i:i + config.group_size] for i in range(0, len(names), config.group_size)]
    if config.resume:
        check_resumable(groups, output_dirs, samples, config, base_fingerprint)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        partial = out / ".train_config.json.partial"  # other ranks may be reading the previous one
        partial.write_text(json.dumps(dataclasses.asdict(config), indent=2))
        os.replace(partial, out / "train_config.json")
    noise_levels = ddpm_noise_levels(config.sd or None, config.device)
    written = {}
    for group_index, group in list(enumerate(groups))[rank::world_size]:
        checkpoint_dir = group_checkpoint_dir(out, group_index, len(groups))
        finished = [n for n in group if (output_dirs[n] / "pidiff.safetensors").is_file()]
        if config.resume and len(finished) == len(group):
            log(f"group {group_index}: {', '.join(group)} already trained, skipped")
            written.update({n: output_dirs[n] / "pidiff.safetensors" for n in group})
            continue
        trainer = IdentityGroupTrainer(unet, text_embeddings, [samples[n] for n in group], config,
                                       config.device, noise_levels)
        if (config.resume and (checkpoint := latest_checkpoint(checkpoint_dir)) is not None
                and json.loads((checkpoint / "state.json").read_text())["identities"] == group):
            trainer.load_checkpoint(checkpoint)
            log(f"group {group_index}: resumed from {checkpoint} at step {trainer.step}")
        log(f"group {group_index}: training {', '.join(group)} "
            f"({sum(len(samples[n].keys) for n in group)} samples)")
        trainer.run(checkpoint_dir if config.checkpoint_every else None, log=log)
        for k, name in enumerate(group):
            written[name] = write_identity_outputs(trainer, k, output_dirs[name], base_fingerprint,
                                                   extra_metadata or {})
        trainer.adapter.uninstall(unet)
        if not config.keep_checkpoints:
            remove_checkpoints(checkpoint_dir)
    if world_size == 1 and not config.keep_checkpoints:
        try:
            (out / "checkpoints").rmdir()  # left empty by the groups above
        except OSError:
            pass  # absent, or holding another run's checkpoints
    return written


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
    return parser


def config_from_args(argv: list[str]) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
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


def distributed_context(config: TrainConfig) -> tuple[int, int, TrainConfig]:
    """(rank, world size, config with this rank's device) under `accelerate launch` or `torchrun`.

    Ranks share nothing but the output folder: each trains every world_size-th identity group.
    Without CUDA the ranks run on CPU over gloo (accelerate only does so when asked with cpu=True;
    otherwise every process would believe it is alone and train every group)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return 0, 1, config
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available() or config.device == "cpu")
    if state.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes but accelerate sees {state.num_processes} "
                           f"({state.distributed_type}); refusing to train every group in every process")
    return state.process_index, state.num_processes, dataclasses.replace(config, device=str(state.device))


def main(argv: list[str] | None = None) -> int:
    """User errors (flags, missing or broken inputs, --resume refusals) are one line and exit 2; a
    diverged run is one line and exit 1, its last good checkpoint left in place."""
    try:
        return run_training(sys.argv[1:] if argv is None else argv)
    except (ValueError, OSError) as error:
        print(f"pidiff train: {error}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as error:
        print(f"pidiff train: {error}", file=sys.stderr, flush=True)
        return 1


def run_training(argv: list[str]) -> int:
    config = resolve_device_and_precision(config_from_args(argv))
    rank, world_size, config = distributed_context(config)
    log = (lambda message: print(f"[rank {rank}] {message}", flush=True)) if world_size > 1 else \
        (lambda message: print(message, flush=True))
    from diffusers import UNet2DConditionModel

    # --identity is taken whole: an identity may itself hold a comma.
    wanted = [config.identity] if config.identity else ([name for name in config.identities.split(",") if name] or None)
    samples = load_training_samples(config.encoded, wanted, config.split, config.shards or None)
    if not samples:
        raise ValueError(f"no identities with training samples in {config.encoded}"
                         + (f" for the split {config.split!r}" if config.split else "") + " (only reference samples?)")
    log(f"{len(samples)} identities, {sum(len(s.keys) for s in samples.values())} training samples")

    unet = UNet2DConditionModel.from_pretrained(Path(config.sd) / "unet")
    base_fingerprint = model_fingerprint(unet)
    unet = prepare_frozen_unet(unet, config)
    text_embeddings = encode_prompts(config.sd, prompt_texts(config), config.device).to(unet.dtype)

    extra = {"base_model_path": str(config.sd), "random_base_model": (Path(config.sd) / "pidiff-random-model.json").is_file()}
    written = train_groups(unet, text_embeddings, samples, config, base_fingerprint, rank, world_size, log, extra)
    for name, path in written.items():
        log(f"{name}: {path}")
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()  # every rank's weights are on disk when any rank returns
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
