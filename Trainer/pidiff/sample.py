"""`pidiff sample`: pictures of a trained identity from a prompt (DDIM, classifier-free guidance).

    pidiff sample --sd SD15 --weights OUT/pidiff.safetensors --encoded ENC \\
        --prompt "a photo of S* reading in the library" --num-images 4 --out samples/

The face comes as a w+ code: by default the identity's split reference in the encoded shards
(`--encoded`: their files name each sample's identity and role; the first `reference` sample by key,
i.e. the identity's best-quality photo, held out of training by the split; else the first `train`
sample), or a named sample (`--key`), or a w+ code given directly
(`--wplus FACE.safetensors|.pt|.npy`, [18, 512] or [1, 18, 512], e.g. from `pidiff wplus`), or any
photo (`--photo PHOTO --e4e e4e_ffhq_encode.pt`: `pidiff-data face` aligns, crops and removes the
background, e4e encodes), or an already prepared 256×256 e4e input (`--image FACE.e4e.png --e4e …`).
The sidecar says which face conditioned the pictures and why.

Classifier-free guidance: the conditional branch gets the prompt and F(w+), with λ (default: the
weights' default_lambda, 0.4) weighting the style attention; the unconditional branch gets the
negative prompt (default "") and the unconditional visual input F(zeros). The paper states no
guidance scale and no negative prompt: 7.5 and "" + F(zeros) are this project's defaults.
DDIM, 50 steps, η = 0, on the schedule of --sd (pidiff.schedule, the one training noises with).

Images are made --batch-size at a time and each is written as soon as it is decoded, so memory does
not grow with --num-images; image i starts from the same noise whatever the batch size.

On CUDA the UNet runs in bf16 and each DDIM step (CFG, UNet, scheduler) is a replayed CUDA graph
(one capture per batch shape), which removes the per-kernel launch cost that dominates at batch 1;
--compile adds torch.compile under the graph (fused kernels; the first image pays the compilation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pidiff import style, wplus
from pidiff.data import encode_prompts, reference_face
from pidiff.evaluate import prompts_path
from pidiff.model import PIDiffAdapter, model_fingerprint
from pidiff.schedule import SD15, Schedule, ddim_step
from pidiff.terminal import shown


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
                 latent_size: int = 64, decode: bool = True, static_loop: bool | None = None,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] (or latents, with decode=False) for B prompts and w+ codes.

        empty_embedding: the unconditional text (the negative prompt's embedding, "" by default); the
        unconditional visual input is F(zeros). noise: the initial latents [B, 4, S, S] (else drawn
        from `generator`). static_loop (default: with CUDA graphs) runs the loop on `DenoisingLoop`'s
        static buffers.
        """
        batch = prompt_embeddings.shape[0]
        self.adapter.set_scale(scale)
        text = torch.cat([empty_embedding.expand(batch, -1, -1), prompt_embeddings]).to(self.device, self.dtype)
        w = w_plus.to(self.device, torch.float32)
        context = self.adapter.context(text, torch.cat([torch.zeros_like(w), w]))  # uncond: negative text and F(zeros)

        if noise is not None:
            latents = noise
        else:
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
GUIDANCE_DEFAULT = 7.5
NEGATIVE_PROMPT_DEFAULT = ""
DEFAULTS_NOTE = ('the paper states no guidance scale and no negative prompt; 7.5 and "" + F(zeros) are this '
                 "project's defaults")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pidiff sample", description=__doc__.split("\n\n")[0],
                                     epilog='example: pidiff sample --sd sd15/ --weights run/pidiff.safetensors '
                                            '--encoded enc/ --prompt "a photo of S* on the beach" --out samples/; '
                                            'from a new photo: ... --photo me.jpg --e4e e4e_ffhq_encode.pt')
    parser.add_argument("--sd", required=True, help="Stable Diffusion 1.5 folder, diffusers layout")
    parser.add_argument("--weights", required=True, help="pidiff.safetensors written by `pidiff train`")
    parser.add_argument("--prompt", action="append", default=[], help="repeatable; {} or the placeholder names the identity")
    parser.add_argument("--prompts", metavar="FILE|paper12",
                        help="a prompts file (one prompt a line, '#' comments, S* = the identity) or paper12, the "
                             "paper's 12-prompt protocol (pidiff/prompts/paper12.txt), all sampled in this run, before "
                             "any --prompt; each image's prompt and prompt_index are in sample.json")
    parser.add_argument("--out", required=True, help="output folder for PNGs")
    face = parser.add_argument_group("the face (one of)")
    face.add_argument("--encoded", help="encoded shards: the identity's split reference (its first reference sample "
                                        "by key: its best-quality photo, held out of training by the split; else its "
                                        "first train sample), or --key")
    face.add_argument("--key", help="with --encoded: this sample's w+")
    face.add_argument("--shards", help="ignored: the encoded files carry each sample's identity and role")
    face.add_argument("--wplus", help="the face as a w+ code: `pidiff wplus` output, or .safetensors/.pt/.npy holding "
                                      "[18,512] or [1,18,512]")
    face.add_argument("--photo", metavar="PHOTO", help="any photo of the person: pidiff-data face aligns, crops and removes "
                                                       "the background (its files are kept in OUT/face/); needs --e4e")
    face.add_argument("--image", help="an already prepared 256x256 e4e input (NAME.e4e.png of pidiff-data face or a "
                                      "shard); anything else is refused: use --photo; needs --e4e")
    face.add_argument("--e4e", help="e4e checkpoint for --photo, --image and --style-photo")
    wplus.add_face_options(parser, "--photo and --style-photo")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="images denoised together (default 4); each is written as it finishes, so memory does not "
                             "grow with --num-images, and image i is the same whatever the batch size")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=GUIDANCE_DEFAULT,
                        help="classifier-free guidance scale (default 7.5: this project's choice; the paper states none)")
    parser.add_argument("--negative-prompt", default=NEGATIVE_PROMPT_DEFAULT, metavar="TEXT",
                        help='text of the unconditional branch (default "": this project\'s choice, the paper states no '
                             "negative prompt); its visual input stays F(zeros)")
    parser.add_argument("--lambda", dest="scale", type=float, default=None, help="style weight λ (default: from the weights, 0.4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet and VAE decoder (CUDA: pays off from a few images on)")
    parser.add_argument("--latent-size", type=int, default=64, help="64 for 512x512 images")
    parser.add_argument("--skip-base-check", action="store_true",
                        help="do not hash --sd's UNet to compare it with the weights' base model (saves a few seconds)")
    style.add_sample_arguments(parser)  # --style-wplus, --style-photo, --style-layers, --lambda-sweep
    parser.add_argument("--style-from-split", action="store_true",
                        help="with --encoded: mix in the --style-layers rows of the identity's style photo in the split "
                             "(its first `style` sample, from pidiff-data splits add-style; paper §3.4.4)")
    return parser


