"""`pidiff sample`: pictures of a trained identity from a prompt (DDIM, classifier-free guidance).

    pidiff sample --sd SD15 --weights OUT/pidiff.safetensors --encoded ENC \\
        --prompt "a photo of S* reading in the library" --num-images 4 --out samples/

The face comes as a w+ code: by default the identity's first reference sample in the encoded
shards (`--encoded`: their files name each sample's identity and role), or a named sample (`--key`), or a w+ code given
directly (`--wplus FACE.safetensors|.pt|.npy`, [18, 512] or [1, 18, 512]), or an aligned 256×256
face image encoded with e4e (`--image FACE.png --e4e e4e_ffhq_encode.pt`).

Guidance follows the paper: the unconditional branch gets the empty prompt AND the unconditional
visual input F(zeros); the conditional branch gets the prompt and F(w+), with λ (default: the
weights' default_lambda, 0.4) weighting the style attention. DDIM, 50 steps, η = 0, on the
schedule of --sd (pidiff.schedule, the one training noises with).

On CUDA the UNet runs in bf16 and each DDIM step (CFG, UNet, scheduler) is a replayed CUDA graph
(one capture per batch shape), which removes the per-kernel launch cost that dominates at batch 1;
--compile adds torch.compile under the graph (fused kernels; the first image pays the compilation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pidiff import style
from pidiff.data import encode_prompts, reference_w_plus
from pidiff.model import PIDiffAdapter, model_fingerprint
from pidiff.schedule import SD15, Schedule, ddim_step


class DenoisingLoop:
    """The DDIM loop with CFG on static buffers, optionally as one replayed CUDA graph.

    One step reads its timestep and ᾱ pair from device-side tables at a device-side step counter,
    writes the new latents back into the same buffer and advances the counter. So a CUDA graph of
    one step, replayed `steps` times, runs the whole loop with no host work per step: no input
    copies, no schedule arithmetic, no launches beyond the replay. The arithmetic is the same ops on
    the same values as the eager loop (`PIDiffSampler._eager_loop`), so the results agree.

    With capture=False the same static-buffer loop runs eagerly (what the CPU tests compare).
    """

    def __init__(self, step, latents_shape: tuple[int, ...], context: torch.Tensor, timesteps: list[int],
                 alphas_cumprod: torch.Tensor, capture: bool):
        device = context.device
        self.step_fn = step
        self.steps = len(timesteps)
        self.latents = torch.zeros(latents_shape, device=device, dtype=torch.float32)
        self.context = context.clone()
        table = torch.tensor(timesteps, dtype=torch.long, device=device)
        previous = torch.tensor(timesteps[1:] + [0], dtype=torch.long, device=device)  # ᾱ_0 after the last step
        self.timesteps = table
        self.alpha_bar = alphas_cumprod[table]
        self.alpha_bar_prev = alphas_cumprod[previous]
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.graph = None
        if capture:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph: compilation, cuDNN autotuning
                self.warm_up()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._step()

    def warm_up(self, runs: int = 2) -> None:
        """Run the first step `runs` times, rewinding the counter before each and after the last.

        Running steps 0, 1, … instead would read past the step tables when there are fewer steps
        than warm-up runs (`--steps 1`); step 0 warms up the same kernels, since only the table
        entries differ between steps.
        """
        for _ in range(runs):
            self.index.zero_()
            self._step()
        self.index.zero_()

    def _step(self) -> None:
        def at(table: torch.Tensor) -> torch.Tensor:  # table[index] as a 0-d tensor, without a host sync
            return table.index_select(0, self.index).view(())

        latents = self.step_fn(self.latents, at(self.timesteps), at(self.alpha_bar), at(self.alpha_bar_prev),
                               self.context)
        self.latents.copy_(latents)
        self.index.add_(1)

    def __call__(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.latents.copy_(latents)
        self.context.copy_(context)
        self.index.zero_()
        for _ in range(self.steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
        return self.latents.clone()


class PIDiffSampler:
    """DDIM with classifier-free guidance on a UNet carrying a one-identity PIDiff adapter.

    use_cuda_graphs (default: on CUDA) runs the denoising loop as a replayed CUDA graph of one
    step (`DenoisingLoop`), one capture per (shape, λ, guidance, steps). `schedule`: the DDPM
    schedule of the base model (SD1.5's by default). compile=True puts
    `torch.compile` (fixed shapes) under it: fused norms and pointwise ops in the UNet; the first
    call of each shape pays the compilation. compile_vae does the same for the VAE decoder.
    """

    def __init__(self, unet, vae, adapter: PIDiffAdapter, use_cuda_graphs: bool | None = None,
                 compile: bool = False, compile_mode: str = "default", compile_vae: bool = False,
                 schedule: Schedule = SD15):
        self.unet, self.vae, self.adapter = unet, vae, adapter
        self.device = next(unet.parameters()).device
        self.dtype = unet.dtype
        self.schedule = schedule
        self.alphas_cumprod = schedule.alphas_cumprod().to(self.device)
        self.use_cuda_graphs = self.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        if compile or compile_vae:
            import torch._inductor.config as inductor_config

            inductor_config.conv_1x1_as_mm = True  # the UNet's 1x1 convs (proj_in/out, shortcuts) as matmuls
        self.unet_forward = torch.compile(unet, mode=compile_mode, dynamic=False) if compile else unet
        self.decode_forward = torch.compile(vae.decode, mode=compile_mode, dynamic=False) if compile_vae else vae.decode
        self._loops: dict[tuple, DenoisingLoop] = {}

    def _denoise_step(self, latents, timestep, alpha_bar, alpha_bar_prev, context, guidance: float):
        """One DDIM step with CFG: the UNet on [uncond; cond] as one batch of 2B."""
        model_input = torch.cat([latents, latents]).to(self.dtype)
        prediction = self.unet_forward(model_input, timestep, encoder_hidden_states=context, return_dict=False)[0]
        eps_uncond, eps_cond = prediction.float().chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        return ddim_step(latents, eps, alpha_bar, alpha_bar_prev)

    def _eager_loop(self, latents, context, timesteps: list[int], guidance: float) -> torch.Tensor:
        for i, t in enumerate(timesteps):
            t_tensor = torch.full((), t, device=self.device, dtype=torch.long)
            previous = timesteps[i + 1] if i + 1 < len(timesteps) else 0
            latents = self._denoise_step(latents, t_tensor, self.alphas_cumprod[t], self.alphas_cumprod[previous],
                                         context, guidance)
        return latents

    def _loop(self, latents, context, timesteps: list[int], guidance: float, capture: bool) -> DenoisingLoop:
        key = (tuple(latents.shape), tuple(context.shape), self.adapter.style_attention[0].scale, guidance,
               tuple(timesteps), capture)
        if key not in self._loops:
            def step(latents, timestep, alpha_bar, alpha_bar_prev, context):
                return self._denoise_step(latents, timestep, alpha_bar, alpha_bar_prev, context, guidance)

            self._loops[key] = DenoisingLoop(step, tuple(latents.shape), context, timesteps, self.alphas_cumprod,
                                             capture)
        return self._loops[key]

    @torch.no_grad()
    def __call__(self, prompt_embeddings: torch.Tensor, empty_embedding: torch.Tensor, w_plus: torch.Tensor,
                 steps: int = 50, guidance: float = 7.5, scale: float = 0.4, generator: torch.Generator | None = None,
                 latent_size: int = 64, decode: bool = True, static_loop: bool | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] (or latents, with decode=False) for B prompts and w+ codes.

        static_loop (default: with CUDA graphs) runs the loop on `DenoisingLoop`'s static buffers.
        """
        batch = prompt_embeddings.shape[0]
        self.adapter.set_scale(scale)
        text = torch.cat([empty_embedding.expand(batch, -1, -1), prompt_embeddings]).to(self.device, self.dtype)
        w = w_plus.to(self.device, torch.float32)
        context = self.adapter.context(text, torch.cat([torch.zeros_like(w), w]))  # uncond: "" and F(zeros)

        latents = torch.randn((batch, 4, latent_size, latent_size), generator=generator,
                              device=generator.device if generator is not None else self.device)
        latents = latents.to(self.device, torch.float32)
        timesteps = self.schedule.ddim_timesteps(steps)
        guidance = float(guidance)
        if static_loop if static_loop is not None else self.use_cuda_graphs:
            latents = self._loop(latents, context, timesteps, guidance, capture=self.use_cuda_graphs)(latents, context)
        else:
            latents = self._eager_loop(latents, context, timesteps, guidance)
        if not decode:
            return latents
        return self.decode(latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode of final latents to images in [0, 1]."""
        scaling = getattr(self.vae.config, "scaling_factor", 0.18215)
        images = self.decode_forward((latents / scaling).to(self.vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# The command.
def w_plus_from_image(image_path: str, e4e_path: str, device) -> torch.Tensor:
    """e4e w+ of an aligned face image (as exported in `<key>.e4e.png`), resized to 256×256."""
    import numpy as np
    from PIL import Image

    from pidiff.e4e import load_e4e

    try:
        image = Image.open(image_path).convert("RGB").resize((256, 256), Image.BICUBIC)
    except FileNotFoundError:
        raise FileNotFoundError(f"--image {image_path}: not found") from None
    except OSError as error:  # PIL's UnidentifiedImageError, a cut-off file
        raise ValueError(f"--image {image_path}: not a readable image ({error})") from error
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
    face.add_argument("--shards", help="ignored: the encoded files carry each sample's identity and role")
    face.add_argument("--wplus", help="the face as a w+ code: .safetensors/.pt/.npy holding [18,512] or [1,18,512]")
    face.add_argument("--image", help="aligned face image (256x256 e4e input); needs --e4e")
    face.add_argument("--e4e", help="e4e checkpoint for --image")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--lambda", dest="scale", type=float, default=None, help="style weight λ (default: from the weights, 0.4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet and VAE decoder (CUDA: pays off from a few images on)")
    parser.add_argument("--latent-size", type=int, default=64, help="64 for 512x512 images")
    parser.add_argument("--skip-base-check", action="store_true",
                        help="do not hash --sd's UNet to compare it with the weights' base model (saves a few seconds)")
    style.add_sample_arguments(parser)  # --style-wplus, --style-layers, --lambda-sweep
    return parser


def check_options(args, schedule: Schedule) -> None:
    """The options that must go together (or be in range), checked before any model is loaded."""
    if sum(bool(x) for x in (args.encoded, args.wplus, args.image)) > 1:
        raise ValueError("give only one of --encoded, --wplus and --image")
    if not (args.encoded or args.wplus or args.image):
        raise ValueError("give --encoded (optionally --key), --wplus or --image with --e4e")
    if args.image and not args.e4e:
        raise ValueError("--image needs --e4e")
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    schedule.ddim_timesteps(args.steps)
    if args.lambda_sweep:
        style.check_lambda_sweep(args.lambda_sweep)
    out = Path(args.out)
    existing = next(path for path in (out, *out.parents) if path.exists())  # here: --out is made only after sampling
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, not a folder")


def default_scale(weights: str, metadata: dict[str, str]) -> float:
    """λ from the weights' metadata (`default_lambda`, a JSON number), 0.4 where it has none."""
    text = metadata.get("default_lambda", "0.4")
    try:
        return float(json.loads(text))
    except (TypeError, ValueError):  # not JSON, or JSON but not a number
        raise ValueError(f"{weights}: metadata default_lambda {text!r} is not a number") from None


def warn_about_prompts(prompts: list[str], placeholder: str) -> None:
    """A prompt with neither {} nor the placeholder does not name the identity: its pictures are of
    the prompt alone, steered only by the face's style attention. Allowed, but likely a mistake."""
    for prompt in prompts:
        if "{}" not in prompt and placeholder not in prompt:
            print(f"pidiff sample: warning: prompt {prompt!r} has neither {{}} nor the placeholder {placeholder!r}; "
                  "its text does not refer to the identity", file=sys.stderr)


def face_w_plus(args, identity: str, device) -> tuple[torch.Tensor, str]:
    """The identity's w+ [18, 512] from --wplus, --image or --encoded, and where it came from."""
    if args.wplus:
        try:
            return style.load_w_plus(args.wplus), args.wplus
        except (OSError, ValueError) as error:
            raise ValueError(f"--wplus: {error}") from error
    if args.image:
        return w_plus_from_image(args.image, args.e4e, device), args.image
    return reference_w_plus(args.encoded, identity, args.key)


def base_model_note(unet, args) -> str:
    """Whether --sd's UNet is the one the weights were trained on (their `base_model` fingerprint).

    Another UNet of the same shape (a fine-tune, another random model) loads without error and may
    be what the user wants, so a mismatch is a warning on stderr and a note in the sidecar, not an
    error. Hashing a full UNet takes a few seconds; --skip-base-check leaves it out."""
    if args.skip_base_check:
        return "skipped"
    from pidiff.model import load_weights_metadata

    trained_on = load_weights_metadata(args.weights).get("base_model", "")
    if not trained_on:
        return "unknown: the weights record no base model"
    if model_fingerprint(unet) == trained_on:
        return "same UNet as in training"
    print(f"pidiff sample: warning: {args.weights} was trained on another base UNet ({trained_on[:12]}…) than "
          f"{Path(args.sd) / 'unet'}; the weights load, but results will differ from the trained model's",
          file=sys.stderr)
    return "different UNet from training"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.shards is not None:
        print("pidiff sample: --shards is ignored: the encoded files carry each sample's identity and role",
              file=sys.stderr)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # What the user gave (options, files, models) is checked and loaded here, so its mistakes end as
    # one line and exit status 2, as in `pidiff eval`. OSError covers FileNotFoundError and models
    # diffusers cannot find; pidiff's own errors (E4ECheckpointError, ShardError, EncodeError) are
    # ValueErrors. Sampling itself stays outside: an error there is a bug and keeps its traceback.
    try:
        schedule = Schedule.from_sd(args.sd)
        check_options(args, schedule)
        unet = UNet2DConditionModel.from_pretrained(Path(args.sd) / "unet")
        base_note = base_model_note(unet, args) # before the cast: training hashed the stored float32 weights
        unet = unet.to(device, dtype).eval().requires_grad_(False)
        vae = AutoencoderKL.from_pretrained(Path(args.sd) / "vae").to(device, dtype).eval().requires_grad_(False)
        adapter, metadata = PIDiffAdapter.from_weights(unet, args.weights)
        identity = metadata.get("identity", "")
        placeholder = metadata.get("placeholder", "S*")
        scale = args.scale if args.scale is not None else default_scale(args.weights, metadata)
        warn_about_prompts(args.prompt, placeholder)
        w_plus, source = face_w_plus(args, identity, device)
        w_plus, style_info = style.style_mixed(w_plus, args)
        prompts = [p.replace("{}", placeholder) for p in args.prompt for _ in range(args.num_images)]
        embeddings = encode_prompts(args.sd, prompts + [""], device).to(dtype)
    except (OSError, ValueError) as error:
        print(f"pidiff sample: {error}", file=sys.stderr)
        return 2
    adapter.to(device).eval().requires_grad_(False)
    adapter.install(unet)
    sampler = PIDiffSampler(unet, vae, adapter, compile=args.compile, compile_vae=args.compile, schedule=schedule)
    runs = []
    for scale in style.sweep_lambdas(args, scale):  # every λ from the same seed: they differ only in λ
        generator = torch.Generator(device).manual_seed(args.seed)
        runs.append((scale, sampler(embeddings[:-1], embeddings[-1:], w_plus[None].expand(len(prompts), -1, -1),
                                    steps=args.steps, guidance=args.guidance, scale=scale, generator=generator,
                                    latent_size=args.latent_size)))

    resolved = {"identity": identity, "placeholder": placeholder, "face_source": str(source), "device": str(device),
                "dtype": str(dtype).removeprefix("torch."), "prompts": prompts, "base_model_check": base_note, **style_info}
    for entry in style.save_sample_outputs(args.out, runs, prompts, args, args.seed, metadata, resolved):
        print(f"{Path(args.out) / entry['file']}: {entry['prompt']!r} (identity {identity}, face {source}, "
              f"λ {entry['lambda']}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
