"""Saliency (ecg_hub.explain, ``ecg-hub explain``): integrated gradients find the one lead a class
depends on, attention rollout is a normalised map over (lead, patch) with the documented values,
targets resolve by index or label name, and bad input is refused with a clear message."""

import warnings

import numpy as np
import pytest
import torch
import wfdb
from ecg_hub.modeling import (
    Ecg2TokConfig,
    Ecg2TokForSequenceClassification,
    EcgFeatureExtractor,
    EcgJepaConfig,
    EcgJepaForSequenceClassification,
    EcgJepaModel,
    EcgResNetConfig,
    EcgResNetForSequenceClassification,
)
from ecg_hub.modeling.layers import token_validity
from ecg_hub.modeling.leads import INDEPENDENT_LEADS, STANDARD_LEADS

from ecg_hub.cli import main as cli_main
from ecg_hub.explain import EcgExplanation, explain, explain_from_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = {0: "other", 1: "V2_square"}
LABEL_KWARGS = {
    "num_labels": 2,
    "id2label": LABELS,
    "label2id": {v: k for k, v in LABELS.items()},
    "problem_type": "single_label_classification",
}
JEPA_RATE, JEPA_SAMPLES = 250, 750  # 3 s: 8 leads x 15 patches of 50 samples (0.2 s)
RESNET_RATE, RESNET_SAMPLES = 100, 300  # 3 s at 100 Hz, 12 leads


def synthetic_records(count: int, leads, sampling_rate: int, num_samples: int, rng: np.random.Generator):
    """``(records (count, leads, samples) mV, labels (count,))``: every lead is white noise of 0.1 mV;
    in class 1 (``V2_square``) lead V2 also carries a 0 / +1 mV square wave of period 0.4 s, so the
    class depends on V2 only."""
    times = np.arange(num_samples) / sampling_rate
    records = rng.normal(0.0, 0.1, (count, len(leads), num_samples)).astype(np.float32)
    labels = rng.integers(0, 2, count)
    square = (np.floor(times / 0.2) % 2 == 0).astype(np.float32)  # 1 mV for 0.2 s, 0 mV for 0.2 s
    records[labels == 1, list(leads).index("V2")] += square
    return records, labels


def tiny_jepa_config(**overrides) -> EcgJepaConfig:
    values = dict(
        num_samples=JEPA_SAMPLES, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        predictor_hidden_size=16, predictor_num_hidden_layers=1, predictor_num_attention_heads=2,
        predictor_intermediate_size=32, drop_path_rate=0.0, **LABEL_KWARGS,
    )
    values.update(overrides)
    return EcgJepaConfig(**values)


def _train(model, leads, sampling_rate, num_samples, steps: int, lr: float, seed: int):
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        records, labels = synthetic_records(32, leads, sampling_rate, num_samples, rng)
        loss = model(torch.from_numpy(records), labels=torch.from_numpy(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    held_out, labels = synthetic_records(64, leads, sampling_rate, num_samples, np.random.default_rng(seed + 100))
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(held_out)).logits.argmax(-1).numpy() == labels).mean())
    return model, accuracy


@pytest.fixture(scope="module")
def trained():
    """Two tiny classifiers fitted to the one-lead task (~3 s together on one thread): family ->
    (model, feature extractor, record leads, sampling rate, samples, held-out accuracy)."""
    torch.manual_seed(0)
    jepa, jepa_accuracy = _train(
        EcgJepaForSequenceClassification(tiny_jepa_config()), list(INDEPENDENT_LEADS), JEPA_RATE, JEPA_SAMPLES,
        steps=40, lr=3e-3, seed=0,
    )
    torch.manual_seed(0)
    resnet_config = EcgResNetConfig(
        hidden_sizes=[8, 16, 32], depths=[1, 1, 1], embedding_size=8, sampling_rate=RESNET_RATE,
        num_samples=RESNET_SAMPLES, **LABEL_KWARGS,
    )
    resnet, resnet_accuracy = _train(
        EcgResNetForSequenceClassification(resnet_config), list(STANDARD_LEADS), RESNET_RATE, RESNET_SAMPLES,
        steps=30, lr=1e-2, seed=1,
    )
    return {
        "jepa": (jepa, EcgFeatureExtractor.from_preset("ecg_jepa", num_samples=JEPA_SAMPLES), list(INDEPENDENT_LEADS),
                 JEPA_RATE, JEPA_SAMPLES, jepa_accuracy),
        "resnet": (resnet, EcgFeatureExtractor(sampling_rate=RESNET_RATE, leads=STANDARD_LEADS, num_samples=RESNET_SAMPLES),
                   list(STANDARD_LEADS), RESNET_RATE, RESNET_SAMPLES, resnet_accuracy),
    }


