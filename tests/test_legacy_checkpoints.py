"""Checkpoints saved by ecg-hub 0.1.0 (commit 4e685f7, before the shared-components refactor) load
through the Auto classes of today's code and give the outputs that code gave, to float32 round-off.

The folders and ``expected.safetensors`` were written by ``fixtures/legacy_v0_1/make_fixture.py``.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

import ecg_hub  # noqa: F401  (registers the Auto classes)

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v0_1"


@pytest.fixture(scope="module")
def expected():
    return load_file(LEGACY / "expected.safetensors")


def _load(auto_class, name):
    model, info = auto_class.from_pretrained(LEGACY / name, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[key], (name, key, info[key])
    return model.eval()


def test_ecg_jepa_pretraining_checkpoint(expected):
    model = _load(AutoModelForPreTraining, "ecg_jepa_pretraining")
    with torch.no_grad():
        out = model(
            expected["jepa_input"],
            lead_mask=expected["jepa_lead_mask"],
            masked_time_patches=expected["masked_time_patches"],
        )
        pooled = model.ecg_jepa(expected["jepa_input"], lead_mask=expected["jepa_lead_mask"]).pooler_output
    torch.testing.assert_close(out.loss, expected["ecg_jepa_pretraining.loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.predicted_features, expected["ecg_jepa_pretraining.predicted_features"], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(pooled, expected["ecg_jepa_pretraining.encoder_pooler_output"], rtol=1e-5, atol=1e-6)
    # The same folder loads as the bare encoder (the context encoder's weights).
    encoder = _load_encoder_ignoring_heads("ecg_jepa_pretraining")
    with torch.no_grad():
        again = encoder(expected["jepa_input"], lead_mask=expected["jepa_lead_mask"]).pooler_output
    torch.testing.assert_close(again, expected["ecg_jepa_pretraining.encoder_pooler_output"], rtol=1e-5, atol=1e-6)
    fe = AutoFeatureExtractor.from_pretrained(LEGACY / "ecg_jepa_pretraining")
    assert (fe.sampling_rate, fe.num_samples) == (250, 500)


def _load_encoder_ignoring_heads(name):
    return AutoModel.from_pretrained(LEGACY / name).eval()


@pytest.mark.parametrize(
    ("name", "input_key"),
    [("ecg_jepa_classifier", "jepa_input"), ("ecg_resnet_classifier", "resnet_input")],
)
def test_classifier_checkpoints(expected, name, input_key):
    model = _load(AutoModelForSequenceClassification, name)
    kwargs = {"lead_mask": expected["jepa_lead_mask"]} if input_key == "jepa_input" else {}
    with torch.no_grad():
        logits = model(expected[input_key], **kwargs).logits
    torch.testing.assert_close(logits, expected[f"{name}.logits"], rtol=1e-5, atol=1e-6)


def test_etp_checkpoint(expected):
    model = _load(AutoModel, "etp")
    with torch.no_grad():
        out = model(
            expected["resnet_input"],
            input_ids=expected["input_ids"],
            attention_mask=expected["text_mask"],
            return_loss=True,
        )
    torch.testing.assert_close(out.logits_per_ecg, expected["etp.logits_per_ecg"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, expected["etp.loss"], rtol=1e-5, atol=1e-5)
