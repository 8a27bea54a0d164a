"""pidiff.schedule: SD1.5's DDPM schedule and DDIM against diffusers, read from a model folder, and
the one schedule both the trainer and the sampler use."""

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from conftest import identity_samples, text_table, train_config
from pidiff import cli
from pidiff.schedule import SD15, Schedule, ddim_step

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def sd15_ddim() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def test_training_noise_matches_diffusers_ddpm_for_sd15():
    ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    torch.testing.assert_close(SD15.alphas_cumprod().float(), ddpm.alphas_cumprod, rtol=1e-6, atol=1e-7)
    sqrt_alpha_bar, sqrt_one_minus = SD15.noise_levels("cpu")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    ours = sqrt_alpha_bar[t, None, None, None] * x0 + sqrt_one_minus[t, None, None, None] * eps
    torch.testing.assert_close(ours, ddpm.add_noise(x0, eps, t), rtol=1e-5, atol=1e-6)


def test_ddim_schedule_and_step_match_diffusers_for_sd15():
    scheduler = sd15_ddim()
    for steps in (50, 30):
        scheduler.set_timesteps(steps)
        assert SD15.ddim_timesteps(steps) == scheduler.timesteps.tolist()

    scheduler.set_timesteps(50)
    alphas = SD15.alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    timesteps = SD15.ddim_timesteps(50)
    for i in (0, 25, 49):  # first, middle and last step (which lands on ᾱ_0)
        eps = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        expected = scheduler.step(eps, timesteps[i], latents).prev_sample
        previous = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else alphas[0]
        # diffusers keeps ᾱ in float32, hence the float32-level tolerance
        torch.testing.assert_close(ddim_step(latents, eps, alphas[timesteps[i]], previous), expected, rtol=1e-5, atol=1e-5)


def test_the_schedule_is_read_from_the_model_folder(tiny_models, tmp_path):
    assert Schedule.from_sd(tiny_models["sd"]) == SD15  # `pidiff random-model` writes SD1.5's configuration
    assert Schedule.from_sd(None) == SD15 and Schedule.from_sd(tmp_path) == SD15  # no scheduler/: SD1.5's
    config = tmp_path / "scheduler" / "scheduler_config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"beta_schedule": "scaled_linear", "beta_end": 0.02, "num_train_timesteps": 500}))
    assert Schedule.from_sd(tmp_path) == Schedule(beta_end=0.02, num_train_timesteps=500)
    assert Schedule.from_sd(tmp_path).ddim_timesteps(5) == [401, 301, 201, 101, 1]
    config.write_text(json.dumps({"beta_schedule": "linear"}))
    with pytest.raises(ValueError, match=r"scheduler_config\.json: only SD1\.5's scaled_linear"):
        Schedule.from_sd(tmp_path)


def test_trainer_and_sampler_use_the_one_schedule(unet, tmp_path):
    from diffusers import AutoencoderKL

    from pidiff.model import PIDiffAdapter
    from pidiff.random_model import TINY_VAE_CONFIG
    from pidiff.sample import PIDiffSampler
    from pidiff.train import IdentityGroupTrainer, prepare_frozen_unet

    schedule = Schedule(beta_end=0.02)  # not SD1.5's: neither side may fall back to its own
    expected = schedule.alphas_cumprod()
    cfg = train_config(tmp_path)
    prepare_frozen_unet(unet, cfg)
    trainer = IdentityGroupTrainer(unet, text_table(), [identity_samples("ann")], cfg, schedule)
    trainer.adapter.uninstall(unet)
    torch.testing.assert_close(trainer.sqrt_alpha_bar, expected.sqrt().float())
    torch.testing.assert_close(trainer.sqrt_one_minus_alpha_bar, (1 - expected).sqrt().float())

    adapter = PIDiffAdapter(unet).eval().requires_grad_(False)
    sampler = PIDiffSampler(unet, AutoencoderKL(**TINY_VAE_CONFIG), adapter, use_cuda_graphs=False, schedule=schedule)
    assert torch.equal(sampler.alphas_cumprod, expected)
    assert not torch.equal(expected, SD15.alphas_cumprod())


def test_both_commands_read_the_schedule_of_sd(tiny_models, tmp_path, capsys):
    """`pidiff train` and `pidiff sample` take the schedule of --sd through pidiff.schedule: a folder
    whose scheduler is not of SD1.5's family is refused by both, with the same message."""
    sd = tmp_path / "sd"
    sd.mkdir()
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        (sd / part).symlink_to(Path(tiny_models["sd"]) / part)
    (sd / "scheduler").mkdir()
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "squaredcos_cap_v2"}))
    from conftest import write_encoded_split

    encoded = write_encoded_split(tmp_path / "encoded", {"ann_000": ("ann", "reference"), "ann_001": ("ann", "train")})
    expected = f"{sd / 'scheduler' / 'scheduler_config.json'}: only SD1.5's scaled_linear β schedule is supported"

    assert cli.main(["train", "--encoded", str(encoded), "--identity", "ann", "--sd", str(sd), "--out",
                     str(tmp_path / "run"), "--steps", "1", "--device", "cpu"]) == 2
    assert expected in capsys.readouterr().err
    assert cli.main(["sample", "--sd", str(sd), "--weights", str(tmp_path / "w.safetensors"), "--encoded", str(encoded),
                     "--prompt", "S*", "--device", "cpu", "--out", str(tmp_path / "samples")]) == 2
    assert expected in capsys.readouterr().err


def test_no_other_module_defines_a_noise_schedule():
    """The β/ᾱ arithmetic exists once: another copy could drift from what the sampler inverts.
    (random_model.py writes SD1.5's published scheduler configuration, which is data, not arithmetic.)"""
    package = Path(__file__).resolve().parents[1] / "pidiff"
    arithmetic = re.compile(r"(?<!\w)(cumprod|linspace)\(")  # torch.cumprod(, not alphas_cumprod(
    defining = sorted(p.name for p in package.glob("*.py") if arithmetic.search(p.read_text()))
    assert defining == ["schedule.py"]