def _positive_and_negative(leads, sampling_rate, num_samples, seed=7):
    records, labels = synthetic_records(16, leads, sampling_rate, num_samples, np.random.default_rng(seed))
    return records[labels == 1], records[labels == 0]


# ----------------------------------------------------------------------------------------------
# Integrated gradients
# ----------------------------------------------------------------------------------------------


# ECG-JEPA needs more integration points than the ResNet: its pre-LN blocks switch from the flat
# baseline's output to the record's over a few per cent of the path, so explain() refines 32 -> 128 -> 512
# (one record there: up to 672 forward-backward passes).
@pytest.mark.parametrize(("family", "expected_steps", "num_records"), [("jepa", (128, 512), 1), ("resnet", (32,), 3)])
def test_integrated_gradients_put_the_mass_on_the_lead_the_class_depends_on(trained, family, expected_steps, num_records):
    model, extractor, leads, rate, num_samples, accuracy = trained[family]
    assert accuracy >= 0.95  # the classifier learned the task
    positives, _ = _positive_and_negative(leads, rate, num_samples)
    for record in positives[:num_records]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no convergence warning at these steps
            result = explain(model, extractor, record, sampling_rate=rate, leads=leads, target="V2_square")
        assert result.steps in expected_steps
        assert isinstance(result, EcgExplanation)
        assert result.signal.dtype == np.float32 and result.attributions.dtype == np.float32
        assert result.signal.shape == result.attributions.shape == (len(extractor.leads), num_samples)
        np.testing.assert_array_equal(
            result.signal, extractor(record, sampling_rate=rate, leads=leads)["input_values"][0]
        )
        assert result.leads == list(extractor.leads) and result.sampling_rate == rate
        assert (result.target_index, result.target_label, result.method) == (1, "V2_square", "integrated_gradients")
        with torch.no_grad():
            probability = model(torch.from_numpy(result.signal)[None]).logits.softmax(-1)[0, 1].item()
        assert result.score == pytest.approx(probability, abs=1e-6) and result.score > 0.9
        shares = result.lead_share()
        assert list(shares) == result.leads and sum(shares.values()) == pytest.approx(1.0, abs=1e-9)
        # 8 or 12 leads: a uniform map would give V2 1/8 or 1/12; the model looks at V2 only.
        assert shares["V2"] >= 0.5, shares
        assert result.top_leads(1)[0][0] == "V2"
        # Completeness: the attributions add up to the change of probability from the flat baseline.
        change = result.score - result.baseline_score
        assert change > 0.8
        assert float(result.attributions.sum()) == pytest.approx(change + result.convergence_delta, abs=1e-3)
        assert abs(result.convergence_delta) < 0.1 * change


