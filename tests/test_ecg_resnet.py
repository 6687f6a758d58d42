"""EcgResNet: MERL's ResNet18-1D as a transformers model (shapes, masks, MERL key layout, heads, save/load)."""

import pytest
import torch
from ecg_hub.modeling.configuration_ecg_resnet import EcgResNetConfig
from ecg_hub.modeling.modeling_ecg_resnet import EcgResNetForSequenceClassification, EcgResNetModel
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

import ecg_hub  # noqa: F401  (registers the Auto classes)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> EcgResNetConfig:
    values = dict(hidden_sizes=[8, 16, 24], depths=[1, 1, 1], embedding_size=8, num_samples=400, sampling_rate=100)
    values.update(overrides)
    return EcgResNetConfig(**values)


def test_default_is_merl_resnet18_1d():
    torch.manual_seed(0)
    model = EcgResNetModel(EcgResNetConfig()).eval()
    # Counted by hand from MERL's resnet1d: 3,853,962 parameters, minus its unused 512 -> 10 linear head.
    assert sum(p.numel() for p in model.parameters()) == 3_853_962 - 5_130
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # MERL checkpoint layout (reference/ETP.md section 4.6), without the "ecg_encoder." prefix.
    assert shapes["conv1.weight"] == (64, 12, 7)
    assert shapes["layer1.1.conv2.weight"] == (64, 64, 3)
    assert shapes["layer2.0.shortcut.0.weight"] == (128, 64, 1)
    assert shapes["layer4.0.shortcut.1.running_var"] == (512,)
    assert "layer1.0.shortcut.0.weight" not in shapes  # identity shortcut in the first stage
    with torch.no_grad():
        out = model(torch.randn(1, 12, 5000))
    assert out.last_hidden_state.shape == (1, 512, 313)  # one frame per 16 samples
    assert out.pooler_output.shape == (1, 512)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(-1))


def test_masks_make_padding_and_missing_leads_irrelevant():
    torch.manual_seed(0)
    model = EcgResNetModel(tiny_config()).eval()
    signal = torch.randn(2, 12, 400)
    attention_mask = torch.ones(2, 400, dtype=torch.long)
    attention_mask[1, 250:] = 0
    lead_mask = torch.ones(2, 12, dtype=torch.long)
    lead_mask[0, 5] = 0
    noisy = signal.clone()
    noisy[1, :, 250:] = 1e3 * torch.randn(12, 150)  # garbage in the padding
    noisy[0, 5] = 1e3  # garbage in a missing lead
    with torch.no_grad():
        clean = model(signal, attention_mask=attention_mask, lead_mask=lead_mask)
        dirty = model(noisy, attention_mask=attention_mask, lead_mask=lead_mask)
    torch.testing.assert_close(clean.pooler_output, dirty.pooler_output)
    # Three stages -> one frame per 8 samples: 400 / 8 frames, ceil(250 / 8) of them valid.
    assert model.config.total_stride == 8
    assert clean.frame_mask.sum(-1).tolist() == [50, 32]
    # The padded record's pooled vector is the mean over its valid frames only.
    valid = clean.last_hidden_state[1, :, :32].mean(-1)
    torch.testing.assert_close(clean.pooler_output[1], valid)


def test_wrong_input_shape_is_a_clear_error():
    model = EcgResNetModel(tiny_config())
    with pytest.raises(ValueError, match="leads=12"):
        model(torch.randn(2, 8, 400))
    # @strict wraps validate_architecture's ValueError in its own error type, message kept.
    with pytest.raises((ValueError, StrictDataclassError), match="hidden_sizes"):
        EcgResNetConfig(hidden_sizes=[8, 16], depths=[1, 1, 1])
    with pytest.raises((ValueError, StrictDataclassError), match="lead_names"):
        EcgResNetConfig(num_leads=8, lead_names=["I", "II"])


def test_bottleneck_variant_and_hidden_states():
    config = tiny_config(layer_type="bottleneck")
    model = EcgResNetModel(config).eval()
    out = model(torch.randn(1, 12, 400), output_hidden_states=True)
    assert config.hidden_size == 24 * 4
    assert out.pooler_output.shape == (1, 96)
    assert [h.shape[1] for h in out.hidden_states] == [8, 32, 64, 96]
    assert EcgResNetConfig.from_depth("resnet34").depths == [3, 4, 6, 3]


def test_classifier_learns_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, problem_type="multi_label_classification", id2label={0: "A", 1: "B"}, label2id={"A": 0, "B": 1})
    model = EcgResNetForSequenceClassification(config)
    # Class A: a 5 Hz sine on every lead; class B: noise.
    t = torch.arange(400) / 100
    x = torch.cat([torch.sin(2 * torch.pi * 5 * t).expand(8, 12, 400), torch.randn(8, 12, 400)])
    y = torch.tensor([[1.0, 0.0]] * 8 + [[0.0, 1.0]] * 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(x, labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ecg_resnet"
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(reloaded, EcgResNetForSequenceClassification)
    model.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reloaded(x).logits, rtol=0, atol=0)
    # The bare encoder loads from the classifier checkpoint (prefix ecg_encoder.) with equal features.
    encoder = AutoModel.from_pretrained(tmp_path)
    assert isinstance(encoder, EcgResNetModel)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x).pooler_output, model.ecg_encoder(x).pooler_output, rtol=0, atol=0)


def test_frozen_base_keeps_batchnorm_statistics():
    model = EcgResNetForSequenceClassification(tiny_config(num_labels=3))
    model.freeze_base_model()
    model.train()
    before = model.ecg_encoder.bn1.running_mean.clone()
    loss = model(torch.randn(4, 12, 400) + 3.0, labels=torch.tensor([0, 1, 2, 0])).loss
    loss.backward()
    torch.testing.assert_close(model.ecg_encoder.bn1.running_mean, before)
    assert all(p.grad is None for p in model.ecg_encoder.parameters())
    assert model.classifier.weight.grad is not None
