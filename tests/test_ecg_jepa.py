"""ECG-JEPA as transformers models: released shapes, parity with the official code, CroPA and masks,
save / load, the converter and its CLI, the pretraining objective (EMA, loss falls) and the heads."""

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from ecg_hub.modeling.configuration_ecg_jepa import EcgJepaConfig
from ecg_hub.modeling.convert_ecg_jepa_original_to_hf import (
    config_from_encoder_state_dict,
    convert_checkpoint,
    convert_encoder_state_dict,
    convert_pretraining_state_dict,
    load_official_checkpoint,
)
from ecg_hub.modeling.modeling_ecg_jepa import (
    EcgJepaForPreTraining,
    EcgJepaForSequenceClassification,
    EcgJepaModel,
    build_attention_mask,
    cross_pattern_mask_function,
    sincos_position_table,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)
from transformers.masking_utils import create_bidirectional_mask

import ecg_hub  # noqa: F401  (registers the Auto classes)
from ecg_hub.cli import main as cli_main

FIXTURE = Path(__file__).parent / "fixtures" / "ecg_jepa" / "official_tiny.safetensors"
RELEASED_LEADS = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]


def tiny_config(**overrides) -> EcgJepaConfig:
    """Width 32, depth 2, 8 leads x 10 patches of 50 samples (2 s at 250 Hz)."""
    values = {
        "num_samples": 500,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "predictor_hidden_size": 16,
        "predictor_num_hidden_layers": 2,
        "predictor_num_attention_heads": 2,
        "predictor_intermediate_size": 32,
    }
    values.update(overrides)
    return EcgJepaConfig(**values)


def ecg_like(batch: int, num_samples: int, seed: int, sampling_rate: int = 250) -> torch.Tensor:
    """Deterministic periodic ECG-like signals in mV, ``(batch, 8, num_samples)``: P wave, QRS spike
    (inverted in some leads) and T wave at a random heart rate per record, lead gains, small noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sampling_rate
    out = np.zeros((batch, 8, num_samples), np.float32)
    for i in range(batch):
        beats_per_s = rng.uniform(50, 110) / 60
        phase = (t * beats_per_s + rng.uniform()) % 1.0
        p_wave = 0.15 * np.exp(-(((phase - 0.15) / 0.03) ** 2))
        qrs = np.exp(-(((phase - 0.3) / 0.015) ** 2))
        t_wave = 0.3 * np.exp(-(((phase - 0.6) / 0.06) ** 2))
        gains = rng.uniform(0.5, 1.5, size=8)
        for lead in range(8):
            polarity = -0.6 if lead % 3 == 0 else 1.0
            out[i, lead] = gains[lead] * (p_wave + polarity * qrs + t_wave) + 0.02 * rng.standard_normal(
                num_samples
            )
    return torch.from_numpy(out)


@pytest.fixture(scope="module")
def official():
    """The official code's tiny run: converted config, weights, inputs and outputs (see the fixture README)."""
    tensors = load_file(FIXTURE)
    state = {k[len("official.") :]: v for k, v in tensors.items() if k.startswith("official.")}
    encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    config = config_from_encoder_state_dict(
        encoder_state,
        num_attention_heads=4,
        predictor_hidden_size=16,
        predictor_num_hidden_layers=2,
        predictor_num_attention_heads=2,
        predictor_intermediate_size=64,
    )
    return {"tensors": tensors, "state": state, "encoder_state": encoder_state, "config": config}


def converted_encoder(official, attn_implementation: str = "sdpa") -> EcgJepaModel:
    model = EcgJepaModel(official["config"])
    model.load_state_dict(convert_encoder_state_dict(official["encoder_state"], official["config"]))
    model.set_attn_implementation(attn_implementation)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# The released configuration
# ----------------------------------------------------------------------------------------------


