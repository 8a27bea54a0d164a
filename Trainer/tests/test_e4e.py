"""The e4e encoder: official parameter layout, forward structure, strict weights-only loading."""

from __future__ import annotations

import argparse

import pytest
import torch

from pidiff.e4e import (
    TINY_E4E_ARCHITECTURE,
    E4ECheckpointError,
    E4EEncoder,
    Encoder4Editing,
    EqualLinear,
    load_e4e,
)
from pidiff.random_model import build_random_e4e, e4e_checkpoint


def official_e4e_layout() -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of the official Encoder4Editing(50, 'ir_se') with stylegan_size
    1024, written down from omertov/encoder4editing models/encoders/psp_encoders.py and
    helpers.py (get_blocks(50), bottleneck_IR_SE, SEModule, GradualStyleBlock)."""

    def batch_norm(prefix: str, channels: int) -> dict:
        return {
            f"{prefix}.weight": (channels,),
            f"{prefix}.bias": (channels,),
            f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,),
            f"{prefix}.num_batches_tracked": (),
        }

    layout = {"input_layer.0.weight": (64, 3, 3, 3), **batch_norm("input_layer.1", 64), "input_layer.2.weight": (64,)}
    unit, in_channel = 0, 64
    for depth, num_units in ((64, 3), (128, 4), (256, 14), (512, 3)):  # get_blocks(50)
        for k in range(num_units):
            unit_in = in_channel if k == 0 else depth
            prefix = f"body.{unit}"
            if unit_in != depth:  # otherwise the shortcut is MaxPool2d(1, stride): no parameters
                layout[f"{prefix}.shortcut_layer.0.weight"] = (depth, unit_in, 1, 1)
                layout.update(batch_norm(f"{prefix}.shortcut_layer.1", depth))
            layout.update(batch_norm(f"{prefix}.res_layer.0", unit_in))
            layout[f"{prefix}.res_layer.1.weight"] = (depth, unit_in, 3, 3)
            layout[f"{prefix}.res_layer.2.weight"] = (depth,)  # PReLU
            layout[f"{prefix}.res_layer.3.weight"] = (depth, depth, 3, 3)
            layout.update(batch_norm(f"{prefix}.res_layer.4", depth))
            layout[f"{prefix}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            layout[f"{prefix}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            unit += 1
        in_channel = depth
    for i in range(18):
        spatial = 16 if i < 3 else 32 if i < 7 else 64
        for j in range(spatial.bit_length() - 1):  # log2(spatial) convs, each followed by LeakyReLU
            layout[f"styles.{i}.convs.{2 * j}.weight"] = (512, 512, 3, 3)
            layout[f"styles.{i}.convs.{2 * j}.bias"] = (512,)
        layout[f"styles.{i}.linear.weight"] = (512, 512)
        layout[f"styles.{i}.linear.bias"] = (512,)
    layout.update({
        "latlayer1.weight": (512, 256, 1, 1),
        "latlayer1.bias": (512,),
        "latlayer2.weight": (512, 128, 1, 1),
        "latlayer2.bias": (512,),
    })
    return layout


def test_state_dict_keys_and_shapes_equal_the_official_layout():
    with torch.device("meta"):  # full size without allocating 1 GB
        ours = {key: tuple(value.shape) for key, value in Encoder4Editing().state_dict().items()}
    official = official_e4e_layout()
    assert len(official) == 621
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {key: shape for key, shape in ours.items() if shape != official[key]} == {}
    # Spot checks against the official module's printed structure.
    assert ours["body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)
    assert ours["body.23.res_layer.5.fc1.weight"] == (32, 512, 1, 1)
    assert ours["styles.17.convs.10.weight"] == (512, 512, 3, 3)
    assert "body.0.shortcut_layer.0.weight" not in ours


def test_full_size_encoder_has_267m_parameters():
    with torch.device("meta"):
        model = Encoder4Editing()
    assert sum(p.numel() for p in model.parameters()) == 267_136_704


def test_equal_linear_scales_weight_by_lr_mul_over_sqrt_fan_in():
    layer = EqualLinear(4, 2, lr_mul=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(2.0)
    out = layer(torch.ones(1, 4))
    # 4 inputs * 1.0 * (0.5 / sqrt(4)) + 2.0 * 0.5
    assert torch.allclose(out, torch.full((1, 2), 2.0))


def test_output_is_w0_repeated_plus_deltas_plus_latent_avg():
    model = build_random_e4e(TINY_E4E_ARCHITECTURE, seed=3)
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        w_plus = model(images)
        offsets = model.encoder(images)
        assert w_plus.shape == (1, 18, 512) and w_plus.dtype == torch.float32
        assert torch.allclose(w_plus, offsets + model.latent_avg)

        w0 = model.encoder.styles[0](model.encoder.body(model.encoder.input_layer(images)))
        assert torch.allclose(offsets[:, 0], w0, atol=1e-5)
        assert not torch.allclose(offsets[:, 1], offsets[:, 0])  # row 1 carries its own delta

        for style in model.encoder.styles[1:]:  # without deltas every row is w0
            style.linear.weight.zero_()
            style.linear.bias.zero_()
        offsets = model.encoder(images)
        assert torch.allclose(offsets, offsets[:, :1].expand(-1, 18, -1))


def test_style_blocks_read_c3_p2_and_p1_pyramid_levels():
    model = build_random_e4e(TINY_E4E_ARCHITECTURE, seed=0)
    seen: dict[int, int] = {}
    for i, style in enumerate(model.encoder.styles):
        style.register_forward_hook(lambda module, inputs, output, i=i: seen.__setitem__(i, inputs[0].shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 256, 256))
    assert seen == {i: 16 if i < 3 else 32 if i < 7 else 64 for i in range(18)}


def _save(checkpoint: dict, path) -> str:
    torch.save(checkpoint, path)
    return str(path)


def test_load_e4e_loads_official_layout_strictly_and_ignores_decoder(tmp_path):
    source = build_random_e4e(TINY_E4E_ARCHITECTURE, seed=5)
    checkpoint = e4e_checkpoint(source, seed=5)
    checkpoint["state_dict"]["decoder.conv1.conv.weight"] = torch.zeros(1)  # StyleGAN weights we never use
    loaded = load_e4e(_save(checkpoint, tmp_path / "e4e.pt"))
    assert loaded.random_weights
    images = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(images), source(images))


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_load_e4e_rejects_mismatched_encoder_keys_naming_file_and_key(tmp_path, change):
    checkpoint = e4e_checkpoint(build_random_e4e(TINY_E4E_ARCHITECTURE), seed=0)
    if change == "missing":
        del checkpoint["state_dict"]["encoder.latlayer2.bias"]
    else:
        checkpoint["state_dict"]["encoder.styles.18.linear.weight"] = torch.zeros(512, 64)
    path = _save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(E4ECheckpointError, match="bad.pt") as error:
        load_e4e(path)
    assert ("latlayer2.bias" if change == "missing" else "styles.18.linear.weight") in str(error.value)


def test_load_e4e_refuses_checkpoints_that_need_unsafe_unpickling(tmp_path):
    checkpoint = e4e_checkpoint(build_random_e4e(TINY_E4E_ARCHITECTURE), seed=0)
    checkpoint["opts"] = argparse.Namespace(**checkpoint["opts"])  # an arbitrary Python object
    with pytest.raises(E4ECheckpointError, match="weights_only=True"):
        load_e4e(_save(checkpoint, tmp_path / "pickled.pt"))


def test_load_e4e_requires_latent_avg(tmp_path):
    checkpoint = e4e_checkpoint(build_random_e4e(TINY_E4E_ARCHITECTURE), seed=0)
    del checkpoint["latent_avg"]
    with pytest.raises(E4ECheckpointError, match="latent_avg"):
        load_e4e(_save(checkpoint, tmp_path / "no_avg.pt"))


def test_e4e_encoder_state_dict_mirrors_checkpoint_layout():
    with torch.device("meta"):
        keys = E4EEncoder().state_dict().keys()
    assert set(keys) == {f"encoder.{key}" for key in official_e4e_layout()} | {"latent_avg"}
