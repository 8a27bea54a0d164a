"""What `pidiff train` and `pidiff sample` read: the encoded folder and the prompts.

The encoded shards of `pidiff encode` (Docs/encoded-format.md) carry each sample's w+, VAE latent
distribution, identity, role ("train" | "reference") and labels, so the encoded folder is all
training and sampling need; nothing here opens the source shards. Training takes an identity's
"train" samples plus its "style" samples (a photo of another face carrying a style the identity's
photos lack, paper §3.4.4); sampling takes its first "reference" sample as the face, and
`--style-from-split` its first "style" sample as the style face.

Prompts: a finite template set with the placeholder filled in, embedded once by the CLIP text
encoder (the last hidden state, as SD1.5 uses), so neither command runs the text encoder per step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pidiff.encode import EncodedShard, read_encoded_shard

TRAINED_ROLES = ("train", "style")  # what `pidiff train` trains an identity on

# Prompt templates ("{}" = placeholder), in the style of Textual Inversion's small template set.
DEFAULT_TEMPLATES = (
    "a photo of {}",
    "a cropped photo of {}",
    "a close-up photo of {}",
    "a good photo of {}",
    "a bright photo of {}",
    "a dark photo of {}",
    "a clean photo of {}",
    "a nice photo of {}",
    "a portrait of {}",
    "a photo of the face of {}",
    "a blurry photo of {}",
    "a rendition of {}",
)


# ----------------------------------------------------------------------------------------------
# Encoded samples.
@dataclass
class IdentitySamples:
    """One identity's training samples, rows in key order."""
    identity: str
    keys: list[str]
    w_plus: torch.Tensor       # [N, 18, 512]
    latent_mean: torch.Tensor  # [N, 4, h, w], already multiplied by the VAE scaling factor
    latent_std: torch.Tensor   # [N, 4, h, w], idem
    roles: list[str] = dataclasses.field(default_factory=list)  # per row: "train" or "style" (empty: all train)
    view: str = "aligned"  # framing of the 512 images the latents come from (encoded `view` metadata)
    _fingerprint: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def to(self, device) -> "IdentitySamples":
        return dataclasses.replace(self, w_plus=self.w_plus.to(device), latent_mean=self.latent_mean.to(device),
                                   latent_std=self.latent_std.to(device))

    def fingerprint(self) -> str:
        """SHA-256 of the identity, keys and tensors trained on; hashed once per object (the
        --resume checks and the trainer all ask for it)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps([self.identity, self.keys]).encode())
            for tensor in (self.w_plus, self.latent_mean, self.latent_std):
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def split_shard_paths(encoded_dir: str | Path, split: str = "") -> list[Path]:
    """The encoded shards of `split`, NAME-NNNNNN.safetensors (six digits), or every shard without a split.

    Matched on the whole file name rather than globbed: split names may hold '-', and `v1-*` would
    also take the shards of a split `v1-small`.
    """
    paths = sorted(Path(encoded_dir).glob("*.safetensors"))
    if not split:
        return paths
    shard_name = re.compile(re.escape(split) + r"-[0-9]{6}\.safetensors")
    return [path for path in paths if shard_name.fullmatch(path.name)]


def read_encoded_split(encoded_dir: str | Path, split: str = "") -> Iterator[EncodedShard]:
    """The encoded shards of `split` (or of the folder), read and checked one at a time, so only one
    shard's tensors are in memory; a split without shards is an error."""
    paths = split_shard_paths(encoded_dir, split)
    if not paths:
        pattern = f"{split}-NNNNNN.safetensors" if split else "*.safetensors"
        raise FileNotFoundError(f"no encoded shards {pattern} in {encoded_dir}")
    return (read_encoded_shard(path) for path in paths)


