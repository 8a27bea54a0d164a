"""The PIDiff model on a tiny UNet with SD1.5's topology (16 attn2 layers, 768-d cross-attention)."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from pidiff.model import (
    SD15_UNET_CONFIG,
    TINY_SD15_UNET_CONFIG,
    MappingNetwork,
    PIDiffAdapter,
    StyleCrossAttnProcessor,
    cross_attention_layers,
    load_weights,
    save_weights,
)


# one_cpu_thread (autouse for these tiny-model tests) lives in conftest.py.
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SD15_UNET_CONFIG).eval().requires_grad_(False)
    # Same attention backend for the reference and the adapted UNet: plain SDPA everywhere.
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def random_inputs(batch: int, seed: int = 1, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, size, size, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    text = torch.randn(batch, 77, 768, generator=g)
    w_plus = torch.randn(batch, 18, 512, generator=g)
    return latents, timesteps, text, w_plus


def test_adapter_covers_all_16_cross_attention_layers_and_uninstall_restores_them():
    unet = tiny_unet()
    before = unet.attn_processors
    adapter = PIDiffAdapter(unet)
    assert len(adapter.layer_names) == 16
    adapter.install(unet)
    after = unet.attn_processors
    assert sum(isinstance(p, StyleCrossAttnProcessor) for p in after.values()) == 16
    assert all(isinstance(after[name], StyleCrossAttnProcessor) == (".attn2." in name) for name in after)
    adapter.uninstall(unet)
    assert all(unet.attn_processors[name] is processor for name, processor in before.items())


def test_full_size_sd15_adapter_has_38_6m_parameters():
    with torch.device("meta"):  # the real architecture, without allocating 3.4 GB
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        adapter = PIDiffAdapter(unet)
    mapper = sum(p.numel() for p in adapter.mapper.parameters())
    total = sum(p.numel() for p in adapter.parameters())
    assert len(cross_attention_layers(unet)) == 16
    assert mapper == (3 * 2048 + 3072) * 768 + 2 * 768
    assert total == 38_639_104


def test_style_projections_start_as_copies_of_the_layer_text_projections():
    unet = tiny_unet()
    adapter = PIDiffAdapter(unet, num_identities=2)
    for attn, processor in zip(cross_attention_layers(unet).values(), adapter.style_attention):
        for k in range(2):
            assert torch.equal(processor.to_q[k], attn.to_q.weight)
            assert torch.equal(processor.to_k[k], attn.to_k.weight)
            assert torch.equal(processor.to_v[k], attn.to_v.weight)


def test_lambda_zero_gives_the_unmodified_unet_output_bit_exactly():
    unet = tiny_unet()
    latents, timesteps, text, w_plus = random_inputs(2)
    with torch.no_grad():
        reference = unet(latents, timesteps, encoder_hidden_states=text).sample
        adapter = PIDiffAdapter(unet)
        adapter.install(unet)
        adapter.set_scale(0.0)
        with_lambda_zero = adapter.denoise(unet, latents, timesteps, text, w_plus)
        adapter.set_scale(0.4)
        with_lambda = adapter.denoise(unet, latents, timesteps, text, w_plus)
    assert torch.equal(with_lambda_zero, reference)
    assert not torch.allclose(with_lambda, reference, atol=1e-4)  # the branch is really there


def test_a_context_without_the_visual_tokens_is_refused():
    # A plain 77-token text context must not be read as 73 text tokens and a 4-token "face".
    unet = tiny_unet()
    latents, timesteps, text, w_plus = random_inputs(2)
    adapter = PIDiffAdapter(unet)
    adapter.install(unet)
    with torch.no_grad(), pytest.raises(ValueError, match=r"77 text tokens .* got 77 tokens.*pipeline_prompt_embeds"):
        unet(latents, timesteps, encoder_hidden_states=text)
    adapter.uninstall(unet)

    short = PIDiffAdapter(unet, text_tokens=10)  # another text length, told to the adapter
    short.install(unet)
    with torch.no_grad():
        assert short.denoise(unet, latents, timesteps, text[:, :10], w_plus).shape == latents.shape


def test_visual_tokens_change_the_output_only_through_the_style_branch():
    unet = tiny_unet()
    latents, timesteps, text, w_plus = random_inputs(2)
    adapter = PIDiffAdapter(unet)
    adapter.install(unet)
    with torch.no_grad():
        one = adapter.denoise(unet, latents, timesteps, text, w_plus)
        other = adapter.denoise(unet, latents, timesteps, text, torch.zeros_like(w_plus))
    assert not torch.allclose(one, other, atol=1e-5)


def test_k_identities_batched_match_k_separate_adapters():
    unet = tiny_unet()
    K, b = 3, 2
    latents, timesteps, text, w_plus = random_inputs(K * b)
    separate = []
    for k in range(K):
        adapter = PIDiffAdapter(unet)
        adapter.mapper.reset_parameters([torch.Generator().manual_seed(100 + k)])
        with torch.no_grad():  # make the SCA weights differ per identity, not just the mapper
            for processor in adapter.style_attention:
                processor.to_q.mul_(1.0 + 0.1 * k)
        separate.append(adapter)

    expected = []
    with torch.no_grad():
        for k, adapter in enumerate(separate):
            adapter.install(unet)
            rows = slice(k * b, (k + 1) * b)
            expected.append(adapter.denoise(unet, latents[rows], timesteps[rows], text[rows], w_plus[rows]))
            adapter.uninstall(unet)

        batched = PIDiffAdapter(unet, num_identities=K)
        for k, adapter in enumerate(separate):
            batched.load_identity_state_dict(k, adapter.identity_state_dict(0))
        batched.install(unet)
        together = batched.denoise(unet, latents, timesteps, text, w_plus)
    torch.testing.assert_close(together, torch.cat(expected), rtol=1e-5, atol=1e-5)


def test_mapping_network_reads_the_four_w_plus_row_groups():
    mapper = MappingNetwork(num_identities=1, token_dim=768)
    mapper.reset_parameters([torch.Generator().manual_seed(0)])
    w_plus = torch.randn(1, 18, 512)
    tokens = mapper(w_plus)
    assert tokens.shape == (1, 4, 768)
    for group, (start, end) in enumerate(((0, 4), (4, 8), (8, 12), (12, 18))):
        changed = w_plus.clone()
        changed[:, start:end] += 1.0
        differs = (mapper(changed) - tokens).abs().amax(dim=-1)[0] > 1e-6
        assert differs.tolist() == [i == group for i in range(4)]
    # LayerNorm with identity affine at init: each token is zero-mean, unit-variance.
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(1, 4), atol=1e-5, rtol=0)


def test_weights_round_trip_keeps_tensors_and_metadata(tmp_path):
    unet = tiny_unet()
    adapter = PIDiffAdapter(unet, num_identities=2)
    adapter.mapper.reset_parameters([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    path = tmp_path / "pidiff.safetensors"
    save_weights(path, adapter, 1, {"placeholder": "S*", "default_lambda": 0.4, "steps": 600})

    tensors, metadata = load_weights(path)
    assert metadata["format"] == "pidiff-weights"
    assert metadata["placeholder"] == "S*" and json.loads(metadata["default_lambda"]) == 0.4
    assert set(tensors) == set(adapter.identity_state_dict(1))
    restored = PIDiffAdapter(unet)
    restored.load_identity_state_dict(0, tensors)
    for name, tensor in adapter.identity_state_dict(1).items():
        assert torch.equal(restored.identity_state_dict(0)[name], tensor), name


def test_loading_weights_made_for_another_unet_is_refused(tmp_path):
    adapter = PIDiffAdapter(tiny_unet())
    path = tmp_path / "pidiff.safetensors"
    save_weights(path, adapter, 0, {})
    tensors, _ = load_weights(path)
    other = UNet2DConditionModel(**dict(TINY_SD15_UNET_CONFIG, block_out_channels=(32, 32, 64, 128)))
    with pytest.raises(ValueError, match="shape"):
        PIDiffAdapter(other).load_identity_state_dict(0, tensors)
    # Loaded from the file, the error names it and says what is wrong.
    with pytest.raises(ValueError, match=r"pidiff\.safetensors: these weights were trained for another base model "
                                         r"than this UNet: .*to_q\.weight has shape"):
        PIDiffAdapter.from_weights(other, path)
    del tensors["mapper.norm.bias"]
    with pytest.raises(KeyError, match="missing"):
        PIDiffAdapter(tiny_unet()).load_identity_state_dict(0, tensors)


def test_weights_of_a_newer_format_version_are_refused_and_older_ones_read(tmp_path):
    from safetensors.torch import save_file

    from pidiff.model import WEIGHTS_FORMAT_VERSION, load_weights_metadata

    tensors = PIDiffAdapter(tiny_unet()).identity_state_dict(0)

    def weights_of_version(version: str | None) -> str:
        path = tmp_path / f"v{version}.safetensors"
        metadata = {"format": "pidiff-weights"} | ({"format_version": version} if version is not None else {})
        save_file(tensors, str(path), metadata=metadata)
        return path

    for version in (WEIGHTS_FORMAT_VERSION, "0"):
        loaded, metadata = load_weights(weights_of_version(version))
        assert set(loaded) == set(tensors) and metadata["format_version"] == version
    newer = str(int(WEIGHTS_FORMAT_VERSION) + 1)
    for read in (load_weights, load_weights_metadata):
        with pytest.raises(ValueError, match=rf"v{newer}\.safetensors has weights format version {newer}, "
                                             rf"newer than version {WEIGHTS_FORMAT_VERSION}"):
            read(weights_of_version(newer))
    for unreadable in (None, "", "1.5"):
        with pytest.raises(ValueError, match="not a version number"):
            load_weights(weights_of_version(unreadable))


def test_saving_weights_replaces_the_file_only_once_it_is_complete(tmp_path, monkeypatch):
    import safetensors.torch

    from pidiff.model import load_weights_metadata

    adapter = PIDiffAdapter(tiny_unet())
    path = tmp_path / "pidiff.safetensors"
    save_weights(path, adapter, 0, {"identity": "first"})
    real_save_file = safetensors.torch.save_file

    def killed_midway(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:1000])  # what a kill leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_weights(path, adapter, 0, {"identity": "second"})
    assert load_weights_metadata(path)["identity"] == "first"  # the earlier file, whole
    monkeypatch.setattr(safetensors.torch, "save_file", real_save_file)
    save_weights(path, adapter, 0, {"identity": "second"})
    assert load_weights_metadata(path)["identity"] == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["pidiff.safetensors"]


def test_truncated_or_foreign_weights_files_are_named_errors(tmp_path):
    from pidiff.model import load_weights_metadata

    path = tmp_path / "pidiff.safetensors"
    save_weights(path, PIDiffAdapter(tiny_unet()), 0, {})
    whole = path.read_bytes()
    truncated, foreign = tmp_path / "truncated.safetensors", tmp_path / "foreign.safetensors"
    truncated.write_bytes(whole[: len(whole) // 2])
    foreign.write_text("not safetensors at all\n")
    unet = tiny_unet()
    for bad in (truncated, foreign):
        for read in (load_weights, load_weights_metadata, lambda p: PIDiffAdapter.from_weights(unet, p)):
            with pytest.raises(ValueError, match=rf"{bad.name}: not a readable safetensors file, truncated"):
                read(bad)
    with pytest.raises(FileNotFoundError, match="weights file .*absent.safetensors: not found"):
        load_weights(tmp_path / "absent.safetensors")
