"""Time the PIDiff training step: seconds per step and per 600-step identity, one vs K identities.

    python Trainer/bench/bench_train.py --device cuda --full              # SD1.5-size UNet, ~1-2 min
    python Trainer/bench/bench_train.py --device cuda --full --compile    # + torch.compile (minutes)
    python Trainer/bench/bench_train.py --device cpu --tiny               # smoke test

Runs the trainer's own step (pidiff.train.IdentityGroupTrainer.train_step) on a random-init UNet
with SD1.5's config written out in code (no download), random latents and text embeddings, batch 4
per identity. Configurations: one identity eager (bf16 UNet, fp32 trainables, no autocast), the
same under autocast, K identities sharing one UNet pass for each K in --k, and with --compile one
compiled run at --compile-k. An out-of-memory configuration is reported as such and skipped.
Prints a line per configuration, then one JSON line with every figure.

Imports only torch, diffusers and safetensors (through pidiff.model, pidiff.data and pidiff.train).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Trainer/, for `pidiff`

from pidiff.model import SD15_UNET_CONFIG, TINY_SD15_UNET_CONFIG  # noqa: E402
from pidiff.data import IdentitySamples  # noqa: E402
from pidiff.train import (  # noqa: E402
    IdentityGroupTrainer,
    TrainConfig,
    prepare_frozen_unet,
    resolve_device_and_precision,
)

STEPS_PER_IDENTITY = 600  # the paper's recipe
SAMPLES_PER_IDENTITY = 6
TEXT_TEMPLATES = 12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_identity(name: str, latent_size: int, generator: torch.Generator) -> IdentitySamples:
    shape = (SAMPLES_PER_IDENTITY, 4, latent_size, latent_size)
    return IdentitySamples(name, [f"{name}_{i}" for i in range(SAMPLES_PER_IDENTITY)],
                           torch.randn(SAMPLES_PER_IDENTITY, 18, 512, generator=generator),
                           torch.randn(shape, generator=generator), 0.1 * torch.rand(shape, generator=generator))


def time_configuration(unet, text_embeddings, k: int, config: TrainConfig, latent_size: int,
                       warmup: int, steps: int, label: str) -> dict:
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(k)
    samples = [random_identity(f"id{i}", latent_size, generator) for i in range(k)]
    result = {"config": label, "k": k, "batch": k * config.batch_size, "autocast": config.autocast,
              "compile": config.compile, "gradient_checkpointing": config.gradient_checkpointing}
    trainer = None
    try:
        trainer = IdentityGroupTrainer(unet, text_embeddings, samples, config)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        first_losses = trainer.train_step()  # the first step pays for cuDNN autotuning and, if compiling, compilation
        synchronize(device)
        result["first_step_s"] = time.perf_counter() - started
        # Same identities, seed and initial weights in every configuration: the first step's losses
        # must agree between configurations up to bf16 rounding.
        result["first_losses"] = [round(float(v), 6) for v in first_losses]
        for _ in range(warmup - 1):
            trainer.train_step()
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            losses = trainer.train_step()
        synchronize(device)
        seconds_per_step = (time.perf_counter() - started) / steps
        result.update(
            s_per_step=seconds_per_step,
            s_per_identity_600=seconds_per_step * STEPS_PER_IDENTITY / k,
            samples_per_s=k * config.batch_size / seconds_per_step,
            final_loss=float(losses.mean()),
        )
        if device.type == "cuda":
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.cuda.OutOfMemoryError:
        result["error"] = "out of memory"
    except Exception as error:  # e.g. a compiler failure: keep the other configurations' figures
        result["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    finally:
        if trainer is not None and trainer.adapter._replaced_processors is not None:
            trainer.adapter.uninstall(unet)
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def describe(result: dict) -> str:
    name = f"{result['config']:<24} K={result['k']:<2} batch {result['batch']:<3}"
    if "error" in result:
        return f"{name} {result['error']}"
    line = (f"{name} {result['s_per_step']:.4f} s/step  {result['s_per_identity_600']:.1f} s per 600-step identity  "
            f"{result['samples_per_s']:.0f} samples/s  first step {result['first_step_s']:.1f} s")
    line += f"  first loss {sum(result['first_losses']) / len(result['first_losses']):.5f}"
    if "peak_memory_gib" in result:
        line += f"  peak {result['peak_memory_gib']:.1f} GiB"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="SD1.5-size UNet, 64x64 latents (default)")
    size.add_argument("--tiny", action="store_true", help="tiny UNet of the same topology, 16x16 latents")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--k", default="4,8", help="comma-separated identity counts to batch")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 25, tiny 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, tiny 1)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd run")
    parser.add_argument("--compile-k", type=int, default=4, help="identities in the compiled run")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-autocast-comparison", action="store_true", help="skip the autocast run")
    parser.add_argument("--no-single", action="store_true", help="skip the one-identity runs (eager, autocast)")
    parser.add_argument("--layout-comparison", action="store_true",
                        help="last, time the largest K eagerly with the UNet in the other memory format than the default")
    args = parser.parse_args(argv)

    tiny = args.tiny
    steps = args.steps or (3 if tiny else 25)
    warmup = args.warmup or (1 if tiny else 3)
    latent_size = 16 if tiny else 64
    base = resolve_device_and_precision(TrainConfig(device=args.device, gradient_checkpointing=args.gradient_checkpointing))
    device = torch.device(base.device)

    from diffusers import UNet2DConditionModel

    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(TINY_SD15_UNET_CONFIG if tiny else SD15_UNET_CONFIG))
    unet = prepare_frozen_unet(unet, base)
    text_embeddings = torch.randn(TEXT_TEMPLATES + 1, 77, unet.config.cross_attention_dim, device=device).to(unet.dtype)
    synchronize(device)
    build_s = time.perf_counter() - started
    unet_params = sum(p.numel() for p in unet.parameters())
    print(f"{'tiny' if tiny else 'SD1.5'} UNet ({unet_params / 1e6:.0f}M params, {base.precision}) on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"built in {build_s:.1f} s; batch {base.batch_size} per identity, {steps} timed steps", flush=True)

    plan = [] if args.no_single else [("eager", 1, base)]
    if base.precision == "bf16" and not args.no_autocast_comparison and not args.no_single:
        plan.append(("eager+autocast", 1, dataclasses.replace(base, autocast=True)))
    plan += [("eager", k, base) for k in (int(k) for k in args.k.split(",") if k)]
    if args.compile:
        plan.append((f"compile[{args.compile_mode}]", args.compile_k,
                     dataclasses.replace(base, compile=True, compile_mode=args.compile_mode)))
    if args.layout_comparison:
        plan.append((f"eager {'contiguous' if base.channels_last else 'channels_last'}",
                     max(int(k) for k in args.k.split(",") if k), dataclasses.replace(base, channels_last=not base.channels_last)))

    results = []
    for label, k, config in plan:
        if device.type == "cuda":  # the UNet's layout follows the configuration
            unet.to(memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
        result = time_configuration(unet, text_embeddings, k, config, latent_size, warmup, steps, label)
        print(describe(result), flush=True)
        results.append(result)

    summary = {
        "bench": "pidiff-train",
        "unet": "tiny" if tiny else "sd15",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": base.precision,
        "batch_per_identity": base.batch_size,
        "latent_size": latent_size,
        "timed_steps": steps,
        "unet_build_s": build_s,
        "results": results,
    }
    if done := [r for r in results if "error" not in r]:
        best = min(done, key=lambda r: r["s_per_identity_600"])
        summary["best"] = {"config": best["config"], "k": best["k"], "s_per_identity_600": best["s_per_identity_600"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
