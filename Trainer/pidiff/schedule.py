"""SD1.5's noise schedule, defined once: the DDPM forward process the trainer noises latents with
and the DDIM timesteps and update the sampler denoises with. Both read it from the same place.

    β_t = linspace(√β_start, √β_end, T)² ("scaled_linear"), ᾱ_t = ∏_{s≤t} (1 − β_s)
    training:  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,  t uniform in [0, T)
    sampling:  DDIM, "leading" spacing with steps_offset, η = 0, ᾱ_0 after the last step

SD1.5: β 0.00085 … 0.012, T = 1000, steps_offset 1 (its scheduler/scheduler_config.json, which
`Schedule.from_sd` reads; a folder without one gets these values).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Schedule:
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    steps_offset: int = 1

    @classmethod
    def from_sd(cls, sd_path: str | Path | None) -> "Schedule":
        """The schedule of a diffusers Stable Diffusion folder (`scheduler/scheduler_config.json`);
        SD1.5's where the folder has none. Only the scaled_linear family is supported."""
        path = Path(sd_path) / "scheduler" / "scheduler_config.json" if sd_path else None
        if path is None or not path.is_file():
            return cls()
        try:
            config = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path}: not readable JSON ({error})") from None
        if config.get("beta_schedule", "scaled_linear") != "scaled_linear" or config.get("trained_betas"):
            raise ValueError(f"{path}: only SD1.5's scaled_linear β schedule is supported, not "
                             f"{config.get('beta_schedule')!r}")
        defaults = cls()
        return cls(beta_start=float(config.get("beta_start", defaults.beta_start)),
                   beta_end=float(config.get("beta_end", defaults.beta_end)),
                   num_train_timesteps=int(config.get("num_train_timesteps", defaults.num_train_timesteps)),
                   steps_offset=int(config.get("steps_offset", defaults.steps_offset)))

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0 … T−1, float64 (cast where used)."""
        betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.num_train_timesteps,
                               dtype=torch.float64) ** 2
        return torch.cumprod(1.0 - betas, dim=0)

    def noise_levels(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1 − ᾱ_t)), float32 on `device`: what training multiplies x_0 and ε by."""
        alphas_cumprod = self.alphas_cumprod()
        return alphas_cumprod.sqrt().float().to(device), (1.0 - alphas_cumprod).sqrt().float().to(device)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """DDIM's timesteps, "leading" spacing: 981, 961, …, 1 for 50 steps of SD1.5."""
        if not 1 <= steps <= self.num_train_timesteps:  # 0 would divide by zero; more would repeat timesteps
            raise ValueError(f"DDIM steps must be from 1 to {self.num_train_timesteps}, got {steps}")
        stride = self.num_train_timesteps // steps
        return [i * stride + self.steps_offset for i in range(steps)][::-1]


SD15 = Schedule()


def ddim_step(latents: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """DDIM with η = 0: predict x0 from ε, then move to the previous timestep along the same ε.

    After the last step SD1.5 uses ᾱ_0 as the "previous" ᾱ (set_alpha_to_one=False).
    """
    x0 = (latents - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps
