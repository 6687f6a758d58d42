"""Inference precision as a setting: the choice `auto` makes (and says why), and float32 vs bf16
autocast features through the evaluation path on real PTB-XL records."""

import numpy as np
import pytest
import torch

from ecg_hub import inference
from ecg_hub.inference import cpu_has_native_bf16, resolve_inference_dtype

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_auto_picks_bf16_only_where_it_is_native_and_says_why(monkeypatch):
    from ecg_hub import inference

    assert resolve_inference_dtype("float32") == (torch.float32, "float32 requested")
    assert resolve_inference_dtype("bfloat16")[0] == torch.bfloat16
    monkeypatch.setattr(inference, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    dtype, why = resolve_inference_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and "avx512_bf16" in why
    monkeypatch.setattr(inference, "cpu_bf16_flags", list)
    dtype, why = resolve_inference_dtype("auto", "cpu")
    assert dtype == torch.float32 and "without native bfloat16" in why
    with pytest.raises(ValueError, match="dtype: expected one of"):
        resolve_inference_dtype("fp8")
    assert isinstance(cpu_has_native_bf16(), bool)


def test_bf16_features_agree_with_float32_on_real_records(shared_data, tmp_path):
    """Pooled features of a tiny random ECG-JEPA encoder on 16 real PTB-XL records: cosine >= 0.99
    per record between float32 and bf16 autocast (the documented guard; released-size encoders are
    in benchmarks/inference_speed.py)."""
    from ecg_hub.modeling import EcgFeatureExtractor, EcgJepaConfig, EcgJepaModel

    from ecg_hub.data import prepare_ptbxl
    from ecg_hub.evaluation.linear_probe import cached_features

    dataset = prepare_ptbxl(shared_data / "ptbxl", tmp_path / "ptbxl", limit=16, progress=False).dataset
    torch.manual_seed(0)
    model = EcgJepaModel(EcgJepaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128))
    feature_extractor = EcgFeatureExtractor.from_preset("ecg_jepa")
    cache = tmp_path / "cache"
    full = cached_features(model, dataset, feature_extractor, cache_dir=cache, batch_size=8, dtype="float32")
    half = cached_features(model, dataset, feature_extractor, cache_dir=cache, batch_size=8, dtype="bfloat16")
    assert full.dtype == half.dtype == np.float32 and full.shape == half.shape == (16, 64)
    assert len(list(cache.iterdir())) == 2  # the precision is part of the cache key
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() >= 0.99, cosine
    assert not np.array_equal(full, half)  # bf16 really ran


def test_the_environment_switch_turns_native_cpu_bf16_off(monkeypatch):
    monkeypatch.setenv(inference.NATIVE_CPU_BF16_ENV, "0")
    assert inference.cpu_bf16_flags() == []
    assert resolve_inference_dtype("auto", "cpu")[0] == torch.float32
    monkeypatch.delenv(inference.NATIVE_CPU_BF16_ENV)
    flags = inference.cpu_bf16_flags()
    assert flags is None or set(flags) <= {"avx512_bf16", "amx_bf16"}
