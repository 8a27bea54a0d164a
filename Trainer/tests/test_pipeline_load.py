"""PIDiff weights in a standard diffusers StableDiffusionPipeline (the snippet of Docs/weights-format.md)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from pidiff.model import PIDiffAdapter, load_into_pipeline, pipeline_prompt_embeds, save_weights


@pytest.fixture
def weights(tiny_models, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    adapter = PIDiffAdapter(unet)
    with torch.no_grad():  # a visible style branch: move F and Wk'/Wv' off their initial values
        g = torch.Generator().manual_seed(5)
        for processor in adapter.style_attention:
            processor.to_v.add_(torch.randn(processor.to_v.shape, generator=g) * 0.5)
    path = tmp_path / "pidiff.safetensors"
    save_weights(path, adapter, 0, {"identity": "ann", "placeholder": "S*", "default_lambda": 0.4})
    return path


def pipeline(tiny_models) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def run(pipe, seed=0, **embeds) -> np.ndarray:
    return pipe(**embeds, num_inference_steps=2, guidance_scale=7.5, height=64, width=64, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed)).images


def test_weights_load_into_a_standard_pipeline(tiny_models, weights):
    pipe = pipeline(tiny_models)
    prompt = "a photo of S* reading in the library"
    plain = run(pipe, prompt=prompt)

    adapter = load_into_pipeline(pipe, weights, lam=0.0)
    w_plus = torch.randn(18, 512, generator=torch.Generator().manual_seed(1))
    prompt_embeds, negative_prompt_embeds = pipeline_prompt_embeds(pipe, adapter, prompt, w_plus)
    assert prompt_embeds.shape == (1, 77 + 4, pipe.unet.config.cross_attention_dim)
    embeds = dict(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)

    at_zero = run(pipe, **embeds)
    assert np.array_equal(at_zero, plain)  # λ = 0: the base pipeline's output exactly

    adapter.set_scale(1.0)
    at_one = run(pipe, **embeds)
    assert np.array_equal(run(pipe, **embeds), at_one)  # deterministic for a seed on CPU
    assert not np.allclose(at_one, plain, atol=1e-3)

    adapter.uninstall(pipe.unet)
    assert np.array_equal(run(pipe, prompt=prompt), plain)


def test_default_lambda_comes_from_the_weights(tiny_models, weights):
    pipe = pipeline(tiny_models)
    adapter = load_into_pipeline(pipe, weights)
    assert all(p.scale == 0.4 for p in adapter.style_attention)
    assert adapter.metadata["identity"] == "ann"


def test_a_plain_prompt_is_refused_while_the_adapter_is_installed(tiny_models, weights):
    # prompt= gives 77 text tokens and no face; the processors must say so, not read the last
    # 4 text tokens as the face (then λ = 0 would no longer be the plain pipeline).
    pipe = pipeline(tiny_models)
    adapter = load_into_pipeline(pipe, weights, lam=0.0)
    with pytest.raises(ValueError, match=r"got 77 tokens.*pipeline_prompt_embeds"):
        run(pipe, prompt="a photo of S*")
    assert all(p.text_tokens == pipe.tokenizer.model_max_length == 77 for p in adapter.style_attention)
