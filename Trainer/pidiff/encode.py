"""`pidiff encode`: WebDataset shards -> one safetensors file of encodings per shard.

For every sample of `NAME-000000.tar` the output `OUT/NAME-000000.safetensors` holds, in shard
order (the contract is Docs/encoded-format.md):

    w_plus       [N, 18, 512]    e4e code of `<key>.e4e.png` (latent_avg included)
    latent_mean  [N, 4, 64, 64]  SD VAE posterior mean of `<key>.png` (unscaled)
    latent_std   [N, 4, 64, 64]  SD VAE posterior std; the trainer samples z = mean + std * eps
    metadata     keys (JSON list), samples (each key's identity, role and labels, from `<key>.json`),
                 model fingerprints, scaling factor, dtypes, random-weights flag

The output carries everything `pidiff train` and `pidiff sample` need: they read the encoded folder
alone, never the shards.

Outputs are content-addressed: a shard is skipped when its output already records the same
format, shard SHA-256, model fingerprints and storage dtype, and re-encoded when any of them
changed. File digests are remembered in OUT/.pidiff-encode-digests.json by path, size, mtime,
ctime and inode, so a run that finds everything up to date reads only file headers and stats.

On CUDA both encoders run in bf16 (e4e under autocast with channels_last, the VAE with bf16
weights), with the w+ sums, latent_avg and the posterior's exp(logvar / 2) in float32. Images
are decoded in DataLoader workers and travel to the device as uint8.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from pidiff import __version__, shards
from pidiff.e4e import E4ECheckpointError, E4EEncoder
from pidiff.model import save_safetensors
from pidiff.terminal import shown

FORMAT = "pidiff-encoded/2"
ROLES = ("train", "reference", "style")  # style: another face's photo trained with the identity (§3.4.4)
DIGEST_CACHE_NAME = ".pidiff-encode-digests.json"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# diffusers' DiagonalGaussianDistribution clamps logvar to this range before exp.
LOGVAR_RANGE = (-30.0, 20.0)
# Metadata fields that must match for an existing output to count as a cache hit.
CACHE_FIELDS = ("format", "source_sha256", "e4e_sha256", "vae_sha256", "storage_dtype")


class EncodeError(ValueError):
    """A model folder, checkpoint or output that cannot be used; the message names it."""


def file_sha256(path: Path, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def vae_weight_files(sd_path: Path) -> list[Path]:
    vae_dir = sd_path / "vae"
    if not (vae_dir / "config.json").is_file():
        raise EncodeError(f"{sd_path}: no vae/config.json; expected a diffusers-layout Stable Diffusion folder")
    files = sorted(p for p in vae_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise EncodeError(f"{vae_dir}: no .safetensors or .bin weight files")
    return files


class DigestCache:
    """SHA-256 of files, remembered by (size, mtime, ctime, inode, device), as git's index does.

    Rewriting a file changes its ctime, which no tool can set back, so a remembered digest is only
    used for the very file it was computed from. A file changed less than RACY_NS before it was
    hashed is not remembered: file times advance in clock ticks (up to 10 ms), and a second change
    within the same tick would leave the times as they were. Kept as JSON in the output folder; a
    cache that cannot be read or written only costs the hashing.
    """

    RACY_NS = 50_000_000

    def __init__(self, path: Path, trusted: bool = True):
        self.path, self.changed = path, False
        self.entries: dict[str, dict] = {}
        if trusted:
            try:
                entries = json.loads(path.read_text())
                self.entries = entries if isinstance(entries, dict) else {}
            except (OSError, ValueError):
                pass

    @staticmethod
    def _stamp(stat: os.stat_result) -> list[int]:
        return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]

    def sha256(self, file: Path) -> str:
        key = str(Path(file).resolve())
        now, stat = time.time_ns(), os.stat(key)
        stamp = self._stamp(stat)
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = file_sha256(Path(key))  # a change while hashing changes the ctime after `stamp`: not reused
        if max(stat.st_mtime_ns, stat.st_ctime_ns) < now - self.RACY_NS:
            self.entries[key], self.changed = {"stat": stamp, "sha256": digest}, True
        return digest

    def save(self) -> None:
        """Write the entries whose files are still as hashed (others could never be used again)."""
        def current(key: str, entry) -> bool:
            try:
                return isinstance(entry, dict) and entry.get("stat") == self._stamp(os.stat(key))
            except OSError:
                return False

        kept = {key: entry for key, entry in self.entries.items() if current(key, entry)}
        if not self.changed and kept == self.entries:
            return
        # Ranks of one run share the folder: keep what another rank wrote since this one read it.
        try:
            on_disk = json.loads(self.path.read_text())
            kept = {**{k: e for k, e in on_disk.items() if current(k, e)}, **kept} if isinstance(on_disk, dict) else kept
        except (OSError, ValueError):
            pass
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            partial.write_text(json.dumps(kept, indent=1, sort_keys=True))
            os.replace(partial, self.path)
        except OSError:
            pass


def vae_fingerprint(sd_path: Path, sha256=file_sha256) -> str:
    """SHA-256 of the VAE weight file (or, for several files, of their names and digests)."""
    files = vae_weight_files(sd_path)
    if len(files) == 1:
        return sha256(files[0])
    combined = hashlib.sha256()
    for file in files:
        combined.update(f"{file.name}:{sha256(file)}\n".encode())
    return combined.hexdigest()


def load_vae(sd_path: Path, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    vae_weight_files(sd_path)  # a clear error before diffusers' own
    vae = AutoencoderKL.from_pretrained(sd_path, subfolder="vae", torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EncodeError("--device cuda was asked for, but torch sees no CUDA device")
    return device


def uint8_to_signed_unit(images: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """uint8 [B,3,H,W] -> values in [-1, 1] on `device`, the input range of both encoders.

    Scaled in float32 and only then cast, so bf16 rounds each value once.
    """
    x = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ShardEncoder:
    """Both encoders, set up for throughput on one device. Used by `encode` and by the benchmark.

    precision "bf16": e4e keeps float32 weights under bf16 autocast (BatchNorm statistics stay
    float32); the VAE gets bf16 weights, which the reference measurements found faster than
    autocast. precision "fp32": everything float32 (the CPU default).
    """

    def __init__(
        self,
        e4e: E4EEncoder,
        vae,
        device: torch.device,
        precision: str = "bf16",
        e4e_channels_last: bool | None = None,
        vae_channels_last: bool = False,
        compile: bool = False,
        overlap: bool = False,
        compile_e4e: bool | None = None,
        compile_mode: str = "default",
    ):
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', not {precision!r}")
        self.device = device
        self.precision = precision
        self.compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # channels_last is what makes cuDNN fast here (1660 vs 817 img/s); on CPU it was several
        # times slower in our runs.
        self.e4e_channels_last = device.type == "cuda" if e4e_channels_last is None else e4e_channels_last
        self.vae_channels_last = vae_channels_last
        self.scaling_factor = float(vae.config.scaling_factor)

        # Set both ways: a module shared between encoders (the benchmark) must not keep a stale layout.
        e4e_format = torch.channels_last if self.e4e_channels_last else torch.contiguous_format
        self.e4e = e4e.to(device).to(memory_format=e4e_format).eval()
        if vae.dtype != self.compute_dtype:  # load_vae already picks the dtype; the benchmark may not
            vae = vae.to(dtype=self.compute_dtype)
        vae_format = torch.channels_last if vae_channels_last else torch.contiguous_format
        self.vae = vae.to(device).to(memory_format=vae_format).eval()
        # Compiled callables wrap the modules without changing them; fixed batch shapes (see
        # encode_batch's pad_to) keep it to one compilation per encoder.
        # compile_e4e (default: as compile) lets the VAE, nine tenths of the work, be compiled alone.
        self.compiled = compile
        compile_e4e = compile if compile_e4e is None else compile_e4e
        # compile_mode: torch.compile's mode ("max-autotune" benchmarks conv/matmul kernels first).
        self._e4e_forward = torch.compile(self.e4e, mode=compile_mode, dynamic=False) if compile_e4e else self.e4e
        self._vae_moments = (torch.compile(self._vae_moments_eager, mode=compile_mode, dynamic=False) if compile
                             else self._vae_moments_eager)
        # overlap: on CUDA the e4e runs on a second stream beside the VAE, so the one's memory-bound
        # kernels (norms, activations) can share the chip with the other's convolutions.
        self.set_overlap(overlap)

    def set_overlap(self, enabled: bool) -> None:
        """Run the e4e on a second CUDA stream (no effect off CUDA); compiled code is kept."""
        self.overlap = enabled and self.device.type == "cuda"
        self._side_stream = torch.cuda.Stream(self.device) if self.overlap else None

    def _vae_moments_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's (mean, logvar) channels, [B, 8, 64, 64] in the compute dtype."""
        return self.vae.encode(x).latent_dist.parameters

    @torch.inference_mode()
    def encode_w_plus(self, e4e_images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,256,256] -> w+ float32 [B,18,512]."""
        x = uint8_to_signed_unit(e4e_images, self.device, torch.float32, self.e4e_channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self._e4e_forward(x).float()

    @torch.inference_mode()
    def encode_latents(self, vae_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B,3,512,512] -> (posterior mean, posterior std), float32 [B,4,64,64], unscaled."""
        x = uint8_to_signed_unit(vae_images, self.device, self.compute_dtype, self.vae_channels_last)
        moments = self._vae_moments(x).float()
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
        return mean, std

    def encode_batch(self, e4e_images: torch.Tensor, vae_images: torch.Tensor, pad_to: int | None = None):
        """Both encoders on one batch; `pad_to` pads a short last batch when compiled."""
        count = e4e_images.shape[0]
        if pad_to is not None and count < pad_to:
            e4e_images = _pad_batch(e4e_images, pad_to)
            vae_images = _pad_batch(vae_images, pad_to)
        if self._side_stream is None:
            w_plus = self.encode_w_plus(e4e_images)
            mean, std = self.encode_latents(vae_images)
        else:
            main, side = torch.cuda.current_stream(self.device), self._side_stream
            side.wait_stream(main)  # the inputs (and anything before them) are ready on the side stream
            if e4e_images.is_cuda:
                e4e_images.record_stream(side)  # read on the side stream: keep its memory until then
            with torch.cuda.stream(side):
                w_plus = self.encode_w_plus(e4e_images)
            mean, std = self.encode_latents(vae_images)
            main.wait_stream(side)
            w_plus.record_stream(main)  # allocated on the side stream, used on the main one
        return w_plus[:count], mean[:count], std[:count]


