"""`pidiff random-model`: a loadable SD1.5 folder and an official-layout e4e checkpoint."""

from __future__ import annotations

import json

import torch

from pidiff.e4e import OFFICIAL_E4E_ARCHITECTURE, TINY_E4E_ARCHITECTURE, load_e4e
from pidiff.random_model import (
    RANDOM_MODEL_MARKER,
    SD15_TEXT_ENCODER_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    build_random_e4e,
    build_random_text_encoder,
    build_random_unet,
    build_random_vae,
    TINY_VAE_CONFIG,
)


def test_tiny_sd_folder_loads_as_a_stable_diffusion_pipeline(tiny_models):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd"])
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.vae.config.scaling_factor == 0.18215
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    # Same topology as SD1.5: 16 text cross-attention layers, and the parts fit together.
    assert sum(name.endswith("attn2.processor") for name in pipe.unet.attn_processors) == 16
    with torch.no_grad():
        tokens = pipe.tokenizer("a photo of S*", padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = pipe.text_encoder(tokens).last_hidden_state
        noise = pipe.unet(torch.zeros(1, 4, 64, 64), 10, encoder_hidden_states=text).sample
    assert text.shape == (1, 77, 768) and noise.shape == (1, 4, 64, 64)
    marker = json.loads((tiny_models["sd"] / RANDOM_MODEL_MARKER).read_text())
    assert marker["random_weights"] is True and marker["size"] == "tiny"


# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json, less its _diffusers_version.
PUBLISHED_SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}


def test_scheduler_config_has_the_published_sd15_keys_so_ddim_does_not_clip(tiny_models):
    from diffusers import DDIMScheduler, PNDMScheduler

    written = json.loads((tiny_models["sd"] / "scheduler" / "scheduler_config.json").read_text())
    assert {key: written.get(key, "absent") for key in PUBLISHED_SD15_SCHEDULER_CONFIG} == PUBLISHED_SD15_SCHEDULER_CONFIG
    assert written["clip_sample"] is False
    # The usual swap in a pipeline: DDIM from the PNDM config must not clip x0, as with real SD1.5.
    ddim = DDIMScheduler.from_config(PNDMScheduler.from_pretrained(tiny_models["sd"], subfolder="scheduler").config)
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is False


def test_tokenizer_uses_the_real_clip_vocabulary(tiny_models):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models["sd"], subfolder="tokenizer")
    assert len(tokenizer) == 49408
    # Token ids of the public CLIP tokenizer for this sentence.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77


def test_tiny_vae_keeps_sd15_latent_geometry():
    vae = build_random_vae(TINY_VAE_CONFIG)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 512, 512)).latent_dist.mean
    assert latents.shape == (1, 4, 64, 64)


def test_random_e4e_checkpoint_has_the_official_layout(tiny_models):
    checkpoint = torch.load(tiny_models["e4e"], map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"state_dict", "opts", "latent_avg"}
    assert all(key.startswith("encoder.") for key in checkpoint["state_dict"])
    assert checkpoint["opts"]["encoder_type"] == "Encoder4Editing"
    assert checkpoint["opts"]["pidiff_random_weights"] is True
    latent_avg = checkpoint["latent_avg"]
    assert latent_avg.shape == (18, 512)
    assert torch.equal(latent_avg, latent_avg[:1].expand(18, -1))  # one mean w repeated per style
    model = load_e4e(tiny_models["e4e"])
    assert model.random_weights and model.architecture == TINY_E4E_ARCHITECTURE


def test_weights_depend_only_on_seed():
    first, again, other = (build_random_e4e(TINY_E4E_ARCHITECTURE, seed=s) for s in (1, 1, 2))
    assert torch.equal(first.encoder.latlayer1.weight, again.encoder.latlayer1.weight)
    assert torch.equal(first.latent_avg, again.latent_avg)
    assert not torch.equal(first.encoder.latlayer1.weight, other.encoder.latlayer1.weight)


def test_full_size_configs_have_the_sd15_and_e4e_parameter_counts():
    def count(model) -> int:
        return sum(p.numel() for p in model.parameters())

    # Published sizes: UNet 859.52M, VAE 83.65M, CLIP ViT-L/14 text encoder 123.06M, e4e 267.14M.
    assert count(build_random_unet(SD15_UNET_CONFIG, device="meta")) == 859_520_964
    assert count(build_random_vae(SD15_VAE_CONFIG, device="meta")) == 83_653_863
    assert count(build_random_text_encoder(SD15_TEXT_ENCODER_CONFIG, device="meta")) == 123_060_480
    assert count(build_random_e4e(OFFICIAL_E4E_ARCHITECTURE, device="meta")) == 267_136_704
