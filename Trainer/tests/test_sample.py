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
    parameters = read_sidecar(tmp_path / "samples" / "sample.json")["parameters"]
    assert parameters["face_source"] == "ann_001"  # the reference
    assert parameters["face_choice"] == "split reference"
    assert parameters["face_choice_reason"] == ("the best-quality photo of 'ann', held out of training by the split "
                                                "as its reference")
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
    prepared = tmp_path / "face.e4e.png"
    Image.new("RGB", (256, 256), "white").save(prepared)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
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
    assert "e4e.pt: expected a dict with a 'state_dict' entry" in error_of("--image", str(prepared), "--e4e", str(not_e4e))
    assert "--image needs --e4e" in error_of("--image", str(picture))
    # --image is a prepared 256x256 e4e input and nothing else: no silent resize of a photo.
    for given, problem in ((picture, "64x64, not 256x256"), (not_an_image, "not a readable image")):
        error = error_of("--image", str(given), "--e4e", str(tiny_models["e4e"]))
        assert f"--image {given}: {problem}" in error and "for a photo use --photo PHOTO" in error
    assert "--photo needs --e4e" in error_of("--photo", str(picture))
    assert "--style-photo needs --e4e" in error_of("--wplus", str(face), "--style-photo", str(picture))
    assert "give only one of" in error_of("--wplus", str(face), "--photo", str(picture), "--e4e", str(tiny_models["e4e"]))
    assert "--key names a sample of --encoded" in error_of("--wplus", str(face), "--key", "ann_000")
    assert "--largest prepares a photo" in error_of("--wplus", str(face), "--largest")
    assert "--face-index prepares a photo" in error_of("--wplus", str(face), "--face-index", "1")
    assert "--batch-size must be at least 1, got 0" in error_of("--wplus", str(face), "--batch-size", "0")
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


def test_many_images_are_sampled_in_batches_and_written_as_they_finish(tiny_models, tmp_path, monkeypatch):
    """--num-images beyond --batch-size: the UNet sees batches of at most --batch-size images (x2 for
    CFG), each batch's PNGs are on disk before the next batch starts (memory does not grow with the
    number of images), and every image is the one a single batch would have made."""
    import numpy as np
    from diffusers import UNet2DConditionModel
    from PIL import Image

    from pidiff.sample import PIDiffSampler

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*"})
    face = tmp_path / "face.npy"
    np.save(face, np.random.default_rng(0).standard_normal((18, 512)).astype(np.float32))

    unet_batches, files_at_call = [], []
    forward, call = UNet2DConditionModel.forward, PIDiffSampler.__call__

    def counting_forward(self, sample, *args, **kwargs):
        unet_batches.append(sample.shape[0])
        return forward(self, sample, *args, **kwargs)

    def watching_call(self, *args, **kwargs):
        files_at_call.append(sorted(p.name for p in out.glob("*")))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", counting_forward)
    monkeypatch.setattr(PIDiffSampler, "__call__", watching_call)
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--wplus", str(face),
            "--prompt", "a photo of S*", "--prompt", "S* at the beach", "--num-images", "3", "--steps", "2",
            "--latent-size", "8", "--device", "cpu", "--seed", "3"]
    out = tmp_path / "chunked"
    out.mkdir()
    (out / "sample.json").write_text('{"format": "pidiff-sample/1", "images": []}')  # an earlier run's
    assert cli.main(argv + ["--batch-size", "4", "--out", str(out)]) == 0
    assert unet_batches == [8, 8, 4, 4]  # 6 images: a batch of 4 and one of 2, two DDIM steps each, CFG doubled
    assert files_at_call == [[], ["000.png", "001.png", "002.png", "003.png"]]  # the stale sidecar went first
    record = read_sidecar(out / "sample.json")
    assert [e["file"] for e in record["images"]] == [f"{i:03d}.png" for i in range(6)]
    assert record["parameters"]["batch_size"] == 4
    assert Image.open(out / "grid.png").size == (3 * 64, 2 * (64 + 14))  # one row per prompt, one column per image

    # The same images as one batch of 6: image i's noise does not depend on the batch it is in.
    unet_batches.clear()
    single = tmp_path / "single"
    assert cli.main(argv + ["--batch-size", "6", "--out", str(single)]) == 0
    assert unet_batches == [12, 12]
    for i in range(6):
        a = np.asarray(Image.open(out / f"{i:03d}.png"), dtype=np.int16)
        b = np.asarray(Image.open(single / f"{i:03d}.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, i  # batched float32 convolutions may round differently


def test_negative_prompt_feeds_only_the_unconditional_branch_and_the_defaults_are_stated(tiny_models, tmp_path, capsys):
    import numpy as np
    from diffusers import UNet2DConditionModel
    from PIL import Image

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet")
    weights = tmp_path / "pidiff.safetensors"
    save_weights(weights, PIDiffAdapter(unet), 0, {"identity": "ann", "placeholder": "S*"})
    face = tmp_path / "face.npy"
    np.save(face, np.random.default_rng(1).standard_normal((18, 512)).astype(np.float32))
    argv = ["sample", "--sd", str(tiny_models["sd"]), "--weights", str(weights), "--wplus", str(face),
            "--prompt", "a photo of S*", "--steps", "2", "--latent-size", "8", "--device", "cpu"]

    def pixels(out, *extra):
        assert cli.main(argv + [*extra, "--out", str(tmp_path / out)]) == 0
        return np.asarray(Image.open(tmp_path / out / "000.png"))

    default = pixels("default")
    negative = pixels("negative", "--negative-prompt", "blurry, low quality")
    assert not np.array_equal(default, negative)
    # At guidance 1, eps = eps_cond: the unconditional branch, and so the negative prompt, drops out.
    np.testing.assert_array_equal(pixels("g1", "--guidance", "1"), pixels("g1-negative", "--guidance", "1",
                                                                           "--negative-prompt", "blurry"))

    cfg = read_sidecar(tmp_path / "default" / "sample.json")["parameters"]["classifier_free_guidance"]
    assert cfg["guidance_scale"] == 7.5 and cfg["negative_prompt"] == "" and cfg["guidance_scale_is_default"]
    assert cfg["unconditional_branch"] == "the negative prompt '' + visual tokens F(zeros)"
    assert "the paper states no guidance scale and no negative prompt" in cfg["defaults"]
    cfg = read_sidecar(tmp_path / "negative" / "sample.json")["parameters"]["classifier_free_guidance"]
    assert cfg["negative_prompt"] == "blurry, low quality" and not cfg["negative_prompt_is_default"]

    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 7.5: this project's choice; the paper states none" in help_text
    assert "--negative-prompt TEXT" in help_text and "its visual input stays F(zeros)" in help_text