def test_defaults_are_the_released_model():
    config = EcgJepaConfig()
    assert config.lead_names == RELEASED_LEADS
    assert (config.sampling_rate, config.num_samples, config.patch_size, config.num_patches) == (
        250,
        2500,
        50,
        50,
    )
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 16)
    assert config.intermediate_size == 4 * config.hidden_size and config.qkv_bias is False
    assert config.drop_path_rate == 0.1
    assert (config.predictor_hidden_size, config.predictor_num_hidden_layers) == (384, 6)
    assert config.predictor_num_attention_heads == 12
    assert config.mask_type == "block" and config.num_mask_blocks == 4
    assert config.block_mask_scale == [0.175, 0.225] and config.random_mask_scale == [0.6, 0.7]
    assert (config.ema_momentum_start, config.ema_momentum_end) == (0.996, 1.0)

    with torch.device("meta"):  # shapes only: no 85 M-parameter allocation on the test machine
        model = EcgJepaForPreTraining(config)
    encoder = sum(p.numel() for p in model.ecg_jepa.parameters())
    predictor = sum(p.numel() for p in model.predictor.parameters())
    assert abs(encoder / 1e6 - 85.07) <= 0.05, encoder
    assert abs(predictor / 1e6 - 11.23) <= 0.05, predictor
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    assert all(p.requires_grad for p in model.ecg_jepa.parameters())


def test_config_validation_and_lead_spelling():
    assert EcgJepaConfig(lead_names=["i", "AVR", "v1"]).lead_names == ["I", "aVR", "V1"]
    with pytest.raises(Exception, match="divisible"):
        EcgJepaConfig(hidden_size=100)
    with pytest.raises(Exception, match="multiple of patch_size"):
        EcgJepaConfig(num_samples=2510)
    with pytest.raises(Exception, match="hidden_size"):
        EcgJepaConfig(hidden_size="768")
    with pytest.raises(Exception, match="mask_type"):
        EcgJepaConfig(mask_type="lead")
    with pytest.raises(ValueError, match="unknown lead"):
        EcgJepaConfig(lead_names=["I", "X7"])


def test_position_table_is_the_official_2d_sincos():
    table = sincos_position_table(8, 2, 3)  # 2 leads x 3 patches, width 8
    assert table.shape == (6, 8)
    # Row l * 3 + p: first half encodes time p, second half lead l (sin then cos, omega = 1, 1/100).
    for lead in range(2):
        for patch in range(3):
            row = table[lead * 3 + patch]
            expected = [math.sin(patch), math.sin(patch / 100), math.cos(patch), math.cos(patch / 100)]
            expected += [math.sin(lead), math.sin(lead / 100), math.cos(lead), math.cos(lead / 100)]
            torch.testing.assert_close(row, torch.tensor(expected), atol=1e-7, rtol=0)


# ----------------------------------------------------------------------------------------------
# Parity with the official code (tests/fixtures/ecg_jepa)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_parity_with_official_code_all_leads(official, attn_implementation):
    tensors = official["tensors"]
    model = converted_encoder(official, attn_implementation)
    with torch.no_grad():
        out = model(tensors["input_values"])
    assert out.last_hidden_state.shape == tensors["last_hidden_state"].shape == (2, 400, 32)
    assert (out.last_hidden_state - tensors["last_hidden_state"]).abs().max() <= 1e-5
    assert (out.pooler_output - tensors["pooler_output"]).abs().max() <= 1e-5
    # Not a vacuous comparison: the reference output is O(1).
    assert tensors["last_hidden_state"].std() > 0.5


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_parity_with_official_code_lead_subset(official, attn_implementation):
    """Missing leads flagged in lead_mask give the official result on the lead subset, whatever they hold."""
    tensors = official["tensors"]
    subset = tensors["lead_subset"]
    present = torch.zeros(8, dtype=torch.bool)
    present[subset] = True
    lead_mask = present.float().expand(2, 8)
    # Garbage in the absent leads must not matter (the feature extractor zero-fills them).
    signal = tensors["input_values"].clone()
    signal[:, ~present] = 5.0 * torch.randn(
        2, int((~present).sum()), 2500, generator=torch.Generator().manual_seed(1)
    )
    model = converted_encoder(official, attn_implementation)
    with torch.no_grad():
        out = model(signal, lead_mask=lead_mask)
    subset_tokens = out.last_hidden_state.reshape(2, 8, 50, 32)[:, subset].reshape(2, 150, 32)
    assert (subset_tokens - tensors["subset_last_hidden_state"]).abs().max() <= 1e-5
    assert (out.pooler_output - tensors["subset_pooler_output"]).abs().max() <= 1e-5
    # ... and differs from the all-lead result (the subset really changes the computation).
    assert (out.pooler_output - tensors["pooler_output"]).abs().max() > 1e-2


