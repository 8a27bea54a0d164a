"""Throughput of the two encoders behind `pidiff encode`, with random weights built in memory.

    python Trainer/bench/bench_encode.py --device cuda --full     # SD1.5 VAE + official-size e4e
    python Trainer/bench/bench_encode.py --device cpu --tiny      # smoke test

Measures the exact code `pidiff encode` runs per batch (pidiff.encode.ShardEncoder: uint8 in,
e4e under bf16 autocast + channels_last, VAE with bf16 weights) on inputs already on the device,
so the figures are model throughput; PNG decoding runs in DataLoader workers and is reported
separately as samples/s per core. Prints one line per measurement and one JSON line at the end.

--compile adds torch.compile'd settings at the largest VAE batch (one compilation per encoder
and VAE layout, a minute or more each; allow ~5 minutes). Each setting also times the combined
per-batch step; the best one is `combined_images_per_s_measured`.

Only torch, diffusers and safetensors are needed (no webdataset, open_clip or pidiff install):
the Trainer folder is put on sys.path.

Reference (one H100, plain diffusers, the project's design figures): VAE encode 512^2 bf16 84 img/s at
batch 1, 167 at batch 32; official e4e 256^2 bf16 autocast 37 img/s at batch 1, 1660 at batch 64
with channels_last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pidiff.e4e import OFFICIAL_E4E_ARCHITECTURE, TINY_E4E_ARCHITECTURE  # noqa: E402
from pidiff.encode import ShardEncoder  # noqa: E402
from pidiff.random_model import SD15_VAE_CONFIG, TINY_VAE_CONFIG, build_random_e4e, build_random_vae  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step, batch: int, device: torch.device, warmup: int, min_seconds: float) -> float:
    """Warm up, time one call to size the run, then time enough calls to last min_seconds with a
    single synchronisation at the end (no per-iteration sync bubbles)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    single = time.perf_counter() - start
    iterations = max(1, math.ceil(min_seconds / max(single, 1e-6)))
    if iterations == 1:
        return batch / single
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    return batch * iterations / (time.perf_counter() - start)


