"""Reading the WebDataset shards that `pidiff-data export` writes (and writing small ones for tests).

A shard is a plain tar `NAME-000000.tar`. A sample's files share a key without dots:

    <key>.png        512x512 RGB aligned crop           (VAE input)
    <key>.e4e.png    256x256 RGB, white background      (e4e input)
    <key>.mask.png   the background mask
    <key>.json       per-sample metadata (identity, role, labels, ...; read by `pidiff encode`)

WebDataset splits a member name at the first dot of its base name, so `<key>.e4e.png` has the
extension `e4e.png`; we group members by exactly that rule.

Encoding needs parallel decoding and exact shard order (one safetensors file per shard, rows
in shard order), so instead of streaming we index each shard once (member offsets, via the
stdlib tarfile) and let DataLoader workers read and decode samples by offset. Only the
standard library, numpy and Pillow are needed, imported where images are decoded.
"""

from __future__ import annotations

import bisect
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

VAE_IMAGE_EXTENSION = "png"
E4E_IMAGE_EXTENSION = "e4e.png"
VAE_IMAGE_SIZE = 512
E4E_IMAGE_SIZE = 256
SAMPLE_JSON_EXTENSION = "json"
REQUIRED_EXTENSIONS = (VAE_IMAGE_EXTENSION, E4E_IMAGE_EXTENSION, SAMPLE_JSON_EXTENSION)


class ShardError(ValueError):
    """A shard that cannot be read as promised; the message starts with the shard's path."""


@dataclass(frozen=True)
class Member:
    """Where one file of a sample lies inside the tar."""

    offset: int
    size: int


@dataclass
class ShardIndex:
    """The samples of one shard, in the order they appear in the tar."""

    path: Path
    keys: list[str] = field(default_factory=list)
    members: dict[str, dict[str, Member]] = field(default_factory=dict)  # key -> extension -> member

    def __len__(self) -> int:
        return len(self.keys)


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: key = path up to the first dot of the base name, extension = the rest."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem:
        return "", ""
    return (f"{directory}/{stem}" if directory else stem), extension


def index_shard(path: str | Path, required_extensions: tuple[str, ...] = REQUIRED_EXTENSIONS) -> ShardIndex:
    """List the samples of a shard, checking that the tar is whole and every sample complete."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard not found")
    file_size = path.stat().st_size
    index = ShardIndex(path=path)
    try:
        with tarfile.open(path, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                key, extension = split_member_name(info.name)
                if not key:
                    raise ShardError(f"{path}: member {info.name!r} has no '<key>.<extension>' name")
                # tarfile reads headers only; a shard cut short inside a member's data is caught here.
                if info.offset_data + info.size > file_size:
                    raise ShardError(f"{path}: truncated inside member {info.name!r}")
                files = index.members.get(key)
                if files is None:
                    files = index.members[key] = {}
                    index.keys.append(key)
                if extension in files:
                    raise ShardError(f"{path}: sample {key!r} has two '{extension}' members")
                files[extension] = Member(info.offset_data, info.size)
            end_of_members = archive.offset
    except tarfile.TarError as error:
        raise ShardError(f"{path}: not a readable tar archive ({error})") from error
    except EOFError as error:
        raise ShardError(f"{path}: truncated tar archive ({error})") from error

    # tarfile stops quietly at a short or empty header, so a shard cut at a member boundary (or
    # inside a header) would pass as a shorter one: require the two zero blocks that end a tar.
    with open(path, "rb") as f:
        f.seek(end_of_members)
        marker = f.read(1024)
    if len(marker) < 1024 or marker.count(0) != 1024:
        raise ShardError(f"{path}: truncated tar archive (no end-of-archive marker after the last member, "
                         f"{len(index.keys)} samples read)")
    for key in index.keys:
        missing = [ext for ext in required_extensions if ext not in index.members[key]]
        if missing:
            raise ShardError(f"{path}: sample {key!r} lacks {', '.join('.' + ext for ext in missing)}")
    if not index.keys:
        raise ShardError(f"{path}: shard holds no samples")
    return index


def read_sample_json(index: ShardIndex) -> dict[str, dict]:
    """{key: the parsed `<key>.json`} for every sample of an indexed shard, in shard order."""
    parsed = {}
    with open(index.path, "rb") as f:
        for key in index.keys:
            member = index.members[key][SAMPLE_JSON_EXTENSION]
            f.seek(member.offset)
            data = f.read(member.size)
            where = f"{index.path}: {key}.{SAMPLE_JSON_EXTENSION}"
            if len(data) != member.size:
                raise ShardError(f"{where}: truncated")
            try:
                value = json.loads(data)
            except ValueError as error:  # also bytes that are not UTF-8
                raise ShardError(f"{where}: not readable JSON ({error})") from None
            if not isinstance(value, dict):
                raise ShardError(f"{where}: expected a JSON object, found {type(value).__name__}")
            parsed[key] = value
    return parsed


def decode_rgb_png(data: bytes, expected_size: int, where: str) -> torch.Tensor:
    """PNG bytes -> uint8 tensor [3, H, W]; `where` names the shard and member in errors."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ShardError(f"{where}: not a decodable image ({error})") from error
    if image.size != (expected_size, expected_size):
        raise ShardError(f"{where}: image is {image.size[0]}x{image.size[1]}, expected {expected_size}x{expected_size}")
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