def _pad_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    padding = images.new_zeros((size - images.shape[0], *images.shape[1:]))
    return torch.cat([images, padding])


@dataclass
class EncodeOptions:
    # Every batch is padded to this size (see _encode_pending); None: 32 on CUDA, 8 on the CPU.
    batch_size: int | None = None
    workers: int | None = None  # None: min(8, (cores - 1) / ranks on this machine) on CUDA, 1 on CPU
    device: str = "auto"
    precision: str = "auto"  # bf16 on CUDA, fp32 on CPU
    storage_dtype: str = "float32"
    force: bool = False
    compile: bool = False
    compile_mode: str = "default"
    vae_channels_last: bool = False
    overlap: bool = False
    progress: bool = True


@dataclass
class EncodeResult:
    shard: Path
    output: Path
    count: int
    cached: bool


def output_path_for(shard: Path, out_dir: Path) -> Path:
    return out_dir / (shard.name.removesuffix(".tar") + ".safetensors")


def sample_record(fields: dict) -> dict:
    """One entry of the `samples` metadata: the identity, role and labels of a sample's `<key>.json`
    (or of an encoded file's own entry). A missing role is `train`, missing labels are {}."""
    identity, role, labels = fields.get("identity"), fields.get("role", "train"), fields.get("labels", {})
    if not isinstance(identity, str) or not identity:
        raise ValueError(f"no identity (found {identity!r})")
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not isinstance(labels, dict):
        raise ValueError(f"labels must be a JSON object, found {labels!r}")
    return {"identity": identity, "role": role, "labels": labels}