def test_top_class_by_default_and_targets_by_index_or_name(trained):
    model, extractor, leads, rate, num_samples, _ = trained["resnet"]
    positives, negatives = _positive_and_negative(leads, rate, num_samples)
    top_positive = explain(model, extractor, positives[0], sampling_rate=rate, leads=leads)
    with pytest.warns(UserWarning, match="baseline scores .* for 'other'"):  # the flat line is 'other' too
        top_negative = explain(model, extractor, negatives[0], sampling_rate=rate, leads=leads)
    assert (top_positive.target_index, top_positive.target_label) == (1, "V2_square")
    assert (top_negative.target_index, top_negative.target_label) == (0, "other")
    by_index = explain(model, extractor, positives[0], sampling_rate=rate, leads=leads, target=1)
    by_folded_name = explain(model, extractor, positives[0], sampling_rate=rate, leads=leads, target="v2_SQUARE")
    np.testing.assert_array_equal(by_index.attributions, top_positive.attributions)
    np.testing.assert_array_equal(by_folded_name.attributions, top_positive.attributions)
    with pytest.warns(UserWarning, match=r"baseline scores 0\.\d+ for 'V2_square' and the record 0\.\d+"):
        # The flat line and a record without the square wave are both 'other': nothing to attribute.
        explain(model, extractor, negatives[0], sampling_rate=rate, leads=leads, target="V2_square")
    other = explain(model, extractor, positives[0], sampling_rate=rate, leads=leads, target="other")
    # Two-class softmax: p(other) = 1 - p(V2_square), so the attributions are exactly opposite.
    assert other.score == pytest.approx(1 - top_positive.score, abs=1e-6)
    np.testing.assert_allclose(other.attributions, -top_positive.attributions, atol=1e-5)


def test_bad_targets_and_arguments_are_refused_with_the_expectation(trained):
    model, extractor, leads, rate, num_samples, _ = trained["resnet"]
    record = _positive_and_negative(leads, rate, num_samples)[0][0]
    call = {"sampling_rate": rate, "leads": leads}
    with pytest.raises(ValueError, match=r"target 'MI' is not a label.*available labels: 0: other, 1: V2_square"):
        explain(model, extractor, record, target="MI", **call)
    with pytest.raises(ValueError, match=r"target index 2 is outside 0\.\.1; available labels: 0: other"):
        explain(model, extractor, record, target=2, **call)
    with pytest.raises(TypeError, match="boolean"):
        explain(model, extractor, record, target=True, **call)
    with pytest.raises(ValueError, match="method must be one of"):
        explain(model, extractor, record, method="saliency", **call)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        explain(model, extractor, record, steps=0, **call)
    with pytest.raises(ValueError, match="max_steps must be a positive integer or None"):
        explain(model, extractor, record, max_steps=0, **call)
    with pytest.raises(ValueError, match="attention_rollout' needs a transformer"):
        explain(model, extractor, record, method="attention_rollout", **call)
    with pytest.raises(ValueError, match="one record"):
        explain(model, extractor, np.stack([record, record]), **call)
    with pytest.raises(ValueError, match="differ from the model's config.lead_names"):
        explain(model, EcgFeatureExtractor.from_preset("merl", sampling_rate=rate, num_samples=num_samples), record, **call)
    encoder = EcgJepaModel(tiny_jepa_config())
    jepa_extractor = trained["jepa"][1]
    jepa_record = np.zeros((8, JEPA_SAMPLES), np.float32)
    with pytest.raises(ValueError, match="needs a ...ForSequenceClassification.*attention_rollout"):
        explain(encoder, jepa_extractor, jepa_record, sampling_rate=JEPA_RATE, leads=list(INDEPENDENT_LEADS))
    with pytest.raises(ValueError, match="target must be None"):
        explain(encoder, jepa_extractor, jepa_record, sampling_rate=JEPA_RATE, leads=list(INDEPENDENT_LEADS),
                method="attention_rollout", target=1)


def test_a_missing_lead_gets_no_attribution(trained):
    for family, method in (("resnet", "integrated_gradients"), ("jepa", "attention_rollout")):
        model, extractor, leads, rate, num_samples, _ = trained[family]
        record = _positive_and_negative(leads, rate, num_samples)[0][0]
        result = explain(model, extractor, record, sampling_rate=rate, leads=leads, masked_leads=["V5"], method=method)
        v5 = result.leads.index("V5")
        assert not result.lead_present[v5] and result.lead_present.sum() == len(result.leads) - 1
        assert np.all(result.signal[v5] == 0) and np.all(result.attributions[v5] == 0)
        assert result.lead_share()["V5"] == 0.0
        assert np.abs(result.attributions).sum() > 0