def flops_per_image(module_call, example: torch.Tensor) -> float | None:
    """FLOPs of one image through `module_call`, counted by torch on a batch of one."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module_call(example)
        return float(counter.get_total_flops())
    except Exception as error:  # counting is informative only; never fail the benchmark on it
        print(f"(flop count unavailable: {error})", file=sys.stderr)
        return None


def decode_samples_per_second_per_core(seconds: float = 1.0) -> float | None:
    """PNG decode rate of one DataLoader worker for one sample (512^2 .png + 256^2 .e4e.png)."""
    import tempfile

    try:
        from pidiff.shards import ShardSamples, index_shard, synthetic_face_sample, write_test_shard

        with tempfile.TemporaryDirectory() as tmp:
            shard = write_test_shard(Path(tmp) / "bench-000000.tar", {"k": synthetic_face_sample(0)})
            dataset = ShardSamples([index_shard(shard)])
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # one worker = one core
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                dataset[0]
                count += 1
            torch.set_num_threads(threads)
            return count / (time.perf_counter() - start)
    except ImportError:  # numpy or Pillow absent on this machine
        return None


def significant(value: float, digits: int = 3) -> float:
    """Round to significant digits: CPU rates are fractions of an image per second."""
    return float(f"{value:.{digits}g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="official e4e (267M) and SD1.5 VAE (84M) sizes (default)")
    size.add_argument("--tiny", action="store_true", help="tiny models of the same topology (smoke test)")
    parser.add_argument("--e4e-batches", default=None, help="comma list; default 1,64 on CUDA, 1,8 on CPU")
    parser.add_argument("--vae-batches", default=None, help="comma list; default 1,32 on CUDA, 1,4 on CPU")
    parser.add_argument("--vae-layouts", default="contiguous,channels_last", help="VAE memory formats to compare")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--min-seconds", type=float, default=None, help="timed seconds per measurement (default 3 CUDA, 1 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3 CUDA, 2 CPU)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd encoders")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled settings (e.g. max-autotune)")
    parser.add_argument("--configs", default=None,
                        help="comma list of MODE:LAYOUT (MODE eager|compiled|compiled-vae (the VAE alone compiled), "
                             "LAYOUT contiguous|channels_last), measured in this order; default: every --vae-layouts eagerly, then (with --compile) compiled")
    parser.add_argument("--overlap", action="store_true",
                        help="CUDA: also measure each combined step with the e4e on a second stream")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if on_cuda else "fp32")
    e4e_batches = [int(b) for b in (args.e4e_batches or ("1,64" if on_cuda else "1,8")).split(",")]
    vae_batches = [int(b) for b in (args.vae_batches or ("1,32" if on_cuda else "1,4")).split(",")]
    layouts = [layout.strip() for layout in args.vae_layouts.split(",") if layout.strip()]
    min_seconds = args.min_seconds if args.min_seconds is not None else (3.0 if on_cuda else 1.0)
    warmup = args.warmup if args.warmup is not None else (3 if on_cuda else 2)
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # as `pidiff encode` does

    e4e_architecture = TINY_E4E_ARCHITECTURE if args.tiny else OFFICIAL_E4E_ARCHITECTURE
    vae_config = TINY_VAE_CONFIG if args.tiny else SD15_VAE_CONFIG
    e4e = build_random_e4e(e4e_architecture, seed=args.seed, device=device)
    vae = build_random_vae(vae_config, seed=args.seed, device=device)

    report: dict = {
        "device": torch.cuda.get_device_name(device) if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "size": "tiny" if args.tiny else "full",
        "precision": precision,
        "e4e_params_m": round(sum(p.numel() for p in e4e.parameters()) / 1e6, 2),
        "vae_encoder_params_m": round(sum(p.numel() for p in vae.encoder.parameters()) / 1e6, 2),
    }
    try:
        import diffusers

        report["diffusers"] = diffusers.__version__
    except ImportError:
        pass

    def random_images(batch: int, size: int) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(batch)
        return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device, generator=generator)

    def log(name: str, value: float) -> None:
        print(f"{name:<44} {value:10.4g} img/s", flush=True)

    # Settings: every VAE layout eagerly at every batch size; with --compile, also compiled at the
    # largest VAE batch only (each new shape is another compilation, a minute or more).
    combined_batch = max(vae_batches)
    settings = [(layout, False) for layout in layouts] + ([(layout, True) for layout in layouts] if args.compile else [])
    if args.configs:
        settings = []
        for item in (item.strip() for item in args.configs.split(",") if item.strip()):
            mode, _, layout = item.partition(":")
            if mode not in ("eager", "compiled", "compiled-vae") or layout not in ("contiguous", "channels_last"):
                parser.error(f"--configs: {item!r} is not eager|compiled|compiled-vae:contiguous|channels_last")
            settings.append((layout, {"eager": False, "compiled": True, "compiled-vae": "vae"}[mode]))
    first_call_s: dict[str, float] = {}
    reference_outputs: dict[int, list[torch.Tensor]] = {}
    rel_errors: dict[str, dict[str, float]] = {}
    e4e_modes_done: set[bool] = set()
    e4e_rates: dict[str, float] = {}
    vae_rates: dict[str, float] = {}
    combined_rates: dict[str, float] = {}

    def measure_setting(layout: str, compiled: bool | str) -> None:
        suffix = {False: "", True: "_compiled", "vae": "_compiled_vae"}[compiled]
        e4e_compiled = compiled is True
        # Measure everything for a setting before building the next: ShardEncoder sets the
        # layout of the shared modules, and compiled graphs are specialised to it.
        encoder = ShardEncoder(e4e, vae, device, precision, vae_channels_last=layout == "channels_last",
                               compile=bool(compiled), compile_e4e=e4e_compiled, compile_mode=args.compile_mode)

        def first_call(key: str, call) -> None:  # a compiled encoder compiles on its first call: time it
            started = time.perf_counter()
            call()
            synchronize(device)
            first_call_s[key] = round(time.perf_counter() - started, 1)
            print(f"{'first call (compiles) ' + key:<44} {first_call_s[key]:10.1f} s", flush=True)

        if e4e_compiled not in e4e_modes_done:  # the VAE layout does not affect the e4e: once per mode
            e4e_modes_done.add(e4e_compiled)
            for batch in [combined_batch] if e4e_compiled else e4e_batches:
                images = random_images(batch, 256)
                if e4e_compiled:
                    first_call(f"e4e_b{batch}", lambda: encoder.encode_w_plus(images))
                rate = images_per_second(lambda: encoder.encode_w_plus(images), batch, device, warmup, min_seconds)
                e4e_rates[f"b{batch}{'_compiled' if e4e_compiled else ''}"] = rate
                log(f"e4e 256^2 batch {batch}{'_compiled' if e4e_compiled else ''}", rate)
        for batch in [combined_batch] if compiled else vae_batches:
            images = random_images(batch, 512)
            if compiled:
                first_call(f"vae_{layout}_b{batch}", lambda: encoder.encode_latents(images))
            rate = images_per_second(lambda: encoder.encode_latents(images), batch, device, warmup, min_seconds)
            vae_rates[f"{layout}_b{batch}{suffix}"] = rate
            log(f"vae 512^2 {layout} batch {batch}{suffix}", rate)
        # Both encoders exactly as `pidiff encode` runs them per batch.
        e4e_images, vae_images = random_images(combined_batch, 256), random_images(combined_batch, 512)
        # Outputs on the same inputs, against the first setting's: the settings must agree up to rounding.
        outputs = [t.float() for t in encoder.encode_batch(e4e_images, vae_images)]
        reference = reference_outputs.setdefault(combined_batch, outputs)
        errors = {name: float((out - ref).norm() / ref.norm()) for name, out, ref in zip(("w_plus", "mean", "std"), outputs, reference)}
        rel_errors[f"{layout}_b{combined_batch}{suffix}"] = {k: float(f"{v:.3g}") for k, v in errors.items()}
        print(f"{'rel. error vs first setting ' + layout + suffix:<44} " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()), flush=True)
        rate = images_per_second(lambda: encoder.encode_batch(e4e_images, vae_images), combined_batch, device, warmup, min_seconds)
        combined_rates[f"{layout}_b{combined_batch}{suffix}"] = rate
        log(f"e4e + vae {layout} batch {combined_batch}{suffix}", rate)
        if args.overlap and on_cuda:
            encoder.set_overlap(True)
            rate = images_per_second(lambda: encoder.encode_batch(e4e_images, vae_images), combined_batch, device, warmup, min_seconds)
            combined_rates[f"{layout}_b{combined_batch}{suffix}_overlap"] = rate
            log(f"e4e + vae {layout} batch {combined_batch}{suffix} overlap", rate)

    compile_errors: list[str] = []
    for layout, compiled in settings:
        try:
            measure_setting(layout, compiled)
        except Exception as error:  # a compiler failure must not lose the eager figures
            if not compiled:
                raise
            compile_errors.append(f"{layout}: {type(error).__name__}: {error}"[:500])
            print(f"compiled {layout} failed: {compile_errors[-1]}", file=sys.stderr, flush=True)

    best_e4e_key = max(e4e_rates, key=e4e_rates.get)
    best_vae_key = max(vae_rates, key=vae_rates.get)
    best_combined_key = max(combined_rates, key=combined_rates.get)
    # Every image goes through both encoders, so the pipeline rate is the harmonic combination.
    combined_estimate = 1.0 / (1.0 / e4e_rates[best_e4e_key] + 1.0 / vae_rates[best_vae_key])

    counting = ShardEncoder(e4e, vae, device, precision)  # eager: the FLOP counter sees every op
    e4e_flops = flops_per_image(counting.encode_w_plus, random_images(1, 256))
    vae_flops = flops_per_image(counting.encode_latents, random_images(1, 512))
    decode_rate = decode_samples_per_second_per_core()

    report.update({
        "e4e_images_per_s": {k: significant(v) for k, v in e4e_rates.items()},
        "vae_images_per_s": {k: significant(v) for k, v in vae_rates.items()},
        "combined_images_per_s_estimate": significant(combined_estimate),
        "combined_images_per_s": {k: significant(v) for k, v in combined_rates.items()},
        "combined_images_per_s_measured": significant(combined_rates[best_combined_key]),
        "combined_best_setting": best_combined_key,
        "compile_errors": compile_errors or None,
        "compile_mode": args.compile_mode,
        "first_call_s": first_call_s,
        "rel_error_vs_first_setting": rel_errors,
        "e4e_gflop_per_image": round(e4e_flops / 1e9, 1) if e4e_flops else None,
        "vae_gflop_per_image": round(vae_flops / 1e9, 1) if vae_flops else None,
        "e4e_tflops_achieved": significant(e4e_flops * e4e_rates[best_e4e_key] / 1e12) if e4e_flops else None,
        "vae_tflops_achieved": significant(vae_flops * vae_rates[best_vae_key] / 1e12) if vae_flops else None,
        "png_decode_samples_per_s_per_core": round(decode_rate, 1) if decode_rate else None,
    })
    if on_cuda:
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