def shard_view(index: shards.ShardIndex) -> str:
    """The framing of the shard's 512 images (`view` in each `<key>.json`; absent = "aligned"):
    one per shard, so encodings of two framings are never mixed silently."""
    views = {fields.get("view", "aligned") for fields in shards.read_sample_json(index).values()}
    if len(views) > 1:
        raise shards.ShardError(f"{index.path}: samples of several views ({', '.join(sorted(views))}) in one shard")
    return views.pop() if views else "aligned"


def shard_sample_records(index: shards.ShardIndex) -> list[dict]:
    """The `samples` metadata of a shard, in row order, from its `<key>.json` members."""
    records = []
    for key, fields in shards.read_sample_json(index).items():
        try:
            records.append(sample_record(fields))
        except ValueError as error:
            raise shards.ShardError(f"{index.path}: {key}.{shards.SAMPLE_JSON_EXTENSION}: {error}") from None
    return records


def read_metadata(path: Path) -> dict[str, str] | None:
    """The header metadata of an encoded file, or None when absent or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return file.metadata() or {}
    except Exception:  # a partial or foreign file is simply not a cache hit
        return None


def is_cache_hit(output: Path, expected: dict[str, str]) -> bool:
    metadata = read_metadata(output) if output.is_file() else None
    return metadata is not None and all(metadata.get(field) == expected[field] for field in CACHE_FIELDS)


def rank_shards(shard_paths: list, rank: int, world_size: int) -> list:
    """The shards one rank encodes: every world_size-th by position in the command's list, starting
    at its rank. Fixed by the list alone, so a rerun gives every rank the same shards."""
    return shard_paths[rank::world_size]


def encode_shards(shard_paths: list[Path], e4e_path: Path, sd_path: Path, out_dir: Path, options: EncodeOptions,
                  rank: int = 0, world_size: int = 1) -> list[EncodeResult]:
    """Encode every shard whose output is missing or stale; returns one result per shard, in order.

    Under several ranks each checks the whole list (so all refuse a bad one alike) but hashes,
    encodes and reports only its own shards (`rank_shards`)."""
    shard_paths, out_dir = [Path(p) for p in shard_paths], Path(out_dir)
    outputs = [output_path_for(p, out_dir) for p in shard_paths]
    if len(set(outputs)) != len(outputs):
        raise EncodeError("two input shards have the same file name; their outputs would collide")
    if options.storage_dtype not in STORAGE_DTYPES:
        raise EncodeError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, not {options.storage_dtype!r}")
    if not Path(e4e_path).is_file():
        raise EncodeError(f"{e4e_path}: e4e checkpoint not found")
    missing = [str(p) for p in shard_paths if not p.is_file()]
    if missing:  # before hashing gigabytes of models and shards
        raise shards.ShardError(f"{missing[0]}: shard not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    shard_paths = rank_shards(shard_paths, rank, world_size)
    outputs = rank_shards(outputs, rank, world_size)

    digests = DigestCache(out_dir / DIGEST_CACHE_NAME, trusted=not options.force)  # --force hashes afresh
    try:
        fingerprints = {
            "format": FORMAT,
            "e4e_sha256": digests.sha256(Path(e4e_path)),
            "vae_sha256": vae_fingerprint(Path(sd_path), digests.sha256),
            "storage_dtype": options.storage_dtype,
        }
        results: dict[Path, EncodeResult] = {}
        pending: list[PendingShard] = []
        for shard, output in zip(shard_paths, outputs):
            source_sha256 = digests.sha256(shard)
            if not options.force and is_cache_hit(output, {**fingerprints, "source_sha256": source_sha256}):
                results[shard] = EncodeResult(shard, output, len(json.loads(read_metadata(output)["keys"])), cached=True)
                continue
            # Index every stale shard and read its samples' identities before loading models, so a
            # broken shard fails fast.
            index = shards.index_shard(shard)
            pending.append(PendingShard(shard, output, source_sha256, index, shard_sample_records(index), view=shard_view(index)))
    finally:
        digests.save()

    if pending:
        device = resolve_device(options.device)
        precision = options.precision if options.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv algorithms once
        from pidiff.e4e import load_e4e
        from pidiff.random_model import is_random_stable_diffusion

        e4e = load_e4e(e4e_path)
        vae = load_vae(Path(sd_path), device, torch.bfloat16 if precision == "bf16" else torch.float32)
        encoder = ShardEncoder(e4e, vae, device, precision, vae_channels_last=options.vae_channels_last, compile=options.compile,
                               overlap=options.overlap, compile_mode=options.compile_mode)
        random_parts = [name for name, is_random in (("e4e", e4e.random_weights), ("sd", is_random_stable_diffusion(sd_path))) if is_random]
        common_metadata = {
            **fingerprints,
            "e4e_checkpoint": Path(e4e_path).name,
            "scaling_factor": repr(encoder.scaling_factor),
            "compute_precision": precision,
            "random_weights": ",".join(random_parts) or "none",
            "e4e_input": f"<key>.{shards.E4E_IMAGE_EXTENSION} {shards.E4E_IMAGE_SIZE}x{shards.E4E_IMAGE_SIZE} RGB scaled to [-1, 1]",
            "vae_input": f"<key>.{shards.VAE_IMAGE_EXTENSION} {shards.VAE_IMAGE_SIZE}x{shards.VAE_IMAGE_SIZE} RGB scaled to [-1, 1]",
            "pidiff_version": __version__,
        }
        if options.batch_size is None:
            options = dataclasses.replace(options, batch_size=32 if device.type == "cuda" else 8)
        if options.batch_size < 1:
            raise EncodeError(f"--batch-size must be at least 1, not {options.batch_size}")
        # The machine's cores are shared by its ranks (LOCAL_WORLD_SIZE of them under a launcher).
        ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
        workers = options.workers if options.workers is not None else (
            min(8, max(1, ((os.cpu_count() or 2) - 1) // ranks_here)) if device.type == "cuda" else 1)
        for job in _encode_pending(encoder, pending, options, workers, rank if world_size > 1 else None):
            _write_encoded(job, common_metadata)
            results[job.shard] = EncodeResult(job.shard, job.output, len(job.index), cached=False)
    return [results[shard] for shard in shard_paths]


@dataclass
class PendingShard:
    """A shard to encode, and the rows encoded so far."""

    shard: Path
    output: Path
    source_sha256: str
    index: shards.ShardIndex
    samples: list[dict]  # the `samples` metadata, aligned with index.keys
    tensors: dict[str, torch.Tensor] | None = None
    view: str = "aligned"  # the 512 images' framing (Docs/shard-format.md)
    rows_done: int = 0


def _encode_pending(encoder: ShardEncoder, pending: list[PendingShard], options: EncodeOptions, workers: int,
                    rank: int | None = None):
    """Encode all pending shards through one DataLoader (workers are not restarted per shard);
    yields each shard as soon as its last row is in."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    storage_dtype = STORAGE_DTYPES[options.storage_dtype]
    loader = DataLoader(
        shards.ShardSamples([job.index for job in pending]),
        batch_size=options.batch_size,
        num_workers=workers,
        pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )
    with tqdm(total=len(loader.dataset), unit="img", disable=not options.progress,
              desc="encode" if rank is None else f"encode rank {rank}", position=rank or 0) as progress:
        for shard_numbers, rows, e4e_images, vae_images in _batches(loader):
            # Every batch has the one shape (the last padded): a convolution's result can depend on the
            # batch size (oneDNN picks kernels by shape; float32 sums in another order differ in the last
            # bits), so this keeps each row's code independent of which batch, shard or rank it fell in:
            # several ranks write the same bits as one process. It also gives --compile one shape.
            encoded = encoder.encode_batch(e4e_images, vae_images, pad_to=options.batch_size)
            encoded = dict(zip(("w_plus", "latent_mean", "latent_std"), (t.to("cpu", storage_dtype) for t in encoded)))
            # A batch may straddle a shard boundary: scatter its rows to their shards.
            for shard_number in shard_numbers.unique().tolist():
                job = pending[shard_number]
                selected = shard_numbers == shard_number
                if job.tensors is None:
                    job.tensors = {name: torch.empty((len(job.index), *t.shape[1:]), dtype=storage_dtype) for name, t in encoded.items()}
                for name, tensor in encoded.items():
                    job.tensors[name][rows[selected]] = tensor[selected]
                job.rows_done += int(selected.sum())
                if job.rows_done == len(job.index):
                    yield job
                    job.tensors = None  # release the rows once written
            progress.update(len(rows))


