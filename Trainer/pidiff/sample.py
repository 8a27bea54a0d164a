"""`pidiff sample`: pictures of a trained identity from a prompt (DDIM, classifier-free guidance).

    pidiff sample --sd SD15 --weights OUT/pidiff.safetensors --encoded ENC \\
        --prompt "a photo of S* reading in the library" --num-images 4 --out samples/

The face comes as a w+ code: by default the identity's first reference sample in the encoded
shards (`--encoded`, labels as for training), or a named sample (`--key`), or an aligned 256×256
face image encoded with e4e (`--image FACE.png --e4e e4e_ffhq_encode.pt`).

Guidance follows the paper: the unconditional branch gets the empty prompt AND the unconditional
visual input F(zeros); the conditional branch gets the prompt and F(w+), with λ (default: the
weights' default_lambda, 0.4) weighting the style attention. DDIM, 50 steps, η = 0.

On CUDA the UNet runs in bf16 and each UNet call is a replayed CUDA graph (one capture per batch
shape), which removes the per-kernel launch cost that dominates at batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pidiff.model import PIDiffAdapter

NUM_TRAIN_TIMESTEPS = 1000


def ddim_timesteps(steps: int, train_steps: int = NUM_TRAIN_TIMESTEPS, offset: int = 1) -> list[int]:
    """SD1.5's DDIM schedule ("leading" spacing, steps_offset 1): 981, 961, …, 1 for 50 steps."""
    stride = train_steps // steps
    return [i * stride + offset for i in range(steps)][::-1]


