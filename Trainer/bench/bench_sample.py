"""Time `pidiff sample`: seconds per 512x512 image, DDIM 50 steps with classifier-free guidance.

    python Trainer/bench/bench_sample.py --device cuda --full     # SD1.5-size UNet + VAE, < 1 min
    python Trainer/bench/bench_sample.py --device cuda --full --batches 1 --modes cuda-graph,compiled,compiled-vae
    python Trainer/bench/bench_sample.py --device cpu --tiny      # smoke test

Runs pidiff.sample.PIDiffSampler (the command's own sampler: bf16 UNet with the PIDiff adapter,
CFG batch of 2B, VAE decode included) on random-init SD1.5 UNet and VAE built from configs written
in code, at batch 1 and 4, eager and with CUDA-graph replay (and with --modes, torch.compile under the
graphs; each compiled mode's first run pays the compilation, reported as its warm-up). Prints a line per configuration and
one JSON line. Imports only torch, diffusers and safetensors (through pidiff).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Trainer/, for `pidiff`

from pidiff.model import SD15_UNET_CONFIG, TINY_SD15_UNET_CONFIG, PIDiffAdapter  # noqa: E402
from pidiff.random_model import SD15_VAE_CONFIG, TINY_VAE_CONFIG  # noqa: E402
from pidiff.sample import PIDiffSampler  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="SD1.5-size UNet and VAE, 512x512 (default)")
    size.add_argument("--tiny", action="store_true", help="tiny models of the same topology, 64x64 images")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50, tiny 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (default 3, tiny 1)")
    parser.add_argument("--modes", default=None,
                        help="comma list of eager, cuda-graph, compiled (torch.compile'd UNet under the CUDA graphs), "
                             "compiled-vae (the same and a compiled VAE decoder); default eager,cuda-graph on CUDA, "
                             "eager on CPU. The first is the reference for the images' error")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for the compiled modes")
    args = parser.parse_args(argv)

    from diffusers import AutoencoderKL, UNet2DConditionModel

    device = torch.device(args.device)
    tiny = args.tiny
    steps = args.steps or (2 if tiny else 50)
    repeats = args.repeats or (1 if tiny else 3)
    latent_size = 8 if tiny else 64
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(TINY_SD15_UNET_CONFIG if tiny else SD15_UNET_CONFIG))
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD15_VAE_CONFIG))
    unet = unet.to(dtype).eval().requires_grad_(False)
    vae = vae.to(dtype).eval().requires_grad_(False)
    adapter = PIDiffAdapter(unet).to(device).eval().requires_grad_(False)
    adapter.install(unet)
    text_width = unet.config.cross_attention_dim
    mode_names = [m.strip() for m in (args.modes or ("eager,cuda-graph" if device.type == "cuda" else "eager")).split(",") if m.strip()]
    cuda = device.type == "cuda"
    # mode: (CUDA graphs, compiled UNet, compiled VAE decoder)
    known = {"eager": (False, False, False), "cuda-graph": (True, False, False), "compiled": (cuda, True, False),
             "compiled-vae": (cuda, True, True)}
    if unknown := [m for m in mode_names if m not in known]:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(known)}")
    print(f"{'tiny' if tiny else 'SD1.5'} UNet + VAE ({dtype}) on "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: DDIM {steps} steps, CFG, "
          f"{latent_size * 8}x{latent_size * 8}", flush=True)

    results = []
    references: dict[int, torch.Tensor] = {}  # the first mode's images per batch size
    for mode in mode_names:
        graphs, compiled, compiled_vae = known[mode]
        sampler = PIDiffSampler(unet, vae, adapter, use_cuda_graphs=graphs, compile=compiled,
                                compile_mode=args.compile_mode, compile_vae=compiled_vae)
        for batch in (int(b) for b in args.batches.split(",") if b):
            inputs = torch.Generator(device).manual_seed(1000 + batch)  # the same inputs in every mode
            prompts = torch.randn(batch, 77, text_width, device=device, generator=inputs)
            empty = torch.randn(1, 77, text_width, device=device, generator=inputs)
            w_plus = torch.randn(batch, 18, 512, device=device, generator=inputs)

            def run():
                generator = torch.Generator(device).manual_seed(0)
                return sampler(prompts, empty, w_plus, steps=steps, generator=generator, latent_size=latent_size)

            result = {"mode": mode, "batch": batch}
            try:
                started = time.perf_counter()
                images = run()  # warm-up: cuDNN autotuning, compilation, the graph capture
                synchronize(device)
                warmup_s = time.perf_counter() - started
                started = time.perf_counter()
                for _ in range(repeats):
                    images = run()
                synchronize(device)
                seconds = (time.perf_counter() - started) / repeats
                latents = torch.randn(batch, 4, latent_size, latent_size, device=device, generator=inputs)
                sampler.decode(latents)
                synchronize(device)
                started = time.perf_counter()
                for _ in range(repeats):
                    sampler.decode(latents)
                synchronize(device)
                decode_s = (time.perf_counter() - started) / repeats
            except Exception as error:  # e.g. a compiler failure: keep the other modes' figures
                result["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                print(f"{mode:<11} batch {batch}: failed: {result['error']}", flush=True)
                results.append(result)
                continue
            if compiled:  # one UNet call, compiled vs eager, on the same random input
                x = torch.randn(2 * batch, 4, latent_size, latent_size, device=device, generator=inputs).to(dtype)
                t = torch.full((), 500, device=device, dtype=torch.long)
                context = torch.randn(2 * batch, 81, text_width, device=device, generator=inputs).to(dtype)
                with torch.no_grad():
                    eager_out = unet(x, t, encoder_hidden_states=context, return_dict=False)[0].float()
                    compiled_out = sampler.unet_forward(x, t, encoder_hidden_states=context, return_dict=False)[0].float()
                result["unet_rel_error_compiled_vs_eager"] = float((compiled_out - eager_out).norm() / eager_out.norm())
                print(f"{mode:<11} batch {batch}: one UNet call, compiled vs eager: rel. error "
                      f"{result['unet_rel_error_compiled_vs_eager']:.2e}", flush=True)
            reference = references.setdefault(batch, images.float())
            relative_error = float((images.float() - reference).norm() / reference.norm())
            result.update({"s_per_batch": seconds, "s_per_image": seconds / batch, "warmup_s": warmup_s,
                           "decode_s_per_batch": decode_s, "finite": bool(torch.isfinite(images).all()),
                           "rel_error_vs_first_mode": relative_error})
            if device.type == "cuda":
                result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            results.append(result)
            print(f"{mode:<11} batch {batch}: {result['s_per_image']:.3f} s/image ({seconds:.3f} s per batch, "
                  f"of which VAE decode {decode_s:.3f} s; warm-up {warmup_s:.1f} s; "
                  f"images vs {mode_names[0]}: rel. error {relative_error:.2e})", flush=True)
        del sampler
    print(json.dumps({"bench": "pidiff-sample", "unet": "tiny" if tiny else "sd15", "device": str(device),
                      "steps": steps, "resolution": latent_size * 8, "torch": torch.__version__, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