def load_training_samples(encoded_dir: str | Path, identities: list[str] | None,
                          split: str = "") -> dict[str, IdentitySamples]:
    """Training samples (roles "train" and "style") per identity, from the encoded shards in `encoded_dir`.

    Every shard read is checked whole (`read_encoded_shard`: dtypes, shapes, finite values, keys unique
    here across shards too); only the shards holding samples to train on are checked for one pair of
    encoders (e4e, VAE): other splits or identities in the folder may have been encoded otherwise. Latent mean/std are
    stored unscaled; they are multiplied here by the shard's VAE scaling factor (0.18215 for SD1.5),
    as SD's training does with sampled latents.
    """
    wanted = set(identities) if identities else None
    rows: dict[str, list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    encoders: dict[tuple[str, str], Path] = {}  # (e4e, VAE) fingerprints → the first shard used made with them
    views: dict[str, Path] = {}  # framing → the first shard used with it
    seen: dict[str, Path] = {}  # key → the shard it was first read from
    for shard in read_encoded_split(encoded_dir, split):
        check_keys_unique(shard, seen)
        taken = [(i, key, sample["identity"]) for i, (key, sample) in enumerate(zip(shard.keys, shard.samples))
                 if sample["role"] in TRAINED_ROLES and (wanted is None or sample["identity"] in wanted)]
        if not taken:
            continue
        encoders.setdefault((shard.metadata.get("e4e_sha256", "unrecorded"), shard.metadata.get("vae_sha256", "unrecorded")),
                            shard.path)
        if len(encoders) > 1:
            ((e4e_a, vae_a), earlier), ((e4e_b, vae_b), later) = list(encoders.items())[:2]
            raise ValueError(f"{earlier.name} (e4e {e4e_a[:12]}, VAE {vae_a[:12]}) and {later.name} (e4e {e4e_b[:12]}, "
                             f"VAE {vae_b[:12]}) in {encoded_dir} were not encoded with the same models: their w+ and "
                             "latents do not share one space; re-encode them with one e4e and one VAE")
        views.setdefault(shard.metadata.get("view", "aligned"), shard.path)
        if len(views) > 1:
            (view_a, earlier), (view_b, later) = list(views.items())[:2]
            raise ValueError(f"{earlier.name} (view {view_a}) and {later.name} (view {view_b}) in {encoded_dir} frame their "
                             "images differently; train on one view (export --view) at a time")
        scale = shard.scaling_factor
        for i, key, identity in taken:
            # read_encoded_shard has checked dtypes, shapes, finiteness and the std's range.
            w, mean, std = shard.w_plus[i].float(), shard.latent_mean[i].float() * scale, shard.latent_std[i].float() * scale
            rows.setdefault(identity, []).append((key, w, mean, std, shard.samples[i]["role"]))
    if wanted is not None and (missing := sorted(wanted - set(rows))):
        raise ValueError(f"no training samples in {encoded_dir} for identities {missing}")
    samples = {}
    for identity in sorted(rows):
        keys, w, mean, std, roles = zip(*sorted(rows[identity], key=lambda row: row[0]))
        if "train" not in roles:
            raise ValueError(f"identity {identity!r} in {encoded_dir} has only style samples ({', '.join(keys)}), "
                             "no photos of its own to train on")
        samples[identity] = IdentitySamples(identity, list(keys), torch.stack(w), torch.stack(mean), torch.stack(std),
                                            list(roles), view=next(iter(views), "aligned"))
    return samples


def check_keys_unique(shard: EncodedShard, seen: dict[str, Path]) -> None:
    """A sample key names one sample: the same key in two encoded files of one read is an error
    naming both (within a file, `read_encoded_shard` already refuses it)."""
    for key in shard.keys:
        earlier = seen.setdefault(key, shard.path)
        if earlier != shard.path:
            raise ValueError(f"{shard.path}: the key {key!r} is also in {earlier}; a key must name one sample "
                             "(were two splits encoded into one folder under the same key?)")


@dataclass
class ReferenceFace:
    """The face `pidiff sample` conditions on when given an encoded folder, and why this one."""
    w_plus: torch.Tensor  # [18, 512]
    key: str
    role: str             # "reference" | "train"
    choice: str           # "--key" | "split reference" | "first train sample"
    reason: str           # one sentence for the sidecar


def reference_face(encoded_dir: str | Path, identity: str, key: str | None = None) -> ReferenceFace:
    """Sample `key`, or else the identity's split reference (its first `reference` sample by key: the
    identity's best-quality photo, which `pidiff-data` held out of training when it made the split),
    or, when it has none, its first `train` sample by key.

    The encoded files carry each sample's identity, role and labels but not its photo quality, so the
    choice is by role; which photo the split holds out as reference is `pidiff-data`'s choice: its
    best usable photos by quality (resolution × sharpness × frontalness), `--reference-images` of them
    (default 1; `BalancedSelection.pickImages`, for `balance select` and `splits create` alike).
    """
    candidates = []
    seen: dict[str, Path] = {}
    for shard in read_encoded_split(encoded_dir):
        check_keys_unique(shard, seen)
        for i, (sample_key, sample) in enumerate(zip(shard.keys, shard.samples)):
            if sample_key == key if key is not None else (sample["identity"] == identity and sample["role"] != "style"):
                candidates.append((sample["role"] != "reference", sample_key, sample, shard.w_plus[i].float()))
    if not candidates:
        raise ValueError(f"no sample {key!r} in {encoded_dir}" if key else f"no sample of {identity!r} in {encoded_dir}")
    _, chosen_key, sample, w = min(candidates, key=lambda c: (c[0], c[1]))
    role = sample["role"]
    if key is not None:
        owner = sample["identity"]
        return ReferenceFace(w, chosen_key, role, "--key",
                             f"the sample named by --key ({role} sample of {owner!r})")
    count = sum(1 for c in candidates if not c[0])
    if role == "reference":
        return ReferenceFace(w, chosen_key, role, "split reference",
                             f"the best-quality photo of {identity!r}, held out of training by the split as its reference"
                             if count == 1 else
                             f"the first by key of the {count} reference samples of {identity!r}: its {count} "
                             "best-quality photos, held out of training by the split")
    return ReferenceFace(w, chosen_key, role, "first train sample",
                         f"{identity!r} has no reference sample in {encoded_dir}: its first train sample by key")


def style_face(encoded_dir: str | Path, identity: str) -> ReferenceFace:
    """The identity's style photo in the split (its first `style` sample by key): the face whose
    w+ rows `pidiff sample --style-from-split` mixes in."""
    found = []
    seen: dict[str, Path] = {}
    for shard in read_encoded_split(encoded_dir):
        check_keys_unique(shard, seen)
        for i, (sample_key, sample) in enumerate(zip(shard.keys, shard.samples)):
            if sample["identity"] == identity and sample["role"] == "style":
                found.append((sample_key, shard.w_plus[i].float()))
    if not found:
        raise ValueError(f"no style sample of {identity!r} in {encoded_dir} (add one with pidiff-data splits add-style, "
                         "then export and encode the split again)")
    key, w = min(found, key=lambda item: item[0])
    return ReferenceFace(w, key, "style", "split style sample",
                         f"the split's style photo of {identity!r}"
                         + (f" (the first by key of its {len(found)} style samples)" if len(found) > 1 else ""))


def reference_w_plus(encoded_dir: str | Path, identity: str, key: str | None = None) -> tuple[torch.Tensor, str]:
    """w+ [18, 512] and key of `reference_face`'s choice."""
    face = reference_face(encoded_dir, identity, key)
    return face.w_plus, face.key


# ----------------------------------------------------------------------------------------------
# Prompts.
def prompt_texts(templates_file: str, placeholder: str) -> list[str]:
    """The templates (DEFAULT_TEMPLATES, or one per line of `templates_file`) with the placeholder
    filled in; the empty prompt comes last."""
    templates = DEFAULT_TEMPLATES
    if templates_file:
        templates = [line.strip() for line in Path(templates_file).read_text().splitlines() if line.strip()]
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"{templates_file}: every template needs a '{{}}' for the placeholder")
    return [t.format(placeholder) for t in templates] + [""]


@torch.no_grad()
def encode_prompts(sd_path: str | Path, prompts: list[str], device) -> torch.Tensor:
    """CLIP text-encoder embeddings [P, 77, D] (last hidden state, as SD1.5 uses), computed once."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(Path(sd_path) / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(Path(sd_path) / "text_encoder").to(device).eval()
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(device)
    return text_encoder(tokens)[0].float()
