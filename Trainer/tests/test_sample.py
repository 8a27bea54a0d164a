"""The sampler: its denoising loop (eager, static buffers, CUDA-graph capture) and `pidiff sample`
end to end on a tiny model. The DDIM schedule and step themselves: test_schedule.py."""

import contextlib
import json

import pytest
import torch

from conftest import write_encoded_shard
from pidiff import cli
from pidiff.model import PIDiffAdapter, save_weights
from pidiff.schedule import SD15
from pidiff.style import read_sidecar


# one_cpu_thread (autouse for these tiny-model tests) lives in conftest.py.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_sample_command_writes_one_png_per_prompt_and_image(tiny_models, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*", "default_lambda": 0.4})
    encoded = tmp_path / "encoded"
    write_encoded_shard(encoded / "faces-000000.safetensors",
                        {"ann_000": ("ann", "train"), "ann_001": ("ann", "reference"), "bob_000": ("bob", "train")})

    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--encoded", str(encoded),
            "--prompt", "a photo of S*", "--prompt", "S* at the beach", "--num-images", "2", "--steps", "2",
            "--latent-size", "8", "--device", "cpu", "--out", str(tmp_path / "samples")]
    assert cli.main(argv) == 0
    assert read_sidecar(tmp_path / "samples" / "sample.json")["parameters"]["face_source"] == "ann_001"  # the reference
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


def test_sample_command_takes_the_face_as_a_wplus_file(tiny_models, tmp_path, capsys):
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
    assert cli.main(argv + ["--wplus", str(wrong), "--out", str(tmp_path / "other")]) == 2
    assert "wrong.pt: shape" in capsys.readouterr().err


def test_sampling_with_another_base_unet_warns_and_says_so_in_the_sidecar(tiny_models, tmp_path, capsys):
    import numpy as np
    from diffusers import UNet2DConditionModel

    from pidiff.model import model_fingerprint

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "base_model": model_fingerprint(unet)})
    face = tmp_path / "face.npy"
    np.save(face, np.zeros((18, 512), np.float32))
    other = tmp_path / "other-model"
    assert cli.main(["random-model", "--out", str(other), "--tiny", "--seed", "8"]) == 0
    argv = ["sample", "--weights", str(weights), "--wplus", str(face), "--prompt", "a photo of S*", "--steps", "1",
            "--latent-size", "8", "--device", "cpu"]

    def check(sd, out) -> tuple[str, str]:
        assert cli.main(argv + ["--sd", str(sd), "--out", str(tmp_path / out)]) == 0
        return capsys.readouterr().err, json.loads((tmp_path / out / "sample.json").read_text())["parameters"]["base_model_check"]

    err, note = check(tiny_models["sd"], "same")
    assert "another base UNet" not in err and note == "same UNet as in training"
    err, note = check(other / "sd", "other")
    assert f"{weights} was trained on another base UNet" in err and note == "different UNet from training"


# ----------------------------------------------------------------------------------------------
# The CUDA-graph path on CPU: torch.cuda's streams and graphs replaced by stand-ins, so
# DenoisingLoop's capture branch (side-stream warm-up, capture, replay) runs as it does on a GPU.
class CpuGraph:
    """torch.cuda.CUDAGraph on CPU: the aten ops run while capturing are recorded, and a replay
    runs them again on the same tensors, as a CUDA graph replays its kernels on fixed addresses.

    Unlike CUDA, the capture also executes the ops once; DenoisingLoop resets its buffers and
    counter before every run, so that leaves no trace in the results.
    """

    def __init__(self):
        self.ops = []

    def replay(self):
        from torch.utils._pytree import tree_flatten

        for func, args, kwargs, recorded, inputs in self.ops:
            result = func(*args, **kwargs)  # in-place ops write their inputs, as when recorded
            for old, new in zip(tree_flatten(recorded)[0], tree_flatten(result)[0]):
                # A fresh output goes back where later ops read it; a view of an input already sees it.
                if isinstance(old, torch.Tensor) and old.untyped_storage().data_ptr() not in inputs:
                    old.copy_(new)


@contextlib.contextmanager
def cpu_graph_capture(graph: CpuGraph):
    from torch.utils._pytree import tree_flatten
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                      if isinstance(t, torch.Tensor)}
            out = func(*args, **kwargs)
            graph.ops.append((func, args, kwargs, out, inputs))
            return out

    with Record():
        yield


class CpuStream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def cuda_graphs_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", CpuStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: CpuStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", CpuGraph)
    monkeypatch.setattr(torch.cuda, "graph", cpu_graph_capture)


@pytest.mark.parametrize("steps", [1, 3])
def test_graph_capture_path_matches_the_eager_loop_for_any_step_count(cuda_graphs_on_cpu, steps):
    # --steps 1: the warm-up before capture used to run two real steps, the second past the
    # one-entry step table. 3 steps check that the CPU stand-in replays what was captured.
    from pidiff.sample import DenoisingLoop

    sampler = tiny_sampler()
    g = torch.Generator().manual_seed(1)
    prompts, empty, w_plus = torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g), torch.randn(1, 18, 512, generator=g)

    def run(static_loop: bool) -> torch.Tensor:
        return sampler(prompts, empty, w_plus, steps=steps, guidance=5.0, scale=0.4, latent_size=8, decode=False,
                       generator=torch.Generator().manual_seed(3), static_loop=static_loop)

    eager = run(False)
    sampler.use_cuda_graphs = True  # what a CUDA device sets
    assert torch.equal(run(True), eager)
    assert torch.equal(run(True), eager)  # replayed again from the cached capture
    (loop,) = sampler._loops.values()
    assert isinstance(loop, DenoisingLoop) and isinstance(loop.graph, CpuGraph) and loop.graph.ops


