"""`pidiff random-model`: random-weight stand-ins for Stable Diffusion 1.5 and the e4e encoder.

No SD1.5 or e4e weights can be downloaded on CI and demo machines, yet every command that takes
`--sd` / `--e4e` must run and the loaders must be exercised on the real formats. This writes

    OUT/sd/        a diffusers-layout Stable Diffusion 1.5 folder: model_index.json, unet/, vae/,
                   text_encoder/, tokenizer/ (the real CLIP BPE vocabulary), scheduler/
    OUT/e4e.pt     an e4e checkpoint in the official layout: {"state_dict": {"encoder.*"},
                   "opts", "latent_avg" [18, 512]}

with random weights, at the full SD1.5 / official e4e size or, with --tiny, a small model of the
same topology (same block types, 4-channel 64x64 latents for 512x512 images, 768-wide
cross-attention, [18, 512] w+).
Both are marked: `sd/pidiff-random-model.json` and `opts["pidiff_random_weights"]`, so anything
produced with them says so in its metadata.

Heavy imports (diffusers, transformers) happen inside the functions that need them, so the
benchmark can build random encoders with torch + diffusers only.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

import torch

from pidiff.e4e import (
    OFFICIAL_E4E_ARCHITECTURE,
    OPTS_ARCHITECTURE,
    OPTS_RANDOM_WEIGHTS,
    TINY_E4E_ARCHITECTURE,
    E4EArchitecture,
    E4EEncoder,
)

RANDOM_MODEL_MARKER = "pidiff-random-model.json"
SD15_SCALING_FACTOR = 0.18215

# Stable Diffusion 1.5 component configs (the published runwayml/stable-diffusion-v1-5 values).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
    center_input_sample=False,
)
SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=SD15_SCALING_FACTOR,
)
SD15_TEXT_ENCODER_CONFIG = dict(  # CLIP ViT-L/14 text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
SD15_SCHEDULER_CONFIG = dict(  # PNDMScheduler, as shipped with SD1.5
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
    trained_betas=None,
)
# Keys of SD1.5's published scheduler_config.json that PNDM itself does not take. Pipelines swap
# schedulers with `DDIMScheduler.from_config(pipe.scheduler.config)`, which reads them: without
# clip_sample=false, DDIM would clip its x0 prediction to [-1, 1], unlike with the real SD1.5 folder.
SD15_SCHEDULER_FOREIGN_KEYS = dict(clip_sample=False)

# Tiny variants: SD1.5's topology (same block types and layers per block, hence the same 16
# cross-attention layers; 512 px -> 4x64x64 latents) at small widths. Cross-attention keeps its
# 768 width, so the PIDiff mapper and style projections have their real input sizes; that
# forces a 768-wide text encoder, kept small by using a single layer.
TINY_UNET_CONFIG = {
    **SD15_UNET_CONFIG,
    "block_out_channels": (32, 32, 64, 64),
    "norm_num_groups": 8,
    "attention_head_dim": 2,
}
TINY_VAE_CONFIG = {
    **SD15_VAE_CONFIG,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
TINY_TEXT_ENCODER_CONFIG = {
    **SD15_TEXT_ENCODER_CONFIG,
    "intermediate_size": 256,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}

CLIP_BPE_MERGE_COUNT = 49152 - 256 - 2  # OpenAI's SimpleTokenizer uses this many merges
CLIP_MAX_LENGTH = 77

# Distinct seed offsets so each component's weights depend only on (seed, component).
_COMPONENT_SEED = {"e4e": 0, "vae": 1, "unet": 2, "text_encoder": 3}


def _seeded(seed: int, component: str):
    torch.manual_seed(seed * 1000 + _COMPONENT_SEED[component])


def build_random_e4e(
    architecture: E4EArchitecture = OFFICIAL_E4E_ARCHITECTURE,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> E4EEncoder:
    """An E4EEncoder with PyTorch's default random init and a random latent_avg.

    latent_avg is one random 512-vector repeated over the 18 rows, like the official one (the
    mean of the mapping network's output, repeated per style).
    """
    _seeded(seed, "e4e")
    with torch.device(device):
        model = E4EEncoder(architecture)
        model.latent_avg.copy_(torch.randn(architecture.w_dim).repeat(architecture.style_count, 1))
    model.random_weights = True
    return model.eval().requires_grad_(False)


def e4e_checkpoint(model: E4EEncoder, seed: int | None = None) -> dict:
    """The official checkpoint layout for `model` (without the StyleGAN `decoder.*` weights,
    which pidiff never uses)."""
    architecture = model.architecture
    opts = {
        "encoder_type": "Encoder4Editing",
        "stylegan_size": architecture.stylegan_size,
        "start_from_latent_avg": True,
        "dataset_type": "ffhq_encode",
        "checkpoint_path": None,
        OPTS_RANDOM_WEIGHTS: bool(model.random_weights),
        "pidiff_seed": seed,
    }
    if architecture != OFFICIAL_E4E_ARCHITECTURE:
        opts[OPTS_ARCHITECTURE] = {"stage_widths": list(architecture.stage_widths), "w_dim": architecture.w_dim}
    state_dict = {f"encoder.{key}": value.detach().cpu().contiguous() for key, value in model.encoder.state_dict().items()}
    return {"state_dict": state_dict, "opts": opts, "latent_avg": model.latent_avg.detach().cpu().clone()}


def build_random_vae(config: dict = SD15_VAE_CONFIG, seed: int = 0, device: torch.device | str = "cpu"):
    from diffusers import AutoencoderKL

    _seeded(seed, "vae")
    with torch.device(device):
        return AutoencoderKL(**config).eval().requires_grad_(False)


def build_random_unet(config: dict = SD15_UNET_CONFIG, seed: int = 0, device: torch.device | str = "cpu"):
    from diffusers import UNet2DConditionModel

    _seeded(seed, "unet")
    with torch.device(device):
        return UNet2DConditionModel(**config).eval().requires_grad_(False)


def build_random_text_encoder(config: dict = SD15_TEXT_ENCODER_CONFIG, seed: int = 0, device: torch.device | str = "cpu"):
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed, "text_encoder")
    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**config)).eval().requires_grad_(False)


def clip_bpe_vocabulary_path() -> Path:
    """The CLIP BPE merges file shipped inside the open_clip_torch wheel (found without importing
    open_clip, which is slow and pulls in timm)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the CLIP tokenizer vocabulary comes from open_clip_torch; install it (pip install open_clip_torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"{path}: CLIP BPE vocabulary missing from the open_clip_torch install")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to 256+n."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def write_clip_tokenizer(directory: Path) -> None:
    """Write SD1.5's tokenizer folder (vocab.json, merges.txt, configs) from the CLIP BPE merges.

    The vocabulary is built the way OpenAI's SimpleTokenizer builds it: 256 byte symbols, the
    same with '</w>', one entry per merge, then <|startoftext|> (49406) and <|endoftext|> (49407).
    """
    lines = gzip.open(clip_bpe_vocabulary_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : CLIP_BPE_MERGE_COUNT + 1]
    symbols = list(_bytes_to_unicode().values())
    vocabulary = symbols + [symbol + "</w>" for symbol in symbols]
    vocabulary += ["".join(merge.split()) for merge in merges]
    vocabulary += ["<|startoftext|>", "<|endoftext|>"]

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special_tokens = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2))
    tokenizer_config = {
        **special_tokens,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CLIP_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


def write_scheduler_config(directory: Path) -> Path:
    """SD1.5's scheduler folder: PNDM's own configuration plus the keys it ignores but other
    schedulers built from it read (`SD15_SCHEDULER_FOREIGN_KEYS`), as in the published file."""
    from diffusers import PNDMScheduler

    PNDMScheduler(**SD15_SCHEDULER_CONFIG).save_pretrained(directory)
    path = directory / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(SD15_SCHEDULER_FOREIGN_KEYS)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def write_random_stable_diffusion(out: Path, tiny: bool, seed: int) -> Path:
    """A diffusers-format SD1.5 folder with random weights, loadable by
    StableDiffusionPipeline.from_pretrained and by each component's from_pretrained."""
    import diffusers

    out.mkdir(parents=True, exist_ok=True)
    unet_config = TINY_UNET_CONFIG if tiny else SD15_UNET_CONFIG
    vae_config = TINY_VAE_CONFIG if tiny else SD15_VAE_CONFIG
    text_config = TINY_TEXT_ENCODER_CONFIG if tiny else SD15_TEXT_ENCODER_CONFIG

    # One component at a time, so the full-size build peaks at the UNet's 3.4 GB, not 4.4 GB.
    build_random_unet(unet_config, seed).save_pretrained(out / "unet", safe_serialization=True)
    build_random_vae(vae_config, seed).save_pretrained(out / "vae", safe_serialization=True)
    build_random_text_encoder(text_config, seed).save_pretrained(out / "text_encoder", safe_serialization=True)
    write_clip_tokenizer(out / "tokenizer")
    write_scheduler_config(out / "scheduler")

    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2))
    marker = {"random_weights": True, "size": "tiny" if tiny else "sd15", "seed": seed, "written_by": "pidiff random-model"}
    (out / RANDOM_MODEL_MARKER).write_text(json.dumps(marker, indent=2))
    return out