def test_pretraining_loss_matches_official_code(official):
    tensors = official["tensors"]
    model = EcgJepaForPreTraining(official["config"])
    model.load_state_dict(convert_pretraining_state_dict(official["state"], official["config"]))
    model.eval()
    with torch.no_grad():
        out = model(tensors["input_values"], masked_time_patches=tensors["masked_time_patches"])
    num_masked = int(tensors["masked_time_patches"].sum())
    assert out.predicted_features.shape == out.target_features.shape == (2, 8, num_masked, 32)
    assert out.context_last_hidden_state.shape == (2, 8 * (50 - num_masked), 32)
    torch.testing.assert_close(out.loss, tensors["pretraining_loss"][0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Attention implementations, CroPA, masks and input checks
# ----------------------------------------------------------------------------------------------


def test_fast_mask_builder_equals_transformers_create_bidirectional_mask():
    config = tiny_config()
    lead_ids = torch.arange(3).repeat_interleave(5)
    time_ids = torch.arange(5).repeat(3)
    valid = torch.rand(2, 15, generator=torch.Generator().manual_seed(0)) > 0.3
    embeddings = torch.zeros(2, 15, 8)
    for implementation in ("sdpa", "eager"):
        config._attn_implementation = implementation
        for token_valid in (None, valid):
            function = cross_pattern_mask_function(lead_ids, time_ids, token_valid)
            ours = build_attention_mask(config, embeddings, function)
            reference = create_bidirectional_mask(
                config=config, inputs_embeds=embeddings, attention_mask=None, and_mask_function=function
            )
            assert torch.equal(ours, reference)


def test_sdpa_and_eager_agree_with_masks_and_short_input():
    torch.manual_seed(0)
    model = EcgJepaModel(tiny_config()).eval()
    signal = ecg_like(3, 400, seed=1)  # 8 patches per lead (shorter than the configured 10)
    lead_mask = torch.ones(3, 8)
    lead_mask[1, [2, 5, 6]] = 0
    attention_mask = torch.ones(3, 400)
    attention_mask[2, 260:] = 0
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            outputs[implementation] = model(signal, attention_mask=attention_mask, lead_mask=lead_mask)
    eager, sdpa = outputs["eager"], outputs["sdpa"]
    assert eager.last_hidden_state.shape == (3, 64, 32)
    assert (eager.last_hidden_state - sdpa.last_hidden_state).abs().max() <= 1e-5
    assert (eager.pooler_output - sdpa.pooler_output).abs().max() <= 1e-5


def test_cross_pattern_attention_and_output_flags():
    torch.manual_seed(0)
    model = EcgJepaModel(tiny_config()).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(ecg_like(2, 500, seed=2), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and all(h.shape == (2, 80, 32) for h in out.hidden_states)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 80, 80)
    lead = torch.arange(8).repeat_interleave(10)
    time = torch.arange(10).repeat(8)
    allowed = (lead[:, None] == lead[None, :]) | (time[:, None] == time[None, :])
    for weights in out.attentions:
        assert torch.all(weights[..., ~allowed] == 0)
        assert torch.all(weights[..., allowed] > 0)
    assert int(allowed[0].sum()) == 10 + 8 - 1  # own lead at any time + own time in the other leads
    # attention_pattern="full" lifts the restriction.
    full = EcgJepaModel(tiny_config(attention_pattern="full")).eval()
    full.set_attn_implementation("eager")
    with torch.no_grad():
        weights = full(ecg_like(1, 500, seed=2), output_attentions=True).attentions[0]
    assert torch.all(weights > 0)


def test_padding_and_missing_leads_do_not_leak_into_valid_tokens():
    torch.manual_seed(0)
    model = EcgJepaModel(tiny_config()).eval()
    signal = ecg_like(1, 500, seed=3)
    lead_mask = torch.ones(1, 8)
    lead_mask[0, 4] = 0
    attention_mask = torch.ones(1, 500)
    attention_mask[0, 350:] = 0  # patches 7, 8, 9 are padding
    noisy = signal.clone()
    noisy[0, 4] = torch.randn(500)
    noisy[0, :, 350:] = torch.randn(8, 150)
    with torch.no_grad():
        clean = model(signal, attention_mask=attention_mask, lead_mask=lead_mask)
        dirty = model(noisy, attention_mask=attention_mask, lead_mask=lead_mask)
    valid = torch.ones(8, 10, dtype=torch.bool)
    valid[4] = False
    valid[:, 7:] = False
    valid = valid.reshape(-1)
    torch.testing.assert_close(clean.last_hidden_state[0, valid], dirty.last_hidden_state[0, valid])
    torch.testing.assert_close(clean.pooler_output, dirty.pooler_output)
    torch.testing.assert_close(clean.pooler_output[0], clean.last_hidden_state[0, valid].mean(0))


def test_bad_inputs_raise_clear_errors():
    model = EcgJepaModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="leads = 8"):
        model(torch.zeros(1, 12, 500))
    with pytest.raises(ValueError, match="multiple of patch_size=50"):
        model(torch.zeros(1, 8, 490))
    with pytest.raises(ValueError, match="up to num_samples=500"):
        model(torch.zeros(1, 8, 550))
    with pytest.raises(ValueError, match="lead_mask"):
        model(torch.zeros(2, 8, 500), lead_mask=torch.ones(2, 12))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 8, 500), attention_mask=torch.ones(2, 400))
    with pytest.raises(ValueError, match="every time patch"):
        model(torch.zeros(1, 8, 500), masked_time_patches=torch.ones(10, dtype=torch.bool))
    pretraining = EcgJepaForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="leads = 8"):
        pretraining(torch.zeros(2, 500))
    with pytest.raises(ValueError, match=r"bool tensor of shape \(10,\)"):
        pretraining(torch.zeros(1, 8, 500), masked_time_patches=torch.ones(50, dtype=torch.bool))
    with pytest.raises(ValueError, match="hides no time patch"):
        pretraining(torch.zeros(1, 8, 500), masked_time_patches=torch.zeros(10, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------
# Save / load, Auto classes, checkpoints across classes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_class, auto_class",
    [
        (EcgJepaModel, AutoModel),
        (EcgJepaForPreTraining, AutoModelForPreTraining),
        (EcgJepaForSequenceClassification, AutoModelForSequenceClassification),
    ],
)
def test_save_load_round_trip_is_exact(tmp_path, model_class, auto_class):
    torch.manual_seed(0)
    model = model_class(tiny_config(num_labels=3)).eval()
    if isinstance(model, EcgJepaForPreTraining):
        model.update_ema_teacher(0.5)  # make the target differ from the context encoder
        with torch.no_grad():
            for param in model.ecg_jepa.parameters():
                param.add_(0.01)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    reloaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(reloaded) is model_class
    config_after = AutoConfig.from_pretrained(tmp_path).to_dict()
    config_before = model.config.to_dict()
    for config in (config_after, config_before):
        config.pop("_name_or_path", None)
    assert config_after == config_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    signal = ecg_like(2, 500, seed=4)
    masked = torch.zeros(10, dtype=torch.bool)
    masked[3:6] = True
    kwargs = {"masked_time_patches": masked} if model_class is EcgJepaForPreTraining else {}
    with torch.no_grad():
        before, after = model(signal, **kwargs), reloaded(signal, **kwargs)
    for name in ("last_hidden_state", "pooler_output", "logits", "loss", "predicted_features"):
        if getattr(before, name, None) is not None:
            assert torch.equal(getattr(before, name), getattr(after, name)), name


def test_pretraining_checkpoint_feeds_encoder_and_classifier(tmp_path):
    torch.manual_seed(0)
    pretraining = EcgJepaForPreTraining(tiny_config())
    with torch.no_grad():
        for param in pretraining.ecg_jepa.parameters():
            param.add_(0.01)  # context != target
    pretraining.save_pretrained(tmp_path / "pretrained")
    encoder = EcgJepaModel.from_pretrained(tmp_path / "pretrained")
    for key, value in pretraining.ecg_jepa.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[key]), key
    classifier = EcgJepaForSequenceClassification.from_pretrained(tmp_path / "pretrained", num_labels=2)
    for key, value in pretraining.ecg_jepa.state_dict().items():
        assert torch.equal(value, classifier.ecg_jepa.state_dict()[key]), key

    # An encoder-only folder (e.g. a converted release) starts pretraining with target == context.
    encoder.save_pretrained(tmp_path / "encoder")
    resumed = EcgJepaForPreTraining.from_pretrained(tmp_path / "encoder")
    for context, target in zip(resumed.ecg_jepa.parameters(), resumed.target_encoder.parameters()):
        assert torch.equal(context, target)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, resumed.ecg_jepa.state_dict()[key]), key