class ShardSamples(Dataset):
    """Map-style dataset over the samples of several indexed shards, in order.

    Item g -> (shard number, row in that shard, e4e image uint8 [3,256,256], VAE image uint8
    [3,512,512]). One dataset spans all shards so DataLoader workers keep decoding across shard
    boundaries instead of being restarted per shard. A worker keeps one shard file open and
    reads members by offset; its reads are sequential within a shard, so it reopens a file only
    when it crosses into the next shard. Images stay uint8 until they reach the device (4x less
    to copy than float32).
    """

    def __init__(self, indices: list[ShardIndex]):
        self.indices = list(indices)
        self.starts = [0]
        for index in self.indices:
            self.starts.append(self.starts[-1] + len(index))
        self._open_path: Path | None = None
        self._file = None

    def __len__(self) -> int:
        return self.starts[-1]

    def _read(self, index: ShardIndex, key: str, extension: str) -> bytes:
        if self._open_path != index.path:
            self._close()
            self._file, self._open_path = open(index.path, "rb"), index.path
        member = index.members[key][extension]
        self._file.seek(member.offset)
        data = self._file.read(member.size)
        if len(data) != member.size:
            raise ShardError(f"{index.path}: member {key}.{extension} is truncated")
        return data

    def __getitem__(self, item: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        shard_number = bisect.bisect_right(self.starts, item) - 1
        index = self.indices[shard_number]
        row = item - self.starts[shard_number]
        key = index.keys[row]
        where = f"{index.path}: {key}"
        e4e_image = decode_rgb_png(self._read(index, key, E4E_IMAGE_EXTENSION), E4E_IMAGE_SIZE, f"{where}.{E4E_IMAGE_EXTENSION}")
        vae_image = decode_rgb_png(self._read(index, key, VAE_IMAGE_EXTENSION), VAE_IMAGE_SIZE, f"{where}.{VAE_IMAGE_EXTENSION}")
        return shard_number, row, e4e_image, vae_image

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._open_path = None, None

    def __getstate__(self):
        # File handles do not cross process boundaries; workers open their own.
        state = self.__dict__.copy()
        state["_file"], state["_open_path"] = None, None
        return state

    def __del__(self):
        self._close()


_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shard_pattern(pattern: str) -> list[str]:
    """Expand WebDataset-style braces: `d/x-{000000..000009}.tar` (zero padding kept) and `{a,b}`.
    A path that exists as written is taken literally (folders may have braces in their names)."""
    if Path(pattern).exists():
        return [pattern]
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end():], match.group(1)
    numeric_range = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric_range:
        first, last = numeric_range.groups()
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ShardError(f"cannot expand '{{{body}}}' in shard pattern {pattern!r}; use {{000000..000009}} or {{a,b}}")
    return [expanded for choice in choices for expanded in expand_shard_pattern(head + choice + tail)]


def write_test_shard(path: str | Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """Write a shard the way the exporter does: for each key (in order), its files `<key>.<ext>`.

    `samples` maps key -> extension -> bytes. Used by tests and demos; deterministic (fixed
    mtime, uid, mode) so equal inputs give byte-identical shards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for key, files in samples.items():
            if "." in key:
                raise ValueError(f"sample key {key!r} contains a dot; WebDataset would split it")
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                archive.addfile(info, io.BytesIO(data))
    return path


def png_bytes(image) -> bytes:
    """Encode a PIL image or an HxW / HxWx3 uint8 array as PNG."""
    import numpy as np
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_face_sample(seed: int, identity: str = "synthetic", role: str = "train") -> dict[str, bytes]:
    """A deterministic stand-in sample with the exporter's file set (smooth colour fields, not
    faces; the JSON carries the identity, role and labels as the exporter writes them), for tests
    and `random-model` demos where no real data exists."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)

    def smooth_image(size: int) -> np.ndarray:
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))

    mask = np.zeros((VAE_IMAGE_SIZE, VAE_IMAGE_SIZE), dtype=np.uint8)
    mask[96:416, 128:384] = 255
    return {
        VAE_IMAGE_EXTENSION: png_bytes(smooth_image(VAE_IMAGE_SIZE)),
        E4E_IMAGE_EXTENSION: png_bytes(smooth_image(E4E_IMAGE_SIZE)),
        "mask.png": png_bytes(mask),
        "json": json.dumps({"identity": identity, "role": role, "seed": seed, "synthetic": True,
                            "labels": {"race": "unknown", "age": "unknown", "gender": "unknown"}},
                           sort_keys=True).encode(),
    }
