"""Encoder4Editing (e4e): aligned 256x256 face -> StyleGAN2 w+ code [B, 18, 512].

Our own implementation of the encoder from "Designing an Encoder for StyleGAN Image Manipulation"
(Tov et al. 2021). Module and parameter names follow the official code on purpose, so that the
official checkpoint `e4e_ffhq_encode.pt` loads with `load_state_dict(strict=True)`:

    input_layer   Conv 3->64 3x3 (no bias), BatchNorm, PReLU
    body.0..23    IR-SE-50: 3, 4, 14, 3 bottleneck_IR_SE units of width 64, 128, 256, 512
    styles.0..17  GradualStyleBlock: stride-2 3x3 convs + LeakyReLU down to 1x1, then EqualLinear
    latlayer1/2   1x1 convs of the feature pyramid (c2 -> p2, c1 -> p1)

Checkpoint layout: {"state_dict": {"encoder.*", "decoder.*"}, "opts": dict, "latent_avg": [18, 512]}.
Only the `encoder.` keys are used; `latent_avg` (the mean w of the StyleGAN mapping network) is
added to the encoder output, as the official pSp wrapper does with `start_from_latent_avg`.

Everything here is plain PyTorch: EqualLinear is a scaled F.linear and needs no CUDA extension.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# IR-SE-50 stage layout. The FPN taps are the outputs of the last unit of stages 2, 3 and 4,
# i.e. body indices 6 (c1), 20 (c2) and 23 (c3) in the official code.
IR_SE_50_UNITS_PER_STAGE = (3, 4, 14, 3)
# Styles [0, 3) read c3 (16x16), [3, 7) read p2 (32x32), [7, 18) read p1 (64x64).
COARSE_STYLE_END = 3
MIDDLE_STYLE_END = 7
SE_REDUCTION = 16


class E4ECheckpointError(ValueError):
    """An e4e checkpoint that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class E4EArchitecture:
    """Widths of the encoder. The defaults are the official FFHQ encoder (267M parameters).

    A smaller `stage_widths` gives a tiny encoder of the same topology for tests; the w+ code
    stays [18, 512] because downstream code (the PIDiff mapper) depends on that shape.
    """

    stage_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    w_dim: int = 512
    stylegan_size: int = 1024

    @property
    def style_count(self) -> int:
        # StyleGAN2 at resolution R has 2*log2(R) - 2 style inputs: 18 for 1024x1024.
        return 2 * int(math.log2(self.stylegan_size)) - 2

    @property
    def fpn_channels(self) -> int:
        # p2 = up(c3) + latlayer1(c2), so the pyramid has the width of the last stage.
        return self.stage_widths[3]


OFFICIAL_E4E_ARCHITECTURE = E4EArchitecture()
TINY_E4E_ARCHITECTURE = E4EArchitecture(stage_widths=(16, 32, 48, 64))


class EqualLinear(nn.Module):
    """StyleGAN2's equalized-learning-rate linear layer (no activation variant).

    The weight is stored unscaled and multiplied by lr_mul / sqrt(in_dim) at every call, so the
    checkpoint's raw `weight`/`bias` tensors are used as they are.
    """

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    def extra_repr(self) -> str:
        return f"in_dim={self.weight.shape[1]}, out_dim={self.weight.shape[0]}, lr_mul={self.lr_mul}"


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from global average pooling (1x1 convs, no bias)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """ArcFace's improved residual unit with SE (the official `bottleneck_IR_SE`).

    res_layer = BN, conv3x3, PReLU, conv3x3(stride), BN, SE; the shortcut is an identity (a 1x1
    max-pool, which only subsamples) when the width is unchanged, else a strided 1x1 conv + BN.
    """

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, SE_REDUCTION),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """Reduces a square feature map to one style vector: log2(spatial) stride-2 convs, then
    EqualLinear. `convs` alternates Conv2d and LeakyReLU (slope 0.01, PyTorch's default, as in
    the official code), so conv weights sit at even indices 0, 2, 4, ..."""

    def __init__(self, channels: int, out_dim: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, out_dim, lr_mul=1.0)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.channels))