def _batches(loader):
    """The loader's batches; a ShardError raised in a worker comes back with its own message.

    DataLoader re-raises a worker's exception as the same type with the message "Caught ShardError
    in DataLoader worker process N." followed by the worker's traceback, whose last line is
    "pidiff.shards.ShardError: <message>". That message names the shard and member; the rest is noise.
    """
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except shards.ShardError as error:
            message = str(error)
            if not message.startswith("Caught ShardError"):
                raise  # raised in this process (--workers 0): already the original
            raise shards.ShardError(message.rstrip().splitlines()[-1].partition(": ")[2] or message) from None
        yield batch


def _write_encoded(job: PendingShard, common_metadata: dict[str, str]) -> None:
    metadata = {
        **common_metadata,
        "source_shard": job.shard.name,
        "source_sha256": job.source_sha256,
        "keys": json.dumps(job.index.keys),
        "samples": json.dumps(job.samples, sort_keys=True),
        "count": str(len(job.index)),
        "latent_size": str(job.tensors["latent_mean"].shape[-1]),
        "view": job.view,
    }
    # Write beside the target and rename: a killed run never leaves a file that looks complete.
    partial = job.output.with_name(f".{job.output.name}.partial")
    save_safetensors(job.tensors, partial, metadata=metadata)
    os.replace(partial, job.output)


