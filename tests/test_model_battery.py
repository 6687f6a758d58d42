"""The battery every ecg-hub model class passes (specs in ``model_battery.py``): save/load exact
through its Auto class, sdpa equal to eager where there is attention, outputs independent of the
values in padded time and missing leads, freezing leaves only the head trainable, its loss falls
in a few steps, and the exported Hub folder passes the remote-code import check without dragging
in another family's code."""

from __future__ import annotations

import pytest
import torch
import transformers
from ecg_hub.modeling.registry import families, family_of_model_type
from model_battery import BATCH, MODEL_SPECS, ModelSpec, feature_extractor_for

import ecg_hub  # noqa: F401  (registers the Auto classes)

SPEC_IDS = [spec.name for spec in MODEL_SPECS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(spec: ModelSpec, **config_overrides):
    torch.manual_seed(0)
    return spec.model_class(spec.config(**config_overrides))


def _output(model, spec: ModelSpec, **changes) -> torch.Tensor:
    kwargs = {**spec.inputs(), **spec.extra, **changes}
    if spec.is_classifier:
        kwargs.setdefault("labels", spec.labels())
    value = getattr(model(**kwargs), spec.output)
    return value.float()


def test_every_declared_model_class_has_a_battery_spec():
    declared = {
        reference.rpartition(".")[2]
        for family in families().values()
        for model_type in family.model_types.values()
        for reference in model_type.models.values()
    }
    assert declared == {spec.model_class.__name__ for spec in MODEL_SPECS}


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=SPEC_IDS)
def test_save_load_is_exact_through_the_auto_class(spec, tmp_path):
    model = _build(spec).eval()
    with torch.no_grad():
        expected = _output(model, spec)
    model.save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(config) is type(model.config)
    loaded = getattr(transformers, spec.auto_class).from_pretrained(tmp_path).eval()
    assert type(loaded) is spec.model_class
    with torch.no_grad():
        torch.testing.assert_close(_output(loaded, spec), expected, rtol=0, atol=0)


@pytest.mark.parametrize("spec", [s for s in MODEL_SPECS if s.has_attention], ids=lambda s: s.name)
def test_sdpa_equals_eager(spec, tmp_path):
    _build(spec).save_pretrained(tmp_path)
    auto = getattr(transformers, spec.auto_class)
    results = {}
    for implementation in ("eager", "sdpa"):
        # A composite model sets the implementation of its attention-bearing sub-model only.
        choice = {"text_config": implementation} if spec.model_class.__name__ == "EtpModel" else implementation
        model = auto.from_pretrained(tmp_path, attn_implementation=choice).eval()
        attention_config = model.text_model.config if spec.model_class.__name__ == "EtpModel" else model.config
        assert attention_config._attn_implementation == implementation
        with torch.no_grad():
            results[implementation] = _output(model, spec)
    torch.testing.assert_close(results["sdpa"], results["eager"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=SPEC_IDS)
def test_outputs_ignore_the_values_of_padded_time_and_missing_leads(spec):
    model = _build(spec).eval()
    values = spec.inputs()["input_values"]
    num_samples = values.shape[-1]
    time_mask = torch.ones(BATCH, num_samples, dtype=torch.long)
    time_mask[0, -100:] = 0  # the last 100 samples of record 0 are padding
    lead_mask = torch.ones(BATCH, values.shape[1], dtype=torch.long)
    lead_mask[1, 2] = 0  # lead 2 of record 1 is missing
    padded = values.clone()
    padded[0, :, -100:] = 0.0
    padded[1, 2] = 0.0
    garbage = padded.clone()
    garbage[0, :, -100:] = 50.0 * torch.randn(values.shape[1], 100)
    garbage[1, 2] = 50.0 * torch.randn(num_samples)
    masks = {spec.ecg_time_mask: time_mask, "lead_mask": lead_mask}
    with torch.no_grad():
        clean = _output(model, spec, input_values=padded, **masks)
        noisy = _output(model, spec, input_values=garbage, **masks)
    torch.testing.assert_close(noisy, clean, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [s for s in MODEL_SPECS if s.is_classifier], ids=lambda s: s.name)
def test_freezing_leaves_only_the_head_trainable(spec):
    model = _build(spec)
    model.freeze_base_model()
    model.train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    assert model.base_model_frozen and not model.classification_encoder.training and model.classifier.training
    encoder_before = {k: v.clone() for k, v in model.classification_encoder.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**spec.inputs(), labels=spec.labels()).loss.backward()
    optimizer.step()
    for key, value in model.classification_encoder.state_dict().items():  # weights and BatchNorm statistics
        torch.testing.assert_close(value, encoder_before[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    "spec", [s for s in MODEL_SPECS if s.is_classifier or s.trains_by_its_own_loss], ids=lambda s: s.name
)
def test_loss_decreases_in_a_few_steps(spec):
    model = _build(spec).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        kwargs = {**spec.inputs(), **spec.extra}
        if spec.is_classifier:
            kwargs["labels"] = spec.labels()
        loss = model(**kwargs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    # 10 %: a multi-label head on 3 records can do little better than the label marginals.
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("spec", MODEL_SPECS, ids=SPEC_IDS)
def test_export_passes_the_remote_code_check_and_carries_one_family(spec, tmp_path):
    from ecg_hub.hub import export_checkpoint

    model = _build(spec)
    model.save_pretrained(tmp_path / "model")
    feature_extractor_for(spec).save_pretrained(tmp_path / "model")
    written = export_checkpoint(tmp_path / "model", tmp_path / "export", repo_id="ecg-hub-test/battery")
    family = family_of_model_type(model.config.model_type)
    own_modules = {
        reference.rpartition(".")[0] + ".py"
        for model_type in family.model_types.values()
        for reference in [model_type.config, *model_type.models.values()]
    }
    other_modules = {
        reference.rpartition(".")[0] + ".py"
        for other in families().values()
        if other is not family
        for model_type in other.model_types.values()
        for reference in [model_type.config, *model_type.models.values()]
    } - own_modules
    assert "requirements.txt" in written and "ecg_hub" not in (tmp_path / "export" / "requirements.txt").read_text()
    assert not other_modules & set(written), f"{spec.name} drags in {sorted(other_modules & set(written))}"