# ----------------------------------------------------------------------------------------------
# Converter and CLI
# ----------------------------------------------------------------------------------------------


def test_converter_cli_writes_a_loadable_folder(official, tmp_path):
    tensors = official["tensors"]
    source = tmp_path / "multiblock_epoch100.pth"
    torch.save({"encoder": official["encoder_state"], "epoch": 99}, source)
    output = tmp_path / "ecg-jepa-tiny"
    assert cli_main(["convert", "ecg-jepa", str(source), str(output), "--num-attention-heads", "4"]) == 0
    written = sorted(os.listdir(output))
    assert [name for name in written if not name.endswith(".py")] == [
        "config.json", "model.safetensors", "preprocessor_config.json"
    ]
    # save_pretrained carries the family's code (every class is registered for its Auto class).
    assert {"modeling_ecg_jepa.py", "configuration_ecg_jepa.py", "feature_extraction_ecg.py"} <= set(written)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ecg_jepa_convert_")]  # no staging left

    model = AutoModel.from_pretrained(output).eval()
    assert isinstance(model, EcgJepaModel)
    assert model.config.lead_names == RELEASED_LEADS and model.config.num_attention_heads == 4
    with torch.no_grad():
        out = model(tensors["input_values"])
    assert (out.pooler_output - tensors["pooler_output"]).abs().max() <= 1e-5
    with safe_open(output / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert "layers.0.attention.q_proj.weight" in keys and not any("pos_embed" in k for k in keys)

    extractor = AutoFeatureExtractor.from_pretrained(output)
    assert extractor.sampling_rate == 250 and extractor.num_samples == 2500
    assert list(extractor.leads) == RELEASED_LEADS and extractor.normalization == "none"
    assert extractor.bandpass is None

    # A second conversion into the same folder is refused unless asked for.
    assert cli_main(["convert", "ecg-jepa", str(source), str(output), "--num-attention-heads", "4"]) == 1
    convert_checkpoint(str(source), str(output), num_attention_heads=4, overwrite=True)


class _NotATensor:
    """Stands for arbitrary pickled code, which weights_only loading must refuse."""


def test_converter_refuses_anything_but_the_official_layout(tmp_path, capsys):
    arbitrary = tmp_path / "arbitrary.pth"
    with open(arbitrary, "wb") as handle:
        pickle.dump({"encoder": _NotATensor()}, handle, protocol=2)
    with pytest.raises(ValueError, match="weights-only"):
        load_official_checkpoint(str(arbitrary))

    bare = tmp_path / "bare_state_dict.pth"
    torch.save({"W_P.weight": torch.zeros(4, 50)}, bare)
    with pytest.raises(ValueError, match="expected a dict with an 'encoder' state dict"):
        load_official_checkpoint(str(bare))

    with pytest.raises(ValueError, match="does not exist"):
        load_official_checkpoint(str(tmp_path / "missing.pth"))

    learnable = tmp_path / "learnable_positions.pth"
    state = dict(load_file(FIXTURE))
    encoder = {
        k[len("official.encoder.") :]: v for k, v in state.items() if k.startswith("official.encoder.")
    }
    encoder["pos_embed"] = torch.randn_like(encoder["pos_embed"])
    torch.save({"encoder": encoder, "epoch": 3}, learnable)
    output = tmp_path / "out"
    assert cli_main(["convert", "ecg-jepa", str(learnable), str(output), "--num-attention-heads", "4"]) == 1
    assert "learnable positions" in capsys.readouterr().err
    assert not output.exists()


# ----------------------------------------------------------------------------------------------
# Pretraining objective
# ----------------------------------------------------------------------------------------------


def test_mask_sampling_follows_the_official_recipe():
    model = EcgJepaForPreTraining(tiny_config(num_samples=2500))
    generator = torch.Generator().manual_seed(0)
    block_fractions = [
        model.sample_masked_time_patches(50, generator).float().mean().item() for _ in range(200)
    ]
    # 4 blocks of 8-11 patches: at least 11 patches (one block of >= 8, union), at most 44 of 50.
    assert 8 / 50 <= min(block_fractions) and max(block_fractions) <= 44 / 50
    assert 0.4 < np.mean(block_fractions) < 0.65
    model.config.mask_type = "random"
    counts = {int(model.sample_masked_time_patches(50, generator).sum()) for _ in range(200)}
    assert counts <= set(range(30, 35)) and len(counts) >= 3
    # One mask per call, shared by the batch and the leads: every lead hides the same slots.
    out = EcgJepaForPreTraining(tiny_config())(ecg_like(2, 500, seed=5))
    assert out.masked_time_patches.shape == (10,)
    assert out.predicted_features.shape[2] == int(out.masked_time_patches.sum())


def test_target_encoder_gets_no_gradient_and_moves_only_by_ema():
    torch.manual_seed(0)
    model = EcgJepaForPreTraining(tiny_config())
    target_before = [p.detach().clone() for p in model.target_encoder.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(ecg_like(4, 500, seed=6)).loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.ecg_jepa.layers[0].attention.q_proj.weight.grad.abs().sum() > 0
    assert model.predictor.mask_token.grad.abs().sum() > 0
    optimizer.step()
    for before, after in zip(target_before, model.target_encoder.parameters()):
        assert torch.equal(before, after)  # backprop + optimizer step leave the target alone

    assert model.ema_momentum(0, 100) == pytest.approx(0.996)
    assert model.ema_momentum(50, 100) == pytest.approx(0.998)
    assert model.ema_momentum(100, 100) == pytest.approx(1.0)
    logged = model.post_optimizer_step(0, 100)
    assert logged == {"ema_momentum": pytest.approx(0.996)}
    moved = 0
    for before, target, context in zip(
        target_before, model.target_encoder.parameters(), model.ecg_jepa.parameters()
    ):
        torch.testing.assert_close(target, 0.996 * before + 0.004 * context)
        moved += int(not torch.equal(before, target))
    assert moved > 0
    frozen = [p.detach().clone() for p in model.target_encoder.parameters()]
    model.update_ema_teacher(1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, model.target_encoder.parameters()))


def test_missing_leads_do_not_count_in_the_loss():
    torch.manual_seed(0)
    model = EcgJepaForPreTraining(tiny_config(drop_path_rate=0.0, predictor_drop_path_rate=0.0)).eval()
    signal = ecg_like(2, 500, seed=7)
    lead_mask = torch.ones(2, 8)
    lead_mask[:, 3] = 0
    masked = torch.zeros(10, dtype=torch.bool)
    masked[2:5] = True
    noisy = signal.clone()
    noisy[:, 3] = 10 * torch.randn(2, 500)
    with torch.no_grad():
        clean = model(signal, lead_mask=lead_mask, masked_time_patches=masked)
        dirty = model(noisy, lead_mask=lead_mask, masked_time_patches=masked)
        unmasked = model(noisy, masked_time_patches=masked)
    torch.testing.assert_close(clean.loss, dirty.loss)
    assert abs(unmasked.loss - dirty.loss) > 1e-4


def test_pretraining_loss_falls_on_synthetic_ecg():
    """200 AdamW steps with the EMA schedule on a tiny model: the loss drops well below its start."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and the CI machine has two cores
    try:
        torch.manual_seed(0)
        model = EcgJepaForPreTraining(
            tiny_config(hidden_size=64, num_attention_heads=4, intermediate_size=128)
        )
        model.train()
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05
        )
        data = ecg_like(64, 500, seed=8)
        order = np.random.default_rng(0)
        total_steps = 200
        losses = []
        for step in range(total_steps):
            batch = data[torch.from_numpy(order.choice(64, 8, replace=False))]
            loss = model(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.post_optimizer_step(step, total_steps)
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    initial, final = np.mean(losses[:10]), np.mean(losses[-20:])
    assert np.isfinite(losses).all()
    assert final < 0.5 * initial, (initial, final)


# ----------------------------------------------------------------------------------------------
# Classification head
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem_type, num_labels, labels",
    [
        ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])),
        ("single_label_classification", 3, torch.tensor([2, 0])),
        ("regression", 1, torch.tensor([0.3, -1.2])),
    ],
)
def test_classification_losses(problem_type, num_labels, labels):
    torch.manual_seed(0)
    model = EcgJepaForSequenceClassification(
        tiny_config(num_labels=num_labels, problem_type=problem_type)
    ).eval()
    signal = ecg_like(2, 500, seed=9)
    out = model(signal, labels=labels)
    assert out.logits.shape == (2, num_labels)
    with torch.no_grad():
        pooled = model.ecg_jepa(signal).pooler_output
    logits = model.classifier(pooled)
    if problem_type == "multi_label_classification":
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    elif problem_type == "single_label_classification":
        expected = torch.nn.functional.cross_entropy(logits, labels)
    else:
        expected = torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()


def test_freeze_base_model_for_linear_probing():
    torch.manual_seed(0)
    model = EcgJepaForSequenceClassification(tiny_config(num_labels=2))
    model.freeze_base_model()
    model.train()
    assert not model.ecg_jepa.training and model.classifier.training  # encoder stays deterministic
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    signal = ecg_like(2, 500, seed=10)
    out = model(signal, labels=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    out.loss.backward()
    assert all(p.grad is None for p in model.ecg_jepa.parameters())
    assert model.classifier.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(signal).logits, model(signal).logits)  # no stochastic depth


def test_feature_extractor_output_drives_the_model():
    """EcgFeatureExtractor's batch (input_values, attention_mask, lead_mask) goes straight into the model:
    a record with 3 of the 8 leads and a record padded from 8 s to 10 s."""
    from ecg_hub.modeling import EcgFeatureExtractor

    torch.manual_seed(0)
    model = EcgJepaModel(tiny_config(num_samples=2500)).eval()
    extractor = EcgFeatureExtractor.from_preset("ecg_jepa")
    full = ecg_like(1, 2500, seed=11)[0].numpy()
    rows = [
        {"signal": full, "sampling_rate": 250, "leads": RELEASED_LEADS},
        {"signal": full[[0, 1, 3]], "sampling_rate": 250, "leads": ["I", "II", "V2"]},
        {"signal": full[:, :2000], "sampling_rate": 250, "leads": RELEASED_LEADS},
    ]
    batch = extractor(rows, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
        subset = model(torch.from_numpy(full)[None], lead_mask=torch.tensor([[1, 1, 0, 1, 0, 0, 0, 0]]))
        shorter = model(torch.from_numpy(full[:, :2000])[None])
    assert batch["lead_mask"][1].tolist() == [1, 1, 0, 1, 0, 0, 0, 0]
    torch.testing.assert_close(out.pooler_output[1], subset.pooler_output[0], atol=1e-5, rtol=0)
    # Padding is invisible: the padded 10-s record gives the features of the unpadded 8-s input.
    torch.testing.assert_close(out.pooler_output[2], shorter.pooler_output[0], atol=1e-5, rtol=0)
    assert (out.pooler_output[0] - out.pooler_output[1]).abs().max() > 1e-3


def test_position_scale_zero_removes_the_positions():
    """position_scale=0 (full attention): the encoder sees a set of patches, so shuffling the time
    patches of every lead leaves the pooled feature unchanged; at the released scale it does not."""
    from model_battery import tiny_ecg_jepa_config

    torch.manual_seed(0)
    signal = torch.randn(1, 8, 500) * 0.3
    order = torch.randperm(10)
    shuffled = signal.reshape(1, 8, 10, 50)[:, :, order].reshape(1, 8, 500)
    for scale, same in ((0.0, True), (1.0, False)):
        config = tiny_ecg_jepa_config(attention_pattern="full", position_scale=scale, drop_path_rate=0.0)
        model = EcgJepaModel(config).eval()
        with torch.no_grad():
            a, b = model(signal).pooler_output, model(shuffled).pooler_output
        assert torch.allclose(a, b, atol=1e-5) is same
    with pytest.raises(Exception, match="position_scale must be a finite number >= 0"):  # strict wraps it
        tiny_ecg_jepa_config(position_scale=-1.0)