@dataclass
class EncodedShard:
    """One encoded shard read back: row i of every tensor belongs to keys[i]."""

    path: Path
    keys: list[str]
    w_plus: torch.Tensor
    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    metadata: dict[str, str]
    samples: list[dict]  # per row: {"identity", "role" ("train" | "reference"), "labels"}

    @property
    def scaling_factor(self) -> float:
        return float(self.metadata["scaling_factor"])


W_PLUS_ROW_SHAPE = (18, 512)
LATENT_CHANNELS = 4
# SD1.5's VAE at 512x512: 64x64 latents. Files may say otherwise in their `latent_size` metadata.
DEFAULT_LATENT_SIZE = 64
# The largest std the writer can produce: exp(0.5 * the top of LOGVAR_RANGE), with room for rounding
# in a 16-bit storage dtype.
LATENT_STD_MAX = math.exp(0.5 * LOGVAR_RANGE[1]) * 1.01
REENCODE = "re-encode it with `pidiff encode` (or `pidiff-data encode`)"


def _metadata_number(path: Path, metadata: dict[str, str], name: str, parse, default=None):
    text = metadata.get(name)
    if text is None:
        if default is None:
            raise EncodeError(f"{path}: no {name} in its metadata; {REENCODE}")
        return default
    try:
        value = parse(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise EncodeError(f"{path}: metadata {name} {text!r} is not a positive number; {REENCODE}")
    return value


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_encoded_tensors(path: Path, keys: list[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Dtypes, shapes and values of an encoded file's tensors, as `pidiff encode` writes them.

    Every problem is an EncodeError naming the file, the tensor and, for values, the sample key:
    a tampered or foreign file must not train on truncated integers, a wrong latent size or an
    impossible (negative) std.
    """
    n = len(keys)
    latent_size = _metadata_number(path, metadata, "latent_size", int, DEFAULT_LATENT_SIZE)
    expected = {"w_plus": (n, *W_PLUS_ROW_SHAPE),
                "latent_mean": (n, LATENT_CHANNELS, latent_size, latent_size),
                "latent_std": (n, LATENT_CHANNELS, latent_size, latent_size)}
    storage = metadata.get("storage_dtype")
    if storage is not None and storage not in STORAGE_DTYPES:
        raise EncodeError(f"{path}: metadata storage_dtype {storage!r} is not one of {', '.join(STORAGE_DTYPES)}; {REENCODE}")
    for name, tensor in tensors.items():
        if tensor.dtype not in STORAGE_DTYPES.values():
            raise EncodeError(f"{path}: {name} is {str(tensor.dtype).removeprefix('torch.')}, expected a floating-point "
                              f"dtype ({', '.join(STORAGE_DTYPES)}); {REENCODE}")
        if storage is not None and tensor.dtype != STORAGE_DTYPES[storage]:
            raise EncodeError(f"{path}: {name} is {str(tensor.dtype).removeprefix('torch.')} but the file's storage_dtype "
                              f"is {storage}; {REENCODE}")
        if tuple(tensor.shape) != expected[name]:
            rows = "" if tensor.ndim and tensor.shape[0] == n else f" ({n} keys)"
            raise EncodeError(f"{path}: {name} has shape {_shape_text(tensor.shape)}, expected {_shape_text(expected[name])}"
                              f"{rows}; {REENCODE}")
    for name, tensor in tensors.items():
        bad = ~torch.isfinite(tensor).reshape(n, -1).all(dim=1)
        if bad.any():
            raise EncodeError(f"{path}: {name} of the sample {keys[int(bad.nonzero()[0])]!r} holds non-finite values; {REENCODE}")
    std = tensors["latent_std"].float().reshape(n, -1)
    for bad, what in ((std.lt(0).any(dim=1), "negative values"),
                      (std.gt(LATENT_STD_MAX).any(dim=1), f"values above {LATENT_STD_MAX / 1.01:.0f} (exp(½·20), the largest std a VAE log-variance gives)")):
        if bad.any():
            raise EncodeError(f"{path}: latent_std of the sample {keys[int(bad.nonzero()[0])]!r} holds {what}; {REENCODE}")


def read_encoded_shard(path: str | Path) -> EncodedShard:
    """Load an encoded shard and check it is what `pidiff encode` writes: its format; keys unique
    non-empty strings; samples, count and every tensor agreeing with the keys; each sample with an
    identity and a role; the scaling factor a positive number; the tensors of a floating-point
    storage dtype, of shapes [N, 18, 512] and [N, 4, S, S] (S = `latent_size`, 64), finite, and the
    std non-negative (`check_encoded_tensors`). Every problem is one EncodeError naming the file."""
    path = Path(path)
    metadata = read_metadata(path) if path.is_file() else None
    if metadata is None:
        raise EncodeError(f"{path}: not a readable safetensors file")
    found = metadata.get("format")
    if found != FORMAT:
        if isinstance(found, str) and found.startswith("pidiff-encoded/"):
            raise EncodeError(f"{path}: written in the older format {found}, without each sample's identity and role; "
                              "re-run `pidiff encode` (or `pidiff-data encode`) to re-encode it")
        raise EncodeError(f"{path}: format is {found!r}, expected {FORMAT!r}")
    try:
        keys, samples = json.loads(metadata["keys"]), json.loads(metadata["samples"])
        if not isinstance(keys, list) or not all(isinstance(key, str) and key for key in keys):
            raise ValueError("keys is not a list of non-empty strings")
        if not isinstance(samples, list) or len(samples) != len(keys):
            raise ValueError(f"samples holds {len(samples) if isinstance(samples, list) else 'no list'} "
                             f"entries for {len(keys)} keys")
        samples = [sample_record(entry if isinstance(entry, dict) else {}) for entry in samples]
    except (KeyError, ValueError) as error:
        raise EncodeError(f"{path}: unreadable keys/samples metadata ({error}); re-encode it with `pidiff encode`") from None
    first_row: dict[str, int] = {}
    for row, key in enumerate(keys):
        if key in first_row:
            raise EncodeError(f"{path}: the key {key!r} is given twice (rows {first_row[key]} and {row}); every row needs "
                              f"its own sample; {REENCODE}")
        first_row[key] = row
    if "count" in metadata and metadata["count"] != str(len(keys)):
        raise EncodeError(f"{path}: metadata count {metadata['count']!r} but {len(keys)} keys; {REENCODE}")
    _metadata_number(path, metadata, "scaling_factor", float)
    try:
        with safe_open(str(path), framework="pt") as file:
            names = set(file.keys())
            missing = [name for name in ("w_plus", "latent_mean", "latent_std") if name not in names]
            if missing:
                raise EncodeError(f"{path}: no {' or '.join(missing)} tensor; {REENCODE}")
            tensors = {name: file.get_tensor(name) for name in ("w_plus", "latent_mean", "latent_std")}
    except (SafetensorError, OSError, RuntimeError) as error:  # a header that lies about the data after it
        raise EncodeError(f"{path}: not a readable safetensors file ({error}); {REENCODE}") from None
    check_encoded_tensors(path, keys, tensors, metadata)
    return EncodedShard(path, keys, tensors["w_plus"], tensors["latent_mean"], tensors["latent_std"], metadata, samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pidiff encode",
        description="Encode WebDataset shards with e4e (w+) and the SD VAE (latent mean/std); "
        "writes OUT/NAME-000000.safetensors per input shard and skips shards already encoded "
        "with the same data and models.",
        epilog="example: pidiff encode --shards 'shards/train-{000000..000009}.tar' --e4e e4e_ffhq_encode.pt "
        "--sd stable-diffusion-v1-5 --out encoded/",
    )
    parser.add_argument("--shards", nargs="+", required=True, help="shard paths or brace patterns like 'DIR/NAME-{000000..000009}.tar'")
    parser.add_argument("--e4e", type=Path, required=True, help="e4e checkpoint in the official layout (e4e_ffhq_encode.pt)")
    parser.add_argument("--sd", type=Path, required=True, help="Stable Diffusion 1.5 folder in diffusers layout (uses vae/)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the .safetensors files")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch, the last one padded (default: 32 on CUDA, 8 on the CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader decode workers (default on CUDA: min(8, (cores-1) / ranks on this machine); 1 on CPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--storage-dtype", choices=tuple(STORAGE_DTYPES), default="float32", help="dtype of the stored tensors")
    parser.add_argument("--force", action="store_true",
                        help="re-encode even when an up-to-date output exists (and hash every file afresh)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both encoders (pays off for many shards)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode with --compile: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs")
    parser.add_argument("--vae-channels-last", action="store_true", help="run the VAE in channels_last (see the benchmark for which is faster)")
    parser.add_argument("--overlap", action="store_true", help="CUDA: run the e4e on a second stream beside the VAE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from pidiff import runs

    rank, world_size, rank_device = runs.launched_ranks(cpu=args.device == "cpu")
    if world_size > 1 and args.device in ("auto", "cuda"):
        args.device = rank_device  # one GPU per rank (cuda:LOCAL_RANK), or the CPU over gloo
    try:
        shard_paths = [Path(p) for pattern in args.shards for p in shards.expand_shard_pattern(pattern)]
        options = EncodeOptions(
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            precision=args.precision,
            storage_dtype=args.storage_dtype,
            force=args.force,
            compile=args.compile,
            compile_mode=args.compile_mode,
            vae_channels_last=args.vae_channels_last,
            overlap=args.overlap,
            progress=not args.no_progress,
        )
        if world_size > 1:
            return encode_on_ranks(shard_paths, args, options, rank, world_size)
        results = encode_shards(shard_paths, args.e4e, args.sd, args.out, options)
    except (shards.ShardError, EncodeError, E4ECheckpointError) as error:
        print(f"pidiff encode: error: {shown(error)}", file=sys.stderr)
        return 1
    print(shown(summary_line(results, args.out)))
    return 0


def encode_on_ranks(shard_paths: list[Path], args, options: EncodeOptions, rank: int, world_size: int) -> int:
    """One rank of a data-parallel encode: it encodes its own shards (`rank_shards`), each written as
    soon as it is done. A rank that fails says so at once in one line naming its rank and shard, then
    waits for the others to finish theirs (so their work is kept: the launcher would otherwise stop
    them on the first rank's exit); every rank then exits 1, and a rerun encodes only what is missing.
    Rank 0 prints the summary of all ranks."""
    import torch.distributed as dist

    mine = rank_shards(shard_paths, rank, world_size)
    try:
        outcome = {"results": encode_shards(shard_paths, args.e4e, args.sd, args.out, options, rank, world_size)}
    except Exception as error:  # noqa: BLE001 - reported with the rank, then the ranks finish together
        outcome = {"error": rank_error_line(error, rank, world_size, mine)}
        print(shown(outcome["error"]), file=sys.stderr, flush=True)
    outcomes: list[dict] = [{} for _ in range(world_size)]
    dist.all_gather_object(outcomes, outcome)
    failed = [o["error"] for o in outcomes if "error" in o]
    if rank == 0:
        done = [r for o in outcomes for r in o.get("results", [])]
        order = {path: i for i, path in enumerate(shard_paths)}
        done.sort(key=lambda r: order[r.shard])
        line = summary_line(done, args.out).replace("pidiff encode:", f"pidiff encode ({world_size} ranks):", 1)
        if failed:
            line += (f"; {len(failed)} of {world_size} ranks failed ({len(shard_paths) - len(done)} shards not done); "
                     "a rerun encodes only what is missing")
        print(shown(line), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failed else 0


def rank_error_line(error: Exception, rank: int, world_size: int, shards_of_rank: list[Path]) -> str:
    """`pidiff encode: error: rank R of N: MESSAGE`, naming the rank's shards when the message names none."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not isinstance(error, (shards.ShardError, EncodeError, E4ECheckpointError)):
        message = f"{type(error).__name__}: {message}"
    if not any(path.name in message for path in shards_of_rank):
        names = [path.name for path in shards_of_rank]
        listed = ", ".join(names) if len(names) <= 3 else f"{names[0]} … {names[-1]}, {len(names)} shards"
        message = f"{message} (its shards: {listed or 'none'})"
    return f"pidiff encode: error: rank {rank} of {world_size}: {message}"


def summary_line(results: list[EncodeResult], out: Path) -> str:
    """What a run did, in one line, e.g. "pidiff encode: 1 shard encoded (3 samples), 2 shards reused
    (up to date, 5 samples) in enc/"."""
    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    encoded = [r for r in results if not r.cached]
    reused = [r for r in results if r.cached]
    return (f"pidiff encode: {count(len(encoded), 'shard')} encoded ({count(sum(r.count for r in encoded), 'sample')}), "
            f"{count(len(reused), 'shard')} reused (up to date, {count(sum(r.count for r in reused), 'sample')}) in {out}")