def write_random_e4e(path: Path, tiny: bool, seed: int) -> Path:
    architecture = TINY_E4E_ARCHITECTURE if tiny else OFFICIAL_E4E_ARCHITECTURE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(e4e_checkpoint(build_random_e4e(architecture, seed), seed), path)
    return path


def is_random_stable_diffusion(sd_path: str | Path) -> bool:
    return (Path(sd_path) / RANDOM_MODEL_MARKER).is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pidiff random-model",
        description="Write random-weight SD1.5 (diffusers layout) and e4e (official layout) models "
        "for runs without downloaded weights. Everything made with them is marked as random.",
        epilog="example: pidiff random-model --out /tmp/models --tiny  ->  --sd /tmp/models/sd --e4e /tmp/models/e4e.pt",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (gets sd/ and e4e.pt)")
    parser.add_argument("--tiny", action="store_true", help="small models of the same topology (seconds, ~200 MB, mostly the 49408x768 token embedding)")
    parser.add_argument("--seed", type=int, default=0, help="weights depend only on (seed, component)")
    args = parser.parse_args(argv)

    sd_path = write_random_stable_diffusion(args.out / "sd", args.tiny, args.seed)
    e4e_path = write_random_e4e(args.out / "e4e.pt", args.tiny, args.seed)
    print(f"random {'tiny ' if args.tiny else ''}models (seed {args.seed}):\n  --sd {sd_path}\n  --e4e {e4e_path}")
    return 0