def sd15_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                        train_steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, train_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_step(latents: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """DDIM with η = 0: predict x0 from ε, then move to the previous timestep along the same ε.

    After the last step SD1.5 uses ᾱ_0 as the "previous" ᾱ (set_alpha_to_one=False).
    """
    x0 = (latents - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps


class CudaGraphUNet:
    """One UNet forward captured as a CUDA graph: copy inputs into static buffers, replay."""

    def __init__(self, unet, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor):
        self.sample, self.timestep, self.context = sample.clone(), timestep.clone(), context.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: cuDNN autotuning, allocations
            for _ in range(2):
                unet(self.sample, self.timestep, encoder_hidden_states=self.context, return_dict=False)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = unet(self.sample, self.timestep, encoder_hidden_states=self.context, return_dict=False)[0]

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.sample.copy_(sample)
        self.timestep.copy_(timestep)
        self.context.copy_(context)
        self.graph.replay()
        return self.output


class PIDiffSampler:
    """DDIM with classifier-free guidance on a UNet carrying a one-identity PIDiff adapter."""

    def __init__(self, unet, vae, adapter: PIDiffAdapter, use_cuda_graphs: bool | None = None):
        self.unet, self.vae, self.adapter = unet, vae, adapter
        self.device = next(unet.parameters()).device
        self.dtype = unet.dtype
        self.alphas_cumprod = sd15_alphas_cumprod().to(self.device)
        self.use_cuda_graphs = self.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self._graphs: dict[tuple, CudaGraphUNet] = {}

    def _unet(self, sample, timestep, context):
        if not self.use_cuda_graphs:
            return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
        shape = (tuple(sample.shape), tuple(context.shape), self.adapter.style_attention[0].scale)
        if shape not in self._graphs:
            self._graphs[shape] = CudaGraphUNet(self.unet, sample, timestep, context)
        return self._graphs[shape](sample, timestep, context)

    @torch.no_grad()
    def __call__(self, prompt_embeddings: torch.Tensor, empty_embedding: torch.Tensor, w_plus: torch.Tensor,
                 steps: int = 50, guidance: float = 7.5, scale: float = 0.4, generator: torch.Generator | None = None,
                 latent_size: int = 64, decode: bool = True) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] (or latents, with decode=False) for B prompts and w+ codes."""
        batch = prompt_embeddings.shape[0]
        self.adapter.set_scale(scale)
        text = torch.cat([empty_embedding.expand(batch, -1, -1), prompt_embeddings]).to(self.device, self.dtype)
        w = w_plus.to(self.device, torch.float32)
        context = self.adapter.context(text, torch.cat([torch.zeros_like(w), w]))  # uncond: "" and F(zeros)

        latents = torch.randn((batch, 4, latent_size, latent_size), generator=generator,
                              device=generator.device if generator is not None else self.device)
        latents = latents.to(self.device, torch.float32)
        timesteps = ddim_timesteps(steps)
        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents, latents]).to(self.dtype)
            t_tensor = torch.full((), t, device=self.device, dtype=torch.long)
            eps_uncond, eps_cond = self._unet(model_input, t_tensor, context).float().chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            latents = ddim_step(latents, eps, self.alphas_cumprod[t],
                                self.alphas_cumprod[timesteps[i + 1] if i + 1 < len(timesteps) else 0])
        if not decode:
            return latents
        scaling = getattr(self.vae.config, "scaling_factor", 0.18215)
        images = self.vae.decode((latents / scaling).to(self.vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# The command.
def w_plus_from_encoded(encoded_dir: str, identity: str, key: str | None, shards_dir: str | None) -> tuple[torch.Tensor, str]:
    """w+ [18, 512] of sample `key`, or of the identity's first reference (else train) sample."""
    from pidiff.encode import read_encoded_shard
    from pidiff.train import sample_labels

    candidates = []
    for path in sorted(Path(encoded_dir).glob("*.safetensors")):
        shard = read_encoded_shard(path)
        if key is not None:
            if key in shard.keys:
                return shard.w_plus[shard.keys.index(key)].float(), key
            continue
        for i, (sample_key, label) in enumerate(zip(shard.keys, sample_labels(shard, shards_dir))):
            if label["identity"] == identity:
                candidates.append((label.get("role", "train") != "reference", sample_key, shard.w_plus[i].float()))
    if not candidates:
        raise ValueError(f"no sample {key!r} in {encoded_dir}" if key else f"no sample of {identity!r} in {encoded_dir}")
    _, chosen_key, w = min(candidates, key=lambda c: (c[0], c[1]))
    return w, chosen_key


def w_plus_from_image(image_path: str, e4e_path: str, device) -> torch.Tensor:
    """e4e w+ of an aligned face image (as exported in `<key>.e4e.png`), resized to 256×256."""
    import numpy as np
    from PIL import Image

    from pidiff.e4e import load_e4e

    image = Image.open(image_path).convert("RGB").resize((256, 256), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    encoder = load_e4e(e4e_path).to(device).eval()
    with torch.no_grad():
        return encoder(x.to(device))[0].float().cpu()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pidiff sample", description=__doc__.split("\n\n")[0],
                                     epilog='example: pidiff sample --sd sd15/ --weights run/pidiff.safetensors '
                                            '--encoded enc/ --prompt "a photo of S* on the beach" --out samples/')
    parser.add_argument("--sd", required=True, help="Stable Diffusion 1.5 folder, diffusers layout")
    parser.add_argument("--weights", required=True, help="pidiff.safetensors written by `pidiff train`")
    parser.add_argument("--prompt", action="append", required=True, help="repeatable; {} or the placeholder names the identity")
    parser.add_argument("--out", required=True, help="output folder for PNGs")
    face = parser.add_argument_group("the face (one of)")
    face.add_argument("--encoded", help="encoded shards: the identity's first reference sample (or --key)")
    face.add_argument("--key", help="with --encoded: this sample's w+")
    face.add_argument("--shards", help="with --encoded: source WebDataset shards, for identity labels")
    face.add_argument("--image", help="aligned face image (256x256 e4e input); needs --e4e")
    face.add_argument("--e4e", help="e4e checkpoint for --image")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--lambda", dest="scale", type=float, default=None, help="style weight λ (default: from the weights, 0.4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--latent-size", type=int, default=64, help="64 for 512x512 images")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from pidiff.train import encode_prompts

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    unet = UNet2DConditionModel.from_pretrained(Path(args.sd) / "unet").to(device, dtype).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(Path(args.sd) / "vae").to(device, dtype).eval().requires_grad_(False)
    adapter, metadata = PIDiffAdapter.from_weights(unet, args.weights)
    adapter.to(device).eval().requires_grad_(False)
    adapter.install(unet)
    identity = metadata.get("identity", "")
    placeholder = metadata.get("placeholder", "S*")
    scale = args.scale if args.scale is not None else float(json.loads(metadata.get("default_lambda", "0.4")))

    if args.image:
        if not args.e4e:
            raise SystemExit("pidiff sample: --image needs --e4e")
        w_plus, source = w_plus_from_image(args.image, args.e4e, device), args.image
    elif args.encoded:
        w_plus, source = w_plus_from_encoded(args.encoded, identity, args.key, args.shards)
    else:
        raise SystemExit("pidiff sample: give --encoded (optionally --key) or --image with --e4e")

    prompts = [p.replace("{}", placeholder) for p in args.prompt for _ in range(args.num_images)]
    embeddings = encode_prompts(args.sd, prompts + [""], device).to(dtype)
    sampler = PIDiffSampler(unet, vae, adapter)
    generator = torch.Generator(device).manual_seed(args.seed)
    images = sampler(embeddings[:-1], embeddings[-1:], w_plus[None].expand(len(prompts), -1, -1),
                     steps=args.steps, guidance=args.guidance, scale=scale, generator=generator,
                     latent_size=args.latent_size)

    from PIL import Image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
        path = out / f"{i:03d}.png"
        Image.fromarray(pixels).save(path)
        print(f"{path}: {prompt!r} (identity {identity}, face {source}, λ {scale}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