def upsample_add(coarse: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear (align_corners=True, as the official code) upsampling of the coarser
    map to the lateral map's size, plus the lateral map."""
    upsampled = F.interpolate(coarse, size=lateral.shape[-2:], mode="bilinear", align_corners=True)
    return upsampled + lateral


class Encoder4Editing(nn.Module):
    """The e4e encoder in its inference stage: every one of the 18 styles is used.

    Returns the offset from latent_avg (add it, or use `E4EEncoder`, to get w+). w0 from the
    coarsest features is repeated to all 18 rows, then row i >= 1 adds its own delta. The sum is
    done in float32 so bf16 autocast only affects the convolutions.
    """

    def __init__(self, architecture: E4EArchitecture = OFFICIAL_E4E_ARCHITECTURE):
        super().__init__()
        self.architecture = architecture
        widths = architecture.stage_widths
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        units: list[nn.Module] = []
        in_channels = widths[0]
        for depth, unit_count in zip(widths, IR_SE_50_UNITS_PER_STAGE):
            # The first unit of every stage halves the resolution (256 -> 128 -> 64 -> 32 -> 16).
            units.append(BottleneckIRSE(in_channels, depth, stride=2))
            units += [BottleneckIRSE(depth, depth, stride=1) for _ in range(unit_count - 1)]
            in_channels = depth
        self.body = nn.Sequential(*units)
        stage_ends = [sum(IR_SE_50_UNITS_PER_STAGE[: i + 1]) - 1 for i in range(4)]
        self.c1_index, self.c2_index, self.c3_index = stage_ends[1], stage_ends[2], stage_ends[3]

        fpn = architecture.fpn_channels
        self.styles = nn.ModuleList()
        for i in range(architecture.style_count):
            spatial = 16 if i < COARSE_STYLE_END else 32 if i < MIDDLE_STYLE_END else 64
            self.styles.append(GradualStyleBlock(fpn, architecture.w_dim, spatial))
        self.latlayer1 = nn.Conv2d(widths[2], fpn, kernel_size=1)
        self.latlayer2 = nn.Conv2d(widths[1], fpn, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(images)
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index == self.c1_index:
                c1 = x
            elif index == self.c2_index:
                c2 = x
        c3 = x

        w0 = self.styles[0](c3).float()
        deltas = []
        features = c3
        for i in range(1, len(self.styles)):
            if i == COARSE_STYLE_END:
                p2 = upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE_STYLE_END:
                features = upsample_add(p2, self.latlayer2(c1))
            deltas.append(self.styles[i](features))
        w = w0.unsqueeze(1).repeat(1, len(self.styles), 1)
        w[:, 1:] += torch.stack(deltas, dim=1).float()
        return w


class E4EEncoder(nn.Module):
    """Encoder4Editing plus the checkpoint's latent_avg: images in [-1, 1] -> w+ (float32).

    Its state dict mirrors the checkpoint: `encoder.*` and `latent_avg`.
    """

    def __init__(self, architecture: E4EArchitecture = OFFICIAL_E4E_ARCHITECTURE):
        super().__init__()
        self.encoder = Encoder4Editing(architecture)
        self.register_buffer("latent_avg", torch.zeros(architecture.style_count, architecture.w_dim))
        # Set by load_e4e from the checkpoint's opts: outputs of random weights must say so.
        self.random_weights = False

    @property
    def architecture(self) -> E4EArchitecture:
        return self.encoder.architecture

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images) + self.latent_avg.float()


# ---------------------------------------------------------------------------------------------
# Checkpoint I/O

ENCODER_PREFIX = "encoder."
# Set by `pidiff random-model` in `opts`; the official checkpoint has neither key.
OPTS_RANDOM_WEIGHTS = "pidiff_random_weights"
OPTS_ARCHITECTURE = "pidiff_architecture"


def architecture_from_opts(opts: dict) -> E4EArchitecture:
    """The official checkpoint's opts name only the StyleGAN size; our random ones may add widths."""
    custom = opts.get(OPTS_ARCHITECTURE) or {}
    return E4EArchitecture(
        stage_widths=tuple(int(w) for w in custom.get("stage_widths", OFFICIAL_E4E_ARCHITECTURE.stage_widths)),
        w_dim=int(custom.get("w_dim", OFFICIAL_E4E_ARCHITECTURE.w_dim)),
        stylegan_size=int(opts.get("stylegan_size", OFFICIAL_E4E_ARCHITECTURE.stylegan_size)),
    )


def read_e4e_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True (no arbitrary code from pickles), plus layout checks."""
    path = Path(path)
    if not path.is_file():
        raise E4ECheckpointError(f"{path}: e4e checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise E4ECheckpointError(
            f"{path}: cannot be loaded with torch.load(weights_only=True); it holds Python objects "
            f"other than tensors and plain containers ({error})"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise E4ECheckpointError(f"{path}: not a readable torch checkpoint ({error})") from error

    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise E4ECheckpointError(f"{path}: expected a dict with a 'state_dict' entry (official e4e layout)")
    opts = checkpoint.get("opts") or {}
    if not isinstance(opts, dict):
        raise E4ECheckpointError(f"{path}: 'opts' should be a dict, found {type(opts).__name__}")
    encoder_type = opts.get("encoder_type", "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise E4ECheckpointError(f"{path}: encoder_type is {encoder_type!r}, expected 'Encoder4Editing'")
    if not isinstance(checkpoint.get("latent_avg"), torch.Tensor):
        raise E4ECheckpointError(f"{path}: no 'latent_avg' tensor; w+ codes would lack the mean latent")
    return checkpoint


def load_e4e(path: str | Path, device: torch.device | str = "cpu") -> E4EEncoder:
    """Build the encoder the checkpoint describes and load its `encoder.` weights strictly."""
    path = Path(path)
    checkpoint = read_e4e_checkpoint(path)
    architecture = architecture_from_opts(checkpoint.get("opts") or {})
    encoder_state = {
        key[len(ENCODER_PREFIX):]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(ENCODER_PREFIX)
    }
    if not encoder_state:
        raise E4ECheckpointError(f"{path}: no '{ENCODER_PREFIX}*' keys in state_dict")

    model = E4EEncoder(architecture)
    try:
        model.encoder.load_state_dict(encoder_state, strict=True)
    except RuntimeError as error:
        raise E4ECheckpointError(f"{path}: encoder weights do not match Encoder4Editing: {error}") from error

    latent_avg = checkpoint["latent_avg"]
    expected = tuple(model.latent_avg.shape)
    if tuple(latent_avg.shape) != expected:
        raise E4ECheckpointError(f"{path}: latent_avg has shape {tuple(latent_avg.shape)}, expected {expected}")
    model.latent_avg.copy_(latent_avg)
    model.random_weights = bool((checkpoint.get("opts") or {}).get(OPTS_RANDOM_WEIGHTS, False))
    return model.to(device).eval().requires_grad_(False)