def test_poor_convergence_warns(trained):
    model, extractor, leads, rate, num_samples, _ = trained["jepa"]
    record = _positive_and_negative(leads, rate, num_samples)[0][0]
    with pytest.warns(UserWarning, match=r"steps=4 approximate the path integral poorly.*raise max_steps"):
        result = explain(model, extractor, record, sampling_rate=rate, leads=leads, target="V2_square", steps=4,
                         max_steps=None)
    assert result.steps == 4
    assert abs(result.convergence_delta) > 0.1 * (result.score - result.baseline_score)
    with pytest.warns(UserWarning, match="steps=16 approximate"):  # 4 -> 16, still short of completeness
        assert explain(model, extractor, record, sampling_rate=rate, leads=leads, steps=4, max_steps=16).steps == 16


# ----------------------------------------------------------------------------------------------
# Attention rollout
# ----------------------------------------------------------------------------------------------


def _reference_rollout(model, inputs, num_prefix: int) -> np.ndarray:
    """The rollout written out from the eager attention weights (module docstring), per token."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    tokens = attentions[0].shape[-1]
    rollout = np.eye(tokens)
    for weights in attentions:
        layer = 0.5 * weights[0].double().mean(0).numpy() + 0.5 * np.eye(tokens)
        rollout = (layer / layer.sum(-1, keepdims=True)) @ rollout
    num_patches = inputs["input_values"].shape[-1] // model.config.patch_size
    valid = token_validity(1, model.config.num_leads, num_patches, inputs.get("attention_mask"), inputs.get("lead_mask"))
    rows = rollout[num_prefix:][valid[0].numpy()]
    pooled = rows.mean(0)[num_prefix:]
    return pooled / pooled.sum()


@pytest.mark.parametrize("family", ["ecg_jepa", "ecg2tok"])
def test_attention_rollout_is_a_normalised_patch_map(family):
    torch.manual_seed(3)
    if family == "ecg_jepa":
        model, num_prefix = EcgJepaForSequenceClassification(tiny_jepa_config()).eval(), 0
    else:
        config = Ecg2TokConfig(num_samples=JEPA_SAMPLES, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, codebook_size=16, **LABEL_KWARGS)
        model, num_prefix = Ecg2TokForSequenceClassification(config).eval(), 1  # [CLS] first
    extractor = EcgFeatureExtractor.from_preset(family, num_samples=JEPA_SAMPLES, bandpass=None)
    record = np.random.default_rng(4).normal(0, 0.3, (8, JEPA_SAMPLES)).astype(np.float32)
    result = explain(model, extractor, record, sampling_rate=JEPA_RATE, leads=list(INDEPENDENT_LEADS),
                     method="attention_rollout")
    assert model.config._attn_implementation == "sdpa"  # switched to eager for the call only
    assert result.method == "attention_rollout" and result.attributions.shape == (8, JEPA_SAMPLES)
    assert result.attributions.min() >= 0 and result.attributions.sum() == pytest.approx(1.0, abs=1e-5)
    patches = result.attributions.reshape(8, 15, 50)
    np.testing.assert_allclose(patches, patches[:, :, :1].repeat(50, axis=2), rtol=1e-6)  # constant per patch
    assert result.score is not None and result.target_label in LABELS.values()

    inputs = {key: torch.as_tensor(value) for key, value in extractor(record, sampling_rate=JEPA_RATE,
                                                                      leads=list(INDEPENDENT_LEADS)).items()}
    expected = _reference_rollout(model, inputs, num_prefix).reshape(8, 15)
    np.testing.assert_allclose(patches.sum(-1), expected, rtol=1e-4, atol=1e-7)
    assert not np.allclose(expected, 1 / 120, rtol=1e-3)  # random weights: not the uniform map


def test_rollout_of_uniform_attention_is_uniform_over_the_recorded_leads():
    """With zero query and key projections every token attends uniformly to its CroPA keys (same lead
    or same time slot). Those matrices are doubly stochastic, so their rollout spreads the pooled
    mass evenly: 1 / (leads x patches) per token, and nothing on a missing lead."""
    torch.manual_seed(5)
    encoder = EcgJepaModel(tiny_jepa_config()).eval()
    with torch.no_grad():
        for layer in encoder.layers:
            layer.attention.q_proj.weight.zero_()
            layer.attention.k_proj.weight.zero_()
    extractor = EcgFeatureExtractor.from_preset("ecg_jepa", num_samples=JEPA_SAMPLES)
    record = np.random.default_rng(6).normal(0, 0.3, (8, JEPA_SAMPLES)).astype(np.float32)
    leads = list(INDEPENDENT_LEADS)
    full = explain(encoder, extractor, record, sampling_rate=JEPA_RATE, leads=leads, method="attention_rollout")
    assert (full.target_index, full.target_label, full.score) == (None, None, None)
    np.testing.assert_allclose(full.attributions, 1 / (8 * JEPA_SAMPLES), rtol=1e-5)
    missing = explain(encoder, extractor, record, sampling_rate=JEPA_RATE, leads=leads, method="attention_rollout",
                      masked_leads=["V3"])
    v3 = leads.index("V3")
    assert np.all(missing.attributions[v3] == 0)
    others = np.delete(missing.attributions, v3, axis=0)
    np.testing.assert_allclose(others, 1 / (7 * JEPA_SAMPLES), rtol=1e-5)
    assert missing.lead_share()["V3"] == 0.0 and missing.lead_share()["V4"] == pytest.approx(1 / 7, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Loading and the command line
# ----------------------------------------------------------------------------------------------


def _write_wfdb(directory, name, record, sampling_rate, leads) -> str:
    wfdb.wrsamp(name, fs=sampling_rate, units=["mV"] * len(leads), sig_name=list(leads),
                p_signal=np.asarray(record, np.float64).T, fmt=["16"] * len(leads), write_dir=str(directory))
    return str(directory / name)


def test_explain_from_pretrained_and_the_command_line(trained, tmp_path, capsys):
    model, extractor, leads, rate, num_samples, _ = trained["resnet"]
    checkpoint = tmp_path / "resnet"
    model.save_pretrained(checkpoint)
    extractor.save_pretrained(checkpoint)
    record = _positive_and_negative(leads, rate, num_samples)[0][0]
    loaded = explain_from_pretrained(checkpoint, record, sampling_rate=rate, leads=leads, target="V2_square")
    direct = explain(model, extractor, record, sampling_rate=rate, leads=leads, target="V2_square")
    np.testing.assert_allclose(loaded.attributions, direct.attributions, atol=1e-6)
    assert loaded.score == pytest.approx(direct.score, abs=1e-6)

    path = _write_wfdb(tmp_path, "v2case", record, rate, leads)
    plot = tmp_path / "out" / "saliency.png"
    assert cli_main(["explain", str(checkpoint), "--record", path, "--label", "V2_square", "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "record v2case: V2_square (class 1), probability" in printed
    lines = printed.splitlines()
    first_lead = lines[lines.index("share of |attribution| by lead:") + 1].split()
    assert first_lead[0] == "V2" and float(first_lead[1]) >= 50.0
    assert plot.is_file() and plot.stat().st_size > 20_000

    assert cli_main(["explain", str(checkpoint), "--record", path, "--label", "MI"]) == 2
    assert "available labels: 0: other, 1: V2_square" in capsys.readouterr().err
    assert cli_main(["explain", str(checkpoint), "--record", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err

    jepa, jepa_extractor, jepa_leads, jepa_rate, jepa_samples, _ = trained["jepa"]
    jepa_checkpoint = tmp_path / "jepa"
    jepa.save_pretrained(jepa_checkpoint)
    jepa_extractor.save_pretrained(jepa_checkpoint)
    jepa_record = _positive_and_negative(jepa_leads, jepa_rate, jepa_samples)[0][0]
    jepa_path = _write_wfdb(tmp_path, "v2jepa", jepa_record, jepa_rate, jepa_leads)
    assert cli_main(["explain", str(jepa_checkpoint), "--record", jepa_path, "--method", "attention_rollout"]) == 0
    printed = capsys.readouterr().out
    assert "attention rollout" in printed and "record v2jepa: V2_square" in printed
    shares = [float(line.split()[1]) for line in printed.splitlines() if line.startswith("  ")]
    assert len(shares) == 5 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.0
