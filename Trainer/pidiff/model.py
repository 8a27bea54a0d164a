"""The PIDiff model: mapping network F and Style Cross-Attention (SCA) on a frozen SD1.5 UNet.

F turns an e4e w+ code (18 × 512) into 4 visual tokens. After the text cross-attention of every
transformer block of the UNet (the 16 `attn2` layers of SD1.5), an SCA branch attends from the
text-attention output o to those tokens and adds λ·o' before the layer's `to_out`:

    q' = Wq'·o,  k' = Wk'·F(w+),  v' = Wv'·F(w+),  o' = attention(q', k', v'),  out = to_out(o + λ·o')

Only F and the Wq'/Wk'/Wv' are trained (≈38.6M parameters for SD1.5).

Every trainable tensor has a leading identity axis K, so one process can train K identities on one
shared frozen UNet pass: the batch is identity-major (samples [k·b, (k+1)·b) belong to identity k)
and each identity's projections are applied with batched matmuls. K = 1 is the ordinary case.

The visual tokens travel to the processors appended to the text context, as IP-Adapter does in
diffusers: `encoder_hidden_states = cat([text (77 tokens), F(w+) (4 tokens)], dim=1)`. This keeps
the UNet call a pure function of its inputs (no side channels), which `torch.compile` likes.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_VISUAL_TOKENS = 4
TEXT_TOKENS = 77  # SD1.5's CLIP context: prompts are padded or cut to 77 tokens
W_PLUS_SHAPE = (18, 512)
# F reads w+ rows in four groups (coarse to fine), one Linear each, as the public W+ Adapter does.
W_PLUS_ROW_GROUPS = ((0, 4), (4, 8), (8, 12), (12, 18))
DEFAULT_INFERENCE_SCALE = 0.4  # λ at inference; training uses λ = 1.
WEIGHTS_FORMAT = "pidiff-weights"
WEIGHTS_FORMAT_VERSION = "1"

# Stable Diffusion 1.5's UNet, written out so benchmarks and tests can build the architecture
# without downloading anything (values from the public runwayml/stable-diffusion-v1-5 config).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,  # diffusers' legacy name: SD1.5 has 8 heads per attention layer
)

# SD1.5's topology (same block types, 2 layers per block, so the same 16 attn2 layers, and
# 768-d cross-attention so the mapper has its real size) at a tiny width, for tests and smoke runs.
TINY_SD15_UNET_CONFIG = dict(
    SD15_UNET_CONFIG,
    block_out_channels=(32, 32, 64, 64),
    norm_num_groups=8,
    attention_head_dim=2,
)


class MappingNetwork(nn.Module):
    """F: w+ [B, 18, 512] → visual tokens [B, 4, token_dim], with one set of weights per identity.

    Four bias-free Linears over w+ rows [0:4], [4:8], [8:12], [12:18] (inputs 2048, 2048, 2048,
    3072), one token each, then LayerNorm over the token dimension.
    """

    def __init__(self, num_identities: int = 1, token_dim: int = 768):
        super().__init__()
        self.num_identities = num_identities
        self.token_dim = token_dim
        w_dim = W_PLUS_SHAPE[1]
        # Weights stored as [K, out, in], the batched form of nn.Linear's [out, in].
        self.linear_weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_identities, token_dim, (end - start) * w_dim))
            for start, end in W_PLUS_ROW_GROUPS
        )
        self.norm_weight = nn.Parameter(torch.ones(num_identities, token_dim))
        self.norm_bias = nn.Parameter(torch.zeros(num_identities, token_dim))

    @torch.no_grad()
    def reset_parameters(self, generators: list[torch.Generator] | None = None) -> None:
        """nn.Linear's default init (U(±1/√fan_in)), drawn per identity from its own generator.

        Drawing identity k's weights from its own CPU generator makes them independent of how
        identities are grouped into a batched run and of the device.
        """
        generators = generators or [None] * self.num_identities
        for weight in self.linear_weights:
            bound = 1.0 / weight.shape[-1] ** 0.5
            for k, generator in enumerate(generators):
                draw = torch.empty(weight.shape[1:]).uniform_(-bound, bound, generator=generator)
                weight[k].copy_(draw)
        self.norm_weight.fill_(1.0)
        self.norm_bias.zero_()

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        K = self.num_identities
        w = w_plus.reshape(K, -1, *W_PLUS_SHAPE)  # identity-major batch: [K, b, 18, 512]
        tokens = [
            torch.bmm(w[:, :, start:end].flatten(2), weight.transpose(1, 2))  # [K, b, token_dim]
            for (start, end), weight in zip(W_PLUS_ROW_GROUPS, self.linear_weights)
        ]
        tokens = torch.stack(tokens, dim=2)  # [K, b, 4, token_dim]
        tokens = F.layer_norm(tokens, (self.token_dim,))
        tokens = tokens * self.norm_weight[:, None, None] + self.norm_bias[:, None, None]
        return tokens.flatten(0, 1)


class StyleCrossAttnProcessor(nn.Module):
    """Text cross-attention followed by Style Cross-Attention to the visual tokens.

    Installed on an `attn2` layer with `unet.set_attn_processor`. The text attention is computed
    exactly as diffusers' `AttnProcessor2_0` does (same ops in the same order), so with λ = 0 the
    layer's output is bit-identical to the unmodified layer's.

    Holds Wq'/Wk'/Wv' for K identities as [K, out, in]; the batch must be identity-major.
    The context must be `text_tokens` text tokens followed by the 4 visual tokens: a plain text
    context is refused rather than read with its last 4 text tokens taken for the face.
    """

    def __init__(self, attn: nn.Module, num_identities: int = 1, text_tokens: int = TEXT_TOKENS):
        super().__init__()
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross:
            raise ValueError("StyleCrossAttnProcessor supports SD1.5-style cross-attention layers only "
                             "(no spatial_norm, group_norm or norm_cross)")
        self.num_identities = num_identities
        self.text_tokens = text_tokens
        self.heads = attn.heads
        self.scale = 1.0  # λ; set with PIDiffAdapter.set_scale

        def copy_per_identity(linear: nn.Linear) -> nn.Parameter:
            weight = linear.weight.detach().float()
            return nn.Parameter(weight.unsqueeze(0).repeat(num_identities, 1, 1))

        # The style projections start as copies of the layer's own text projections.
        self.to_q = copy_per_identity(attn.to_q)
        self.to_k = copy_per_identity(attn.to_k)
        self.to_v = copy_per_identity(attn.to_v)

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                *args, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("StyleCrossAttnProcessor belongs on cross-attention (attn2) layers")
        if attention_mask is not None:
            raise ValueError("StyleCrossAttnProcessor does not support attention masks (SD1.5 uses none)")
        self._check_context_length(encoder_hidden_states.shape[1])
        text_context = encoder_hidden_states[:, :-NUM_VISUAL_TOKENS]
        visual_tokens = encoder_hidden_states[:, -NUM_VISUAL_TOKENS:]

        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = text_context.shape[0]

        # Text attention, as in AttnProcessor2_0.
        query = attn.to_q(hidden_states)
        key = attn.to_k(text_context)
        value = attn.to_v(text_context)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        text_out = text_out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        text_out = text_out.to(query.dtype)

        # Style attention: from the text-attention output to this identity's visual tokens.
        style_out = self._style_attention(text_out, visual_tokens, head_dim)
        hidden_states = text_out + self.scale * style_out

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _check_context_length(self, length: int) -> None:
        # A shape, not a value: no host sync, and torch.compile turns it into a guard.
        expected = self.text_tokens + NUM_VISUAL_TOKENS
        if length != expected:
            raise ValueError(
                f"PIDiff cross-attention needs a context of {self.text_tokens} text tokens followed by "
                f"{NUM_VISUAL_TOKENS} visual tokens ({expected}), got {length} tokens. A plain prompt (e.g. "
                "`prompt=` to a diffusers pipeline) has no face: pass prompt_embeds and negative_prompt_embeds "
                "from pidiff.model.pipeline_prompt_embeds (Docs/weights-format.md, \"Using the weights in a "
                "diffusers pipeline\"), or uninstall the adapter")

    def _style_attention(self, text_out: torch.Tensor, visual_tokens: torch.Tensor, head_dim: int) -> torch.Tensor:
        K, B = self.num_identities, text_out.shape[0]
        if B % K:
            raise ValueError(f"batch of {B} is not identity-major over {K} identities")
        # Fold the batch into [K, b·tokens, dim] so each identity's projection is one matmul.
        o = text_out.reshape(K, -1, text_out.shape[-1])
        tokens = visual_tokens.reshape(K, -1, visual_tokens.shape[-1])
        dtype = text_out.dtype
        query = torch.bmm(o, self.to_q.transpose(1, 2).to(dtype))
        key = torch.bmm(tokens, self.to_k.transpose(1, 2).to(dtype))
        value = torch.bmm(tokens, self.to_v.transpose(1, 2).to(dtype))
        query = query.view(B, -1, self.heads, head_dim).transpose(1, 2)
        key = key.view(B, -1, self.heads, head_dim).transpose(1, 2)
        value = value.view(B, -1, self.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(B, -1, self.heads * head_dim).to(dtype)


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The text cross-attention layers of a UNet (`attn2` of every transformer block), in order."""
    return {name: module for name, module in unet.named_modules() if name.endswith(".attn2")}