def test_ddim_step_count_out_of_range_is_a_value_error():
    assert SD15.ddim_timesteps(1) == [1]
    for steps in (0, 1001):
        with pytest.raises(ValueError, match="DDIM steps must be from 1 to 1000"):
            SD15.ddim_timesteps(steps)


def test_sample_command_reports_user_errors_in_one_line_with_status_2(tiny_models, tmp_path, capsys):
    import numpy as np
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from pidiff.model import TINY_SD15_UNET_CONFIG

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann"})
    bad_lambda = tmp_path / "bad-lambda.safetensors"
    save_weights(bad_lambda, PIDiffAdapter(unet), 0, {"identity": "ann", "default_lambda": "forty"})
    other = tmp_path / "other-base.safetensors"
    save_weights(other, PIDiffAdapter(UNet2DConditionModel(**dict(TINY_SD15_UNET_CONFIG, block_out_channels=(32, 32, 64, 128)))),
                 0, {"identity": "ann"})
    face = tmp_path / "face.npy"
    np.save(face, np.zeros((18, 512), np.float32))
    picture = tmp_path / "face.png"
    Image.new("RGB", (64, 64)).save(picture)
    not_e4e = tmp_path / "e4e.pt"
    torch.save({"nothing": torch.zeros(1)}, not_e4e)

    def error_of(*options: str, weights_file=weights) -> str:
        argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights_file), "--prompt", "S*",
                "--steps", "1", "--latent-size", "8", "--device", "cpu", "--out", str(tmp_path / "out"), *options]
        assert cli.main(argv) == 2, options
        error = capsys.readouterr().err
        assert error.startswith("pidiff sample: ") and error.count("\n") == 1, error  # one line, no traceback
        return error

    assert "--style-layers needs --style-wplus" in error_of("--wplus", str(face), "--style-layers", "0-3")
    assert "--style-wplus: w+ file" in error_of("--wplus", str(face), "--style-wplus", str(tmp_path / "absent.npy"))
    assert "--wplus: w+ file" in error_of("--wplus", str(tmp_path / "absent.npy"))
    assert "--image" in error_of("--image", str(tmp_path / "absent.png"), "--e4e", str(tiny_models["e4e"]))
    assert "e4e.pt: expected a dict with a 'state_dict' entry" in error_of("--image", str(picture), "--e4e", str(not_e4e))
    assert "--image needs --e4e" in error_of("--image", str(picture))
    assert "DDIM steps" in error_of("--wplus", str(face), "--steps", "0")
    assert "trained for another base model" in error_of("--wplus", str(face), weights_file=other)
    for count in ("0", "-2"):
        assert f"--num-images must be at least 1, got {count}" in error_of("--wplus", str(face), "--num-images", count)
    # Checked before sampling: the file would otherwise only be found when the outputs are written.
    assert f"{picture} is a file, not a folder" in error_of("--wplus", str(face), "--out", str(picture))
    assert f"{picture} is a file, not a folder" in error_of("--wplus", str(face), "--out", str(picture / "run"))
    assert f"{bad_lambda}: metadata default_lambda 'forty' is not a number" in error_of("--wplus", str(face),
                                                                                       weights_file=bad_lambda)
    assert not (tmp_path / "out").exists()


def test_a_prompt_that_does_not_name_the_identity_is_sampled_with_a_warning(tiny_models, tmp_path, capsys):
    import numpy as np
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*"})
    face = tmp_path / "face.npy"
    np.save(face, np.zeros((18, 512), np.float32))
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--wplus", str(face),
            "--prompt", "a photo of a man", "--prompt", "{} at the beach", "--prompt", "S* reading", "--steps", "1",
            "--latent-size", "8", "--device", "cpu", "--out", str(tmp_path / "samples")]
    assert cli.main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["pidiff sample: warning: prompt 'a photo of a man' has neither {} nor the placeholder 'S*'; "
                        "its text does not refer to the identity"]
    assert len(read_sidecar(tmp_path / "samples" / "sample.json")["images"]) == 3


def test_shards_is_accepted_and_ignored_with_one_line(tiny_models, tmp_path, capsys):
    """The Swift side still passes --shards: accepted, unused, said so once on stderr."""
    from diffusers import UNet2DConditionModel

    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")), 0,
                 {"identity": "ann", "placeholder": "S*"})
    encoded = tmp_path / "encoded"
    write_encoded_shard(encoded / "faces-000000.safetensors", {"ann_000": ("ann", "reference")})
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--encoded", str(encoded),
            "--shards", str(tmp_path / "no-such-folder"), "--prompt", "S*", "--steps", "1", "--latent-size", "8",
            "--device", "cpu", "--out", str(tmp_path / "samples")]
    assert cli.main(argv) == 0
    # stderr also holds diffusers' logging: the command's own lines start with its name.
    mentions = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pidiff sample:")]
    assert mentions == ["pidiff sample: --shards is ignored: the encoded files carry each sample's identity and role"]
