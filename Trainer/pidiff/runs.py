"""A training run's folder and its ranks, around the core in train.py.

    OUT/train_config.json                       the resolved configuration (rank 0 writes it)
    OUT/<identity folder>/pidiff.safetensors    one folder per identity (`identity_folder`)
    OUT/checkpoints/[group-NNNN/]step-NNNNNN/   the latest checkpoint of each unfinished group

Here: the group size `--group-size 0` resolves to (the same on every rank), identity folder names,
checkpoint files, the --resume checks (only what this run would itself write is kept or continued),
and the ranks of `accelerate launch` / `torchrun`. See Docs/weights-format.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pidiff.model import load_weights_metadata, save_safetensors

if TYPE_CHECKING:
    from pidiff.data import IdentitySamples
    from pidiff.train import TrainConfig

# What --resume compares with the weights and checkpoints it finds: the recipe fields change the
# trained weights; the run fields say where, how fast or how verbosely, and change them at most up
# to floating point (group_size, compile, ...). The data and the base model are compared through
# their fingerprints instead of their paths. `templates` is compared as the path it names.
# Every TrainConfig field is in exactly one of the two (tested).
RECIPE_FIELDS = ("steps", "batch_size", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps",
                 "visual_dropout", "text_dropout", "w_plus_noise", "placeholder", "templates", "seed",
                 "precision", "autocast")
RUN_FIELDS = ("encoded", "sd", "out", "identity", "identities", "split", "group_size", "default_lambda",
              "device", "compile", "compile_mode", "gradient_checkpointing", "channels_last", "checkpoint_every",
              "keep_checkpoints", "resume", "skip_unchanged", "log_every")

RUN_CONFIG_NAME = "train_config.json"
WEIGHTS_NAME = "pidiff.safetensors"


# ----------------------------------------------------------------------------------------------
# Group size. Training memory on an H100 (SD1.5 UNet in bf16, batch 4 per identity;
# Docs/benchmarks.md): eager 16.3 GiB at K=4 and 29.9 GiB at K=8, compiled 25.3 GiB at K=8 and
# 48.9 GiB at K=16. Eager, the dearer of the two, is 3.4 GiB per identity over 2.7 GiB; the auto
# group size allows 3.5 and 4. K=16 is the largest group measured (14.0 s per identity compiled,
# the best figure); on the CPU a larger group only makes each step longer, so it keeps 4.
AUTO_GROUP_GIB_PER_IDENTITY = 3.5
AUTO_GROUP_GIB_BASE = 4.0
AUTO_GROUP_MAX = 16
AUTO_GROUP_CPU = 4


def auto_group_size(config: TrainConfig, device_memory: int | None) -> int:
    """As many identities as 90 % of the card's memory (bytes) holds by the measured figures above,
    scaled with the batch and doubled in fp32, 1 to 16; AUTO_GROUP_CPU without a GPU (None)."""
    if device_memory is None:
        return AUTO_GROUP_CPU
    per_identity = AUTO_GROUP_GIB_PER_IDENTITY * config.batch_size / 4 * (2 if config.precision == "fp32" else 1)
    base = AUTO_GROUP_GIB_BASE * (2 if config.precision == "fp32" else 1)
    fits = int((0.9 * device_memory / 2**30 - base) // per_identity)
    return max(1, min(AUTO_GROUP_MAX, fits))


def device_memory_bytes(device: str) -> int | None:
    """The card's memory, or None off CUDA."""
    device = torch.device(device)
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def resolve_group_size(config: TrainConfig, world_size: int = 1, identities: int | None = None,
                       log=lambda message: None) -> TrainConfig:
    """`--group-size 0` made a number; an explicit size is kept.

    A --resume keeps the size the interrupted run resolved (OUT/train_config.json): checkpoints
    belong to groups, so another card or rank count must not regroup the identities and orphan
    them. Otherwise `auto_group_size` for this card, at most the ranks' fair share of `identities`
    (no rank idles while another trains a big group), and under several ranks the smallest figure
    of any rank (all_reduce MIN), since every rank must cut the identities into the same groups.
    """
    if config.group_size:
        return config
    saved = Path(config.out) / RUN_CONFIG_NAME
    if config.resume and saved.is_file():
        try:
            size = int(json.loads(saved.read_text()).get("group_size", 0))
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"--resume: {saved} is not a readable run configuration ({error})") from None
        if size > 0:
            log(f"group size {size} (auto: the group size of the run being resumed, {saved})")
            return dataclasses.replace(config, group_size=size)
    size = auto_group_size(config, device_memory_bytes(config.device))
    if identities and world_size > 1:
        size = max(1, min(size, -(-identities // world_size)))
    if world_size > 1 and torch.distributed.is_initialized():
        device = torch.device(config.device)
        agreed = torch.tensor([size], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        size = int(agreed.item())
    log(f"group size {size} (auto, for {config.device})")
    return dataclasses.replace(config, group_size=size)


def identity_groups(names: list[str], group_size: int) -> list[list[str]]:
    return [names[i:i + group_size] for i in range(0, len(names), group_size)]


# ----------------------------------------------------------------------------------------------
# Folders. A safe folder name: portable characters, at most 100 of them, no leading '.' (so never
# '.', '..' or a hidden folder); what the run itself keeps under OUT is reserved.
SAFE_FOLDER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
RESERVED_FOLDER_NAMES = ("checkpoints", RUN_CONFIG_NAME)


def identity_folder(name: str) -> str:
    """The folder under OUT of an identity's outputs (the identity itself is in the weights' metadata).

    Identities are arbitrary catalog strings (slashes, dots, any unicode). A safe folder name is
    used as it is; any other becomes a readable ASCII slug of it plus '-' and 10 hex digits of its
    SHA-256, so it stays inside OUT and distinct identities never share a folder.
    """
    if SAFE_FOLDER_NAME.fullmatch(name) and name.casefold() not in RESERVED_FOLDER_NAMES:
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip("._-")[:80] or "identity"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def output_dirs(out: Path, identities: list[str], single: bool) -> dict[str, Path]:
    """Each identity's output folder: OUT itself for `--identity`, else OUT/<identity folder>."""
    if single:
        return {name: out for name in identities}
    # "Ann" and "ann" are two identities but one folder on a case-insensitive file system (macOS's
    # default): the later one (in sorted order) gets its hash appended, as unsafe names do.
    dirs, taken = {}, set()
    for name in sorted(identities):
        folder = identity_folder(name)
        if folder.casefold() in taken:
            folder = f"{folder}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
        taken.add(folder.casefold())
        dirs[name] = out / folder
    return dirs


def write_run_config(config: TrainConfig) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{RUN_CONFIG_NAME}.partial"  # other ranks may be reading the previous one
    partial.write_text(json.dumps(dataclasses.asdict(config), indent=2))
    os.replace(partial, out / RUN_CONFIG_NAME)


# ----------------------------------------------------------------------------------------------
# Checkpoints: OUT/checkpoints/[group-NNNN/]step-NNNNNN/ with adapter.safetensors (the group's
# batched weights), optimizer.pt, rng.pt (each identity's generator) and state.json. Written under
# a temporary name and renamed, so a checkpoint is complete or absent; only the latest is kept.
def group_checkpoint_dir(out: Path, group_index: int, group_count: int) -> Path:
    return Path(out) / "checkpoints" / (f"group-{group_index:04d}" if group_count > 1 else "")


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob("step-*"))
    return found[-1] if found else None


def write_checkpoint(checkpoint_dir: Path, step: int, tensors: dict[str, torch.Tensor], optimizer_state: dict,
                     rng_states: list[torch.Tensor], state: dict) -> Path:
    final = checkpoint_dir / f"step-{step:06d}"
    partial = checkpoint_dir / f".step-{step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_safetensors({k: v.detach().contiguous() for k, v in tensors.items()}, partial / "adapter.safetensors")
    torch.save(optimizer_state, partial / "optimizer.pt")
    torch.save(rng_states, partial / "rng.pt")
    (partial / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for older in checkpoint_dir.glob("step-*"):
        if older != final:
            shutil.rmtree(older)
    return final


def read_checkpoint_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def read_checkpoint_tensors(path: Path, device) -> tuple[dict[str, torch.Tensor], dict, list[torch.Tensor]]:
    """(adapter tensors, optimizer state, generator states) of a checkpoint."""
    from safetensors.torch import load_file

    device = torch.device(device)
    return (load_file(str(path / "adapter.safetensors"), device="cpu" if device.type == "cpu" else str(device)),
            torch.load(path / "optimizer.pt", map_location=device, weights_only=True),
            torch.load(path / "rng.pt", weights_only=True))


def remove_checkpoints(checkpoint_dir: Path) -> None:
    """A finished group's checkpoints, and its folder if that is left empty; nothing of other groups
    (a one-group run's folder is OUT/checkpoints itself, which may hold another run's groups, or be
    being filled by another rank; a one-process run removes it at its end)."""
    for step in [*checkpoint_dir.glob("step-*"), *checkpoint_dir.glob(".step-*.partial")]:
        shutil.rmtree(step, ignore_errors=True)
    remove_if_empty(checkpoint_dir)


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # absent, or not empty: other groups' (or other runs') checkpoints


# ----------------------------------------------------------------------------------------------
# Resuming: only from weights and checkpoints this run would itself have written.
def recipe_differences(saved_config: dict, config: TrainConfig) -> list[str]:
    """The recipe fields in which a saved configuration (decoded JSON) differs from `config`."""
    current = dataclasses.asdict(config)
    differences = []
    for name in RECIPE_FIELDS:
        if name not in saved_config:  # written before the field existed: its meaning then is unknown
            differences.append(f"{name} (not recorded) -> {current[name]!r}")
        elif saved_config[name] != current[name]:
            differences.append(f"{name} {saved_config[name]!r} -> {current[name]!r}")
    return differences


def weights_differences(path: Path, data: IdentitySamples, config: TrainConfig, base_fingerprint: str) -> list[str]:
    """How the weights at `path` differ from what this run would write for `data`: the identity,
    recipe, training samples and base model (empty: the same)."""
    metadata = load_weights_metadata(path)
    differences = []
    if metadata.get("identity") != data.identity:
        differences.append(f"identity {metadata.get('identity')!r} -> {data.identity!r}")
    differences += recipe_differences(json.loads(metadata.get("config", "{}")), config)
    if metadata.get("data_fingerprint") != data.fingerprint():
        differences.append(f"data_fingerprint (the training samples of {data.identity!r} changed)")
    if metadata.get("base_model") != base_fingerprint:
        differences.append(f"base_model {metadata.get('base_model', '')[:12]}… -> {base_fingerprint[:12]}…")
    return differences


def check_finished_weights(path: Path, data: IdentitySamples, config: TrainConfig, base_fingerprint: str) -> None:
    """--resume keeps an identity's weights only if this run would write the same (`weights_differences`).
    Anything else is an error, not a skip: keeping them would silently mix recipes under one
    `train_config.json`."""
    differences = weights_differences(path, data, config, base_fingerprint)
    if differences:
        raise ValueError(f"--resume: {path} was trained differently from this run ({'; '.join(differences)}); "
                         "remove it or pick another --out")


def unchanged_identities(names: list[str], dirs: dict[str, Path], samples: dict[str, IdentitySamples],
                         config: TrainConfig, base_fingerprint: str) -> list[str]:
    """--skip-unchanged: the identities whose weights in their folder were trained from the same
    samples, recipe and base model as this run would use (unreadable weights count as changed).
    Not with --resume, which numbers its groups over every identity and refuses changed weights."""
    if config.resume:
        raise ValueError("--skip-unchanged and --resume cannot be combined: --resume keeps finished weights itself "
                         "(and refuses weights trained differently); give one of them")

    def same(name: str) -> bool:
        path = dirs[name] / WEIGHTS_NAME
        try:
            return path.is_file() and not weights_differences(path, samples[name], config, base_fingerprint)
        except (OSError, ValueError):
            return False
    return [name for name in names if same(name)]


def check_checkpoint_state(path: Path, state: dict, config: TrainConfig, identities: list[str],
                           data_fingerprints: list[str]) -> None:
    """A checkpoint continues a run only under the recipe, identities and samples it was started with."""
    differences = []
    if state["identities"] != identities:
        differences.append(f"identities {state['identities']} -> {identities}")
    differences += recipe_differences(state.get("config", {}), config)
    # Checkpoints written before the fingerprints were recorded cannot be checked for their data;
    # those of other identities are not compared sample by sample.
    if state["identities"] == identities and state.get("data_fingerprints", data_fingerprints) != data_fingerprints:
        changed = [name for name, before, now in zip(identities, state["data_fingerprints"], data_fingerprints)
                   if before != now]
        differences.append(f"data_fingerprints (the training samples of {changed or identities} changed)")
    if differences:
        raise ValueError(f"--resume: checkpoint {path} belongs to a different run ({'; '.join(differences)}); "
                         "remove it or pick another --out")


def check_resumable(groups: list[list[str]], dirs: dict[str, Path], samples: dict[str, IdentitySamples],
                    config: TrainConfig, base_fingerprint: str) -> None:
    """Everything --resume would keep or continue from, checked before anything is trained or written.

    Every rank checks every group, so all ranks stop together rather than some training on."""
    out = Path(config.out)
    # Where this run looks for each group's checkpoints: a checkpoint anywhere else would be
    # silently started over, so it is an error unless its group is already finished.
    where = {tuple(group): group_checkpoint_dir(out, index, len(groups)) for index, group in enumerate(groups)}
    for state_file in sorted((out / "checkpoints").glob("**/step-*/state.json")):
        try:
            held = tuple(json.loads(state_file.read_text())["identities"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"--resume: checkpoint {state_file.parent} has no readable state.json; remove it") from None
        if not set(held) <= set(samples) or all((dirs[name] / WEIGHTS_NAME).is_file() for name in held):
            continue  # another selection's group, or a finished one kept by --keep-checkpoints
        if held not in where:
            raise ValueError(f"--resume: checkpoint {state_file.parent} continues the group {list(held)}, which this run "
                             f"does not form (group size {config.group_size}); resume with --group-size {len(held)}, "
                             "or remove the checkpoint to start that group again")
        if state_file.parent.parent.resolve() != where[held].resolve():
            raise ValueError(f"--resume: checkpoint {state_file.parent} continues the group {list(held)}, which this run "
                             f"would continue from {where[held]} (its groups are numbered differently: another "
                             "selection of identities); resume with the interrupted run's identities, or move the "
                             "checkpoint folder there")
    for group_index, group in enumerate(groups):
        for name in group:
            if (path := dirs[name] / WEIGHTS_NAME).is_file():
                check_finished_weights(path, samples[name], config, base_fingerprint)
        if (checkpoint := latest_checkpoint(group_checkpoint_dir(out, group_index, len(groups)))) is not None:
            state = read_checkpoint_state(checkpoint)
            if tuple(state["identities"]) != tuple(group) and tuple(state["identities"]) not in where:
                continue  # a finished group's kept checkpoint (checked above), not this group's
            check_checkpoint_state(checkpoint, state, config, group, [samples[name].fingerprint() for name in group])


# ----------------------------------------------------------------------------------------------
# Ranks.
def launched_ranks(cpu: bool) -> tuple[int, int, str | None]:
    """(rank, world size, this rank's device) under `accelerate launch`, `pidiff launch` or `torchrun`;
    (0, 1, None) in a process started alone.

    Without CUDA (or with `cpu`) the ranks run on CPU over gloo: accelerate only does so when asked
    with cpu=True; otherwise every process would believe it is alone and do all the work."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return 0, 1, None
    from accelerate import PartialState

    state = PartialState(cpu=cpu or not torch.cuda.is_available())
    if state.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes but accelerate sees {state.num_processes} "
                           f"({state.distributed_type}); refusing to do every rank's work in every process")
    # CPU ranks are "cpu" (accelerate may say "cpu:0", which safetensors refuses as a device).
    device = "cpu" if state.device.type == "cpu" else str(state.device)
    return state.process_index, state.num_processes, device


def distributed_context(config: TrainConfig) -> tuple[int, int, TrainConfig]:
    """(rank, world size, config with this rank's device) under `accelerate launch` or `torchrun`.

    Ranks share nothing but the output folder: each trains every world_size-th identity group."""
    rank, world_size, device = launched_ranks(cpu=config.device == "cpu")
    if world_size == 1:
        return 0, 1, config
    return rank, world_size, dataclasses.replace(config, device=device)


def finish_ranks(world_size: int) -> None:
    """Every rank's weights are on disk when any rank returns."""
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