def resolve_prompts(args) -> list[str]:
    """--prompts FILE|paper12 (its lines, in order) followed by each --prompt."""
    from pidiff.evaluate import read_prompts

    prompts = (read_prompts(args.prompts) if args.prompts else []) + list(args.prompt)
    if not prompts:
        raise ValueError("give the prompts: --prompt TEXT (repeatable) or --prompts FILE|paper12")
    return prompts


def split_style(args, identity: str, w_plus: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """--style-from-split: the identity's w+ with the --style-layers rows of its split style sample."""
    from pidiff.data import style_face

    chosen = style_face(args.encoded, identity)
    layers = args.style_layers if args.style_layers is not None else style.LayerSpec(style.DEFAULT_STYLE_LAYERS)
    info = {"style_source": chosen.key, "style_source_kind": "split style sample", "style_choice_reason": chosen.reason,
            "style_layers": list(layers), "style_layers_spec": getattr(layers, "text", style.rows_text(list(layers))),
            "style_layers_meaning": style.describe_layers(list(layers))}
    return style.mix_w_plus(w_plus, chosen.w_plus.to(w_plus.device), list(layers)), info


def check_options(args, schedule: Schedule) -> None:
    """The options that must go together (or be in range), checked before any model is loaded."""
    given = [name for name, value in (("--encoded", args.encoded), ("--wplus", args.wplus), ("--photo", args.photo),
                                      ("--image", args.image)) if value]
    if len(given) > 1:
        raise ValueError(f"give only one of --encoded, --wplus, --photo and --image (got {' and '.join(given)})")
    if not given:
        raise ValueError("give the face: --encoded (optionally --key), --wplus, --photo with --e4e or --image with --e4e")
    if args.key and not args.encoded:
        raise ValueError("--key names a sample of --encoded")
    if args.style_from_split:
        if not args.encoded:
            raise ValueError("--style-from-split takes the style photo of the identity's split: it needs --encoded")
        if args.style_wplus or args.style_photo:
            raise ValueError("give one style face: --style-from-split, --style-wplus or --style-photo")
    for option, value in (("--photo", args.photo), ("--image", args.image), ("--style-photo", args.style_photo)):
        if value and not args.e4e:
            raise ValueError(f"{option} needs --e4e (the e4e checkpoint that encodes the face)")
    if not (args.photo or args.style_photo):
        for option, value in (("--face-index", args.face_index is not None), ("--largest", args.largest),
                              ("--face-pipeline", args.face_pipeline), ("--face-models", args.face_models)):
            if value:
                raise ValueError(f"{option} prepares a photo: it goes with --photo or --style-photo")
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
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
            print(shown(f"pidiff sample: warning: prompt {prompt!r} has neither {{}} nor the placeholder "
                        f"{placeholder!r}; its text does not refer to the identity"), file=sys.stderr)


@dataclass
class Face:
    """The face that conditions the pictures, and what the sidecar says about it."""
    w_plus: torch.Tensor  # [18, 512]
    source: str           # the sample key or the file given
    choice: str           # --key | split reference | first train sample | --wplus | --photo | --image
    reason: str
    details: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # prepared files to keep in OUT/<folder>/
    folder: str = "face"


class E4E:
    """The e4e encoder of --e4e, loaded once for the face and the style photo."""

    def __init__(self, path: str, device):
        self.path, self.device, self.encoder = path, device, None

    def encode(self, face: wplus.FaceInput) -> torch.Tensor:
        from pidiff.e4e import load_e4e

        if self.encoder is None:
            self.encoder = load_e4e(self.path, self.device)
        return wplus.encode_e4e_inputs([face.pixels], self.encoder)[0]


def photo_face(photo: str, what: str, scratch: Path, args, e4e: E4E, folder: str) -> Face:
    prepared = wplus.photo_input(photo, scratch / folder, wplus.face_options(args), what)
    record = prepared.record
    which = f"face {record.get('face_index', '?')} of {record.get('faces_found', '?')} found"
    return Face(e4e.encode(prepared), str(photo), what,
                f"{what} {photo}: {which}, aligned, cropped and background-removed by pidiff-data face, encoded by e4e",
                prepared.describe(), prepared.face.files(), folder)


def resolve_face(args, identity: str, e4e: E4E, scratch: Path) -> Face:
    """The identity's w+ [18, 512] from --wplus, --photo, --image or --encoded, and where it came from."""
    if args.wplus:
        try:
            w = style.load_w_plus(args.wplus)
        except (OSError, ValueError) as error:
            raise ValueError(f"--wplus: {error}") from error
        made_from = wplus.w_plus_file_metadata(args.wplus)
        details = {"wplus_sha256": style.file_sha256(args.wplus)}
        reason = "the w+ code given with --wplus"
        if made_from:
            details["wplus_made_from"] = {key: (json.loads(made_from[key]) if key == "face" else made_from[key])
                                          for key in ("source", "source_kind", "source_sha256", "e4e_sha256", "face")
                                          if key in made_from}
            reason += f" (made by pidiff wplus from {made_from.get('source_kind', '?')} {made_from.get('source', '?')})"
        return Face(w, args.wplus, "--wplus", reason, details)
    if args.photo:
        return photo_face(args.photo, "--photo", scratch, args, e4e, "face")
    if args.image:
        prepared = wplus.prepared_input(args.image, "--image")
        return Face(e4e.encode(prepared), args.image, "--image", "the prepared e4e input given with --image, encoded by e4e",
                    prepared.describe())
    chosen = reference_face(args.encoded, identity, args.key)
    return Face(chosen.w_plus, chosen.key, chosen.choice, chosen.reason, {"role": chosen.role})


def resolve_style(args, e4e: E4E, scratch: Path) -> tuple[tuple[torch.Tensor, dict] | None, Face | None]:
    """--style-photo prepared and encoded: ((w+, sidecar info), its Face for the kept files)."""
    if not args.style_photo:
        return None, None
    face = photo_face(args.style_photo, "--style-photo", scratch, args, e4e, "style-face")
    info = {"style_source": args.style_photo, "style_source_kind": "photo", "style_face": face.details}
    return (face.w_plus, info), face


def keep_face_files(out: Path, faces: list[Face]) -> dict[str, list[str]]:
    """Copy the files pidiff-data face prepared into OUT/face/ (and OUT/style-face/); their names, relative to OUT."""
    kept: dict[str, list[str]] = {}
    for face in faces:
        if face is None or not face.files:
            continue
        (out / face.folder).mkdir(parents=True, exist_ok=True)
        for path in face.files:
            shutil.copy2(path, out / face.folder / path.name)
            kept.setdefault(face.folder, []).append(f"{face.folder}/{path.name}")
    return kept


def initial_noise(generator: torch.Generator, count: int, latent_size: int) -> torch.Tensor:
    """The next `count` images' starting latents, drawn one image at a time from a CPU generator, so
    image i gets the i-th draw whatever the batch size or device."""
    return torch.cat([torch.randn((1, 4, latent_size, latent_size), generator=generator) for _ in range(count)])


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
    print(shown(f"pidiff sample: warning: {args.weights} was trained on another base UNet ({trained_on[:12]}…) than "
                f"{Path(args.sd) / 'unet'}; the weights load, but results will differ from the trained model's"),
          file=sys.stderr)
    return "different UNet from training"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.shards is not None:
        print("pidiff sample: --shards is ignored: the encoded files carry each sample's identity and role",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pidiff-sample-") as scratch:
        return run(args, Path(scratch))


def run(args, scratch: Path) -> int:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from pidiff.model import load_weights_metadata

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # What the user gave (options, files, photos, models) is checked and loaded here, so its mistakes
    # end as one line and exit status 2, as in `pidiff eval`. OSError covers FileNotFoundError and
    # models diffusers cannot find; pidiff's own errors (E4ECheckpointError, EncodeError, FaceError)
    # are ValueErrors. Sampling itself stays outside: an error there is a bug and keeps its traceback.
    try:
        schedule = Schedule.from_sd(args.sd)
        check_options(args, schedule)
        metadata = load_weights_metadata(args.weights)
        identity = metadata.get("identity", "")
        placeholder = metadata.get("placeholder", "S*")
        scale = args.scale if args.scale is not None else default_scale(args.weights, metadata)
        prompt_list = resolve_prompts(args)
        warn_about_prompts(prompt_list, placeholder)
        e4e = E4E(args.e4e, device)
        face = resolve_face(args, identity, e4e, scratch)  # photos are prepared before the big models load
        photo_style, style_face = resolve_style(args, e4e, scratch)
        if args.style_from_split:
            w_plus, style_info = split_style(args, identity, face.w_plus)
        else:
            w_plus, style_info = style.style_mixed(face.w_plus, args, photo_style)
        e4e.encoder = None
        unet = UNet2DConditionModel.from_pretrained(Path(args.sd) / "unet")
        base_note = base_model_note(unet, args)  # before the cast: training hashed the stored float32 weights
        unet = unet.to(device, dtype).eval().requires_grad_(False)
        vae = AutoencoderKL.from_pretrained(Path(args.sd) / "vae").to(device, dtype).eval().requires_grad_(False)
        adapter, metadata = PIDiffAdapter.from_weights(unet, args.weights)
        prompts = [p.replace("{}", placeholder) for p in prompt_list for _ in range(args.num_images)]
        prompt_index = [i for i in range(len(prompt_list)) for _ in range(args.num_images)]
        texts = list(dict.fromkeys(prompts))  # each distinct prompt embedded once, whatever --num-images
        embeddings = encode_prompts(args.sd, texts + [args.negative_prompt], device).to(dtype)
    except (OSError, ValueError) as error:
        print(f"pidiff sample: {shown(error)}", file=sys.stderr)
        return 2
    adapter.to(device).eval().requires_grad_(False)
    adapter.install(unet)
    sampler = PIDiffSampler(unet, vae, adapter, compile=args.compile, compile_vae=args.compile, schedule=schedule)
    row_of_text = {text: row for row, text in enumerate(texts)}
    text_index = torch.tensor([row_of_text[p] for p in prompts])
    negative = embeddings[-1:]
    lambdas = style.sweep_lambdas(args, scale)
    out = Path(args.out)
    writer = style.SampleWriter(out, prompts, lambdas, sweep=bool(args.lambda_sweep), columns=args.num_images,
                                title=style.style_title(style_info))
    kept = keep_face_files(out, [face, style_face])
    for scale in lambdas:  # every λ from the same seed: they differ only in λ
        generator = torch.Generator().manual_seed(args.seed)
        for start in range(0, len(prompts), args.batch_size):
            indices = list(range(start, min(len(prompts), start + args.batch_size)))
            images = sampler(embeddings[text_index[indices]], negative, w_plus[None].expand(len(indices), -1, -1),
                             steps=args.steps, guidance=args.guidance, scale=scale, latent_size=args.latent_size,
                             noise=initial_noise(generator, len(indices), args.latent_size))
            for entry in writer.add(scale, indices, images):
                entry["prompt_index"] = prompt_index[entry["batch_index"]]  # its line in --prompts (then --prompt)
                print(shown(f"{out / entry['file']}: {entry['prompt']!r} (identity {identity}, face {face.source}, "
                            f"λ {entry['lambda']}, seed {args.seed})"), flush=True)
            del images

    if style_face is not None and kept.get(style_face.folder):
        style_info["style_face_files"] = kept[style_face.folder]
    resolved = {"identity": identity, "placeholder": placeholder, "face_source": str(face.source),
                "face_choice": face.choice, "face_choice_reason": face.reason, **({"face": face.details} if face.details else {}),
                **({"face_files": kept[face.folder]} if kept.get(face.folder) else {}),
                "device": str(device), "dtype": str(dtype).removeprefix("torch."), "prompts": prompts,
                "prompt_list": prompt_list,
                **({"prompts_file": str(prompts_path(args.prompts))} if args.prompts else {}),
                "base_model_check": base_note,
                "classifier_free_guidance": {
                    "guidance_scale": args.guidance, "negative_prompt": args.negative_prompt,
                    "conditional_branch": "the prompt + visual tokens F(w+)",
                    "unconditional_branch": f"the negative prompt {args.negative_prompt!r} + visual tokens F(zeros)",
                    "defaults": DEFAULTS_NOTE,
                    "guidance_scale_is_default": args.guidance == GUIDANCE_DEFAULT,
                    "negative_prompt_is_default": args.negative_prompt == NEGATIVE_PROMPT_DEFAULT},
                "initial_noise": "image i starts from the i-th [1, 4, S, S] standard-normal draw of a CPU "
                                 "torch.Generator seeded with the seed (afresh for each λ), whatever --batch-size",
                **style_info}
    extra = {"e4e": args.e4e} if (args.photo or args.image or args.style_photo) else None
    writer.finish(args, args.seed, metadata, resolved, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