class PIDiffAdapter(nn.Module):
    """All trainable parts of PIDiff for K identities: the mapping network and one SCA per layer.

    text_tokens: the length of the text context the UNet is given (77 for SD1.5's CLIP).
    """

    def __init__(self, unet: nn.Module, num_identities: int = 1, text_tokens: int = TEXT_TOKENS):
        super().__init__()
        layers = cross_attention_layers(unet)
        if not layers:
            raise ValueError("the UNet has no cross-attention (attn2) layers")
        self.num_identities = num_identities
        self.text_tokens = text_tokens
        self.layer_names = list(layers)
        self.mapper = MappingNetwork(num_identities, token_dim=unet.config.cross_attention_dim)
        self.mapper.reset_parameters()
        self.style_attention = nn.ModuleList(
            StyleCrossAttnProcessor(attn, num_identities, text_tokens) for attn in layers.values()
        )
        self._replaced_processors: dict[str, object] | None = None

    # -- installing on a UNet ------------------------------------------------------------------

    def install(self, unet: nn.Module) -> None:
        """Put the SCA processors on the UNet's attn2 layers (other processors are kept).

        Cast the UNet (e.g. to bf16) before installing: the processors become submodules of the
        attention layers, and a later `unet.to(dtype)` would cast the trainable weights too.
        """
        current = unet.attn_processors
        self._replaced_processors = {f"{name}.processor": current[f"{name}.processor"] for name in self.layer_names}
        processors = dict(current)
        for name, processor in zip(self.layer_names, self.style_attention):
            processors[f"{name}.processor"] = processor
        unet.set_attn_processor(processors)

    def uninstall(self, unet: nn.Module) -> None:
        """Give the attn2 layers back the processors they had before `install`."""
        if self._replaced_processors is None:
            raise RuntimeError("the adapter is not installed")
        processors = dict(unet.attn_processors)
        processors.update(self._replaced_processors)
        unet.set_attn_processor(processors)
        self._replaced_processors = None

    def set_scale(self, scale: float) -> None:
        """Set λ, the weight of the style-attention output, in every layer."""
        for processor in self.style_attention:
            processor.scale = float(scale)

    def context(self, text_embeddings: torch.Tensor, w_plus: torch.Tensor) -> torch.Tensor:
        """The UNet's `encoder_hidden_states`: text tokens followed by the visual tokens F(w+)."""
        visual_tokens = self.mapper(w_plus).to(text_embeddings.dtype)
        return torch.cat([text_embeddings, visual_tokens], dim=1)

    def denoise(self, unet: nn.Module, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                text_embeddings: torch.Tensor, w_plus: torch.Tensor) -> torch.Tensor:
        """ε-prediction of the UNet (with this adapter installed) for a batch of w+ codes."""
        context = self.context(text_embeddings, w_plus)
        return unet(noisy_latents, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    @classmethod
    def from_weights(cls, unet: nn.Module, path: str | Path,
                     text_tokens: int = TEXT_TOKENS) -> tuple["PIDiffAdapter", dict[str, str]]:
        """A one-identity adapter for `unet` loaded from a `pidiff.safetensors`, and its metadata."""
        tensors, metadata = load_weights(path)
        adapter = cls(unet, num_identities=1, text_tokens=text_tokens)
        try:
            adapter.load_identity_state_dict(0, tensors)
        except (KeyError, ValueError) as error:
            # Names and shapes follow the UNet's layers, so a mismatch means another architecture.
            trained_on = metadata.get("base_model_path")
            raise ValueError(f"{path}: these weights were trained for another base model"
                             f"{f' ({trained_on})' if trained_on else ''} than this UNet: {error.args[0]}") from error
        return adapter, metadata

    # -- per-identity weights ----------------------------------------------------------------

    def identity_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Identity k's trainable weights, unbatched, under the names of Docs/weights-format.md."""
        state = {f"mapper.linears.{i}.weight": w[k] for i, w in enumerate(self.mapper.linear_weights)}
        state["mapper.norm.weight"] = self.mapper.norm_weight[k]
        state["mapper.norm.bias"] = self.mapper.norm_bias[k]
        for name, processor in zip(self.layer_names, self.style_attention):
            state[f"sca.{name}.to_q.weight"] = processor.to_q[k]
            state[f"sca.{name}.to_k.weight"] = processor.to_k[k]
            state[f"sca.{name}.to_v.weight"] = processor.to_v[k]
        return {name: t.detach().float().contiguous() for name, t in state.items()}

    @torch.no_grad()
    def load_identity_state_dict(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Load one identity's weights (as written by `identity_state_dict`) into slot k."""
        expected = self.identity_state_dict(k)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise KeyError(f"weights do not match this UNet: missing {missing[:3]}, unexpected {unexpected[:3]}")
        targets = {f"mapper.linears.{i}.weight": w for i, w in enumerate(self.mapper.linear_weights)}
        targets["mapper.norm.weight"] = self.mapper.norm_weight
        targets["mapper.norm.bias"] = self.mapper.norm_bias
        for name, processor in zip(self.layer_names, self.style_attention):
            targets[f"sca.{name}.to_q.weight"] = processor.to_q
            targets[f"sca.{name}.to_k.weight"] = processor.to_k
            targets[f"sca.{name}.to_v.weight"] = processor.to_v
        for name, target in targets.items():
            if state[name].shape != target.shape[1:]:
                raise ValueError(f"{name} has shape {tuple(state[name].shape)} in the weights, this UNet's "
                                 f"needs {tuple(target.shape[1:])}")
            target[k].copy_(state[name])


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with the file's mode following the umask like any other output
    (safetensors 0.8 creates its files 0600, unreadable to the group a shared setup relies on)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_weights(path: str | Path, adapter: PIDiffAdapter, k: int, metadata: dict[str, object]) -> None:
    """Write identity k's weights as `pidiff.safetensors` (see Docs/weights-format.md).

    Written beside the target and renamed over it, as checkpoints are: a run killed while writing
    leaves the previous file or none, never a truncated one that `--resume` would find.
    """
    header = {"format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION,
              "num_visual_tokens": str(NUM_VISUAL_TOKENS)}
    for key, value in metadata.items():
        header[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    save_safetensors(adapter.identity_state_dict(k), partial, metadata=header)
    os.replace(partial, path)


@contextmanager
def open_weights(path: str | Path):
    """safe_open on a weights file, with errors that name it: safetensors' own say neither which
    file nor that it may be cut short or of another kind."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path}: not found")
    try:
        f = safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or of another kind ({error})") from error
    with f:
        yield f


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a `pidiff.safetensors`: (tensors, metadata). Raises if it is not PIDiff weights this code reads."""
    with open_weights(path) as f:
        metadata = f.metadata() or {}
        check_weights_metadata(path, metadata)
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return tensors, metadata


def load_weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a `pidiff.safetensors` without reading its tensors (checked as `load_weights` does)."""
    with open_weights(path) as f:
        metadata = f.metadata() or {}
    check_weights_metadata(path, metadata)
    return metadata


def check_weights_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Refuse files that are not PIDiff weights, or that a newer writer made in a layout we may not know.

    Older versions are read: the version is bumped on an incompatible change, and reading an older
    layout is this code's job; a newer one may mean something this code cannot tell.
    """
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a PIDiff weights file (format={metadata.get('format')!r})")
    version = metadata.get("format_version", "")
    if not (version.isascii() and version.isdigit()):
        raise ValueError(f"{path}: format_version {version!r} is not a version number")
    if int(version) > int(WEIGHTS_FORMAT_VERSION):
        raise ValueError(f"{path} has weights format version {version}, newer than version "
                         f"{WEIGHTS_FORMAT_VERSION} that this pidiff reads: update pidiff to load it")


def model_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes): identifies the base UNet.

    Computed from the tensors rather than files, so the same weights give the same fingerprint
    whatever the file layout.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# A standard diffusers StableDiffusionPipeline (see Docs/weights-format.md).
def load_into_pipeline(pipe, weights_path: str | Path, lam: float | None = None) -> PIDiffAdapter:
    """Install the PIDiff processors of `pidiff.safetensors` on `pipe.unet`; returns the adapter.

    λ is `lam`, else the weights' `default_lambda` (0.4). Cast the pipeline (`pipe.to(device, dtype)`)
    before calling. The face then goes in through `prompt_embeds` (see `pipeline_prompt_embeds`):
    the text embeddings followed by the 4 visual tokens F(w+), and F(zeros) on the negative side.
    `adapter.uninstall(pipe.unet)` restores the pipeline's own processors.
    """
    unet = pipe.unet
    # The pipeline pads prompts to its tokenizer's length (77 for SD1.5), so that is the text length.
    text_tokens = getattr(getattr(pipe, "tokenizer", None), "model_max_length", TEXT_TOKENS)
    adapter, metadata = PIDiffAdapter.from_weights(unet, weights_path, text_tokens)
    adapter.to(unet.device).eval().requires_grad_(False)
    adapter.metadata = metadata
    adapter.set_scale(lam if lam is not None else float(json.loads(metadata.get("default_lambda", "0.4"))))
    adapter.install(unet)
    return adapter


@torch.no_grad()
def pipeline_prompt_embeds(pipe, adapter: PIDiffAdapter, prompt: str | list[str], w_plus: torch.Tensor,
                           negative_prompt: str | list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, negative_prompt_embeds) for `pipe(prompt_embeds=…, negative_prompt_embeds=…)`.

    prompt_embeds = cat(text embeddings, F(w+)); negative_prompt_embeds = cat(embeddings of the
    negative prompt (default: the empty prompt), F(zeros)), the paper's unconditional branch.
    w_plus: [18, 512] (one face for every prompt) or [B, 18, 512].
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    device = pipe.unet.device
    text, negative = pipe.encode_prompt(prompts, device, 1, True, negative_prompt)
    w = w_plus.to(device, torch.float32)
    if w.ndim == 2:
        w = w[None]
    w = w.expand(len(prompts), *W_PLUS_SHAPE)
    return adapter.context(text, w), adapter.context(negative, torch.zeros_like(w))
