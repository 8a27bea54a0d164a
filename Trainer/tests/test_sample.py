"""The sampler: SD1.5's DDIM schedule and step, and `pidiff sample` end to end on a tiny model."""

import json

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import save_file

from pidiff import cli
from pidiff.model import PIDiffAdapter, save_weights
from pidiff.sample import ddim_step, ddim_timesteps, sd15_alphas_cumprod


# one_cpu_thread (autouse for these tiny-model tests) lives in conftest.py.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def sd15_ddim() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def test_ddim_schedule_and_step_match_diffusers_for_sd15():
    scheduler = sd15_ddim()
    for steps in (50, 30):
        scheduler.set_timesteps(steps)
        assert ddim_timesteps(steps) == scheduler.timesteps.tolist()

    scheduler.set_timesteps(50)
    alphas = sd15_alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    timesteps = ddim_timesteps(50)
    for i in (0, 25, 49):  # first, middle and last step (which lands on ᾱ_0)
        eps = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        expected = scheduler.step(eps, timesteps[i], latents).prev_sample
        previous = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else alphas[0]
        # diffusers keeps ᾱ in float32, hence the float32-level tolerance
        torch.testing.assert_close(ddim_step(latents, eps, alphas[timesteps[i]], previous), expected, rtol=1e-5, atol=1e-5)


def test_sample_command_writes_one_png_per_prompt_and_image(tiny_models, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*", "default_lambda": 0.4})
    encoded = tmp_path / "encoded"
    encoded.mkdir()
    keys = ["ann_000", "ann_001", "bob_000"]
    save_file({"w_plus": torch.randn(3, 18, 512), "latent_mean": torch.zeros(3, 4, 8, 8), "latent_std": torch.ones(3, 4, 8, 8)},
              str(encoded / "faces-000000.safetensors"),
              metadata={"format": "pidiff-encoded/1", "keys": json.dumps(keys), "scaling_factor": "0.18215"})
    labels = {"ann_000": {"identity": "ann", "role": "train"}, "ann_001": {"identity": "ann", "role": "reference"},
              "bob_000": {"identity": "bob", "role": "train"}}
    (encoded / "faces-000000.samples.json").write_text(json.dumps(labels))

    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--encoded", str(encoded),
            "--prompt", "a photo of S*", "--prompt", "S* at the beach", "--num-images", "2", "--steps", "2",
            "--latent-size", "8", "--device", "cpu", "--out", str(tmp_path / "samples")]
    assert cli.main(argv) == 0
    pngs = sorted((tmp_path / "samples").glob("[0-9]*.png"))
    assert [p.name for p in pngs] == ["000.png", "001.png", "002.png", "003.png"]
    assert (tmp_path / "samples" / "grid.png").is_file() and (tmp_path / "samples" / "sample.json").is_file()
    from PIL import Image

    assert Image.open(pngs[0]).size == (64, 64)  # 8x8 latents, the VAE's 8x upsampling


def tiny_sampler():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from pidiff.model import TINY_SD15_UNET_CONFIG
    from pidiff.random_model import TINY_VAE_CONFIG
    from pidiff.sample import PIDiffSampler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_SD15_UNET_CONFIG).eval().requires_grad_(False)
    vae = AutoencoderKL(**TINY_VAE_CONFIG).eval().requires_grad_(False)
    adapter = PIDiffAdapter(unet).eval().requires_grad_(False)
    adapter.install(unet)
    return PIDiffSampler(unet, vae, adapter, use_cuda_graphs=False)


def test_static_buffer_loop_matches_the_eager_loop_exactly():
    # The CUDA-graph path replays one step that reads t and ᾱ from device tables at a device-side
    # counter; run uncaptured on CPU, it must give the eager loop's latents bit for bit.
    sampler = tiny_sampler()
    g = torch.Generator().manual_seed(1)
    prompts, empty, w_plus = torch.randn(2, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g), torch.randn(2, 18, 512, generator=g)

    def run(static_loop: bool) -> torch.Tensor:
        return sampler(prompts, empty, w_plus, steps=3, guidance=5.0, scale=0.4, latent_size=8, decode=False,
                       generator=torch.Generator().manual_seed(3), static_loop=static_loop)

    eager = run(False)
    assert torch.equal(run(True), eager)
    assert torch.equal(run(True), eager)  # the cached loop resets its counter and buffers
    assert not torch.equal(eager, torch.randn(eager.shape, generator=torch.Generator().manual_seed(3)))


def test_sample_command_takes_the_face_as_a_wplus_file(tiny_models, tmp_path):
    import numpy as np
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*", "default_lambda": 0.4})
    face = tmp_path / "face.npy"
    np.save(face, np.random.default_rng(0).standard_normal((1, 18, 512)).astype(np.float32))
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--prompt", "a photo of S*",
            "--steps", "1", "--latent-size", "8", "--device", "cpu"]
    assert cli.main(argv + ["--wplus", str(face), "--out", str(tmp_path / "samples")]) == 0
    assert (tmp_path / "samples" / "000.png").is_file()
    sidecar = json.loads((tmp_path / "samples" / "sample.json").read_text())
    assert str(face) in json.dumps(sidecar)

    wrong = tmp_path / "wrong.pt"
    torch.save(torch.zeros(2, 18, 512), wrong)
    with pytest.raises(SystemExit, match="wrong.pt.*shape"):
        cli.main(argv + ["--wplus", str(wrong), "--out", str(tmp_path / "other")])
