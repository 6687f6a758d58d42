"""The MELP converter against the official code: the fixture (tests/fixtures/melp/README.md) holds the
official ECG encoder's weights and outputs on a tiny configuration; converting the weights from every
official layout and weight-norm naming must reproduce them, and a wrong checkpoint must be refused
with an error that names the key."""

import json
import os
import pickle
from pathlib import Path, PurePosixPath

import pytest
import torch
from ecg_hub.modeling.convert_melp_original_to_hf import (
    convert_checkpoint,
    convert_official_state_dict,
    load_official_state_dict,
)
from ecg_hub.modeling.modeling_melp import MelpEcgModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoFeatureExtractor, AutoModel

import ecg_hub  # noqa: F401  (registers the Auto classes)
from ecg_hub.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "melp" / "official_tiny.safetensors"
MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
TINY_HEADS = {"num_attention_heads": 4, "pooler_num_attention_heads": 4}
TINY_CLI_HEADS = ["--num-attention-heads", "4", "--pooler-num-attention-heads", "4"]
TOLERANCE = 1e-5
POS_CONV = "ecg_encoder.ecg_encoder.conv_pos.pos_conv.0."
#: A stand-in for the rest of a MELPModel Lightning state_dict (text tower, projections, decoder, temperature).
NON_ECG = {
    "lm_model.bert.embeddings.word_embeddings.weight": torch.zeros(11, 4),
    "lm_model.cls.predictions.bias": torch.zeros(11),
    "proj_t.0.weight": torch.zeros(4, 4),
    "sent_proj.weight": torch.zeros(4, 4),
    "text_decoder.ln_final.weight": torch.ones(4),
    "logit_scale": torch.tensor(2.659),
}


@pytest.fixture(scope="module")
def fixture():
    with safe_open(FIXTURE, "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(FIXTURE)
    official = {k[len("official.") :]: v for k, v in tensors.items() if k.startswith("official.")}
    return {"tensors": tensors, "official": official, "metadata": metadata}


# ----------------------------------------------------------------------------------------------
# The official layouts, derived from the stored MELPEncoderModel / MELPModel form
# ----------------------------------------------------------------------------------------------


def with_old_weight_norm(state: dict) -> dict:
    """The deprecated ``torch.nn.utils.weight_norm`` naming: ``weight_g`` (= original0), ``weight_v`` (= original1)."""
    out = {}
    for key, tensor in state.items():
        key = key.replace("pos_conv.0.parametrizations.weight.original0", "pos_conv.0.weight_g")
        out[key.replace("pos_conv.0.parametrizations.weight.original1", "pos_conv.0.weight_v")] = tensor
    return out


def layout(official: dict, name: str, weight_norm: str) -> dict:
    """``melp_encoder``: fuyingw/MELP_Encoder's MELPEncoderModel state dict (as stored); ``lightning``: a
    MELPModel Lightning state_dict (the same plus the non-ECG parts); ``ecgfm``: ECGFMModel's own state
    dict (no ``ecg_encoder.`` prefix on the poolers, ``ecg_encoder.*`` = the trunk)."""
    state = dict(official)
    if name == "lightning":
        state.update(NON_ECG)
    elif name == "ecgfm":
        state = {k[len("ecg_encoder.") :]: v for k, v in state.items()}
    return with_old_weight_norm(state) if weight_norm == "weight_g/weight_v" else state


def ln_contrast_output(model: MelpEcgModel, input_values: torch.Tensor):
    """The model's output and the per-beat ``ln_contrast`` output (before ``proj_contrast``)."""
    captured = {}
    hook = model.ln_contrast.register_forward_hook(
        lambda module, args, output: captured.update(beats=output.clone())
    )
    try:
        with torch.no_grad():
            output = model(input_values)
    finally:
        hook.remove()
    return output, captured["beats"]


def max_differences(model: MelpEcgModel, tensors: dict) -> dict[str, float]:
    output, beats_ln = ln_contrast_output(model, tensors["input_values"])
    pairs = {
        "frame_states": (output.last_hidden_state, tensors["frame_states"]),
        "beat_embeddings_pre_projection": (beats_ln, tensors["beat_embeddings_pre_projection"]),
        "probe_feature": (output.pooler_output, tensors["beat_embeddings_pre_projection"].mean(dim=1)),
        "beat_embeddings": (output.beat_embeds, tensors["beat_embeddings"]),
        "rhythm_embedding": (output.rhythm_embeds, tensors["rhythm_embedding"]),
        "ecg_tokens": (output.ecg_tokens, tensors["ecg_tokens"]),
    }
    for name, (ours, theirs) in pairs.items():
        assert ours.dtype == torch.float32 and tuple(ours.shape) == tuple(theirs.shape), name
    return {name: float((ours - theirs).abs().max()) for name, (ours, theirs) in pairs.items()}


def assert_matches_official(model: MelpEcgModel, tensors: dict) -> None:
    differences = max_differences(model, tensors)
    assert max(differences.values()) <= TOLERANCE, differences


# ----------------------------------------------------------------------------------------------
# The fixture itself
# ----------------------------------------------------------------------------------------------


def test_fixture_is_the_documented_official_run(fixture):
    metadata, official, tensors = fixture["metadata"], fixture["official"], fixture["tensors"]
    config = json.loads(metadata["official_config"])
    trunk = json.loads(metadata["official_trunk_config"])
    assert "088741d" in metadata["source"] and "27d94ba" in metadata["source"] and metadata["torch"]
    assert (config["n_queries_contrast"], config["n_queries_caption"], config["attn_pooler_heads"]) == (
        5,
        8,
        4,
    )
    assert (trunk["encoder_embed_dim"], trunk["encoder_layers"], trunk["encoder_attention_heads"]) == (
        48,
        2,
        4,
    )
    # The official torch stores the positional conv's weight norm as parametrizations.
    assert metadata["weight_norm_naming"] == "parametrizations"
    assert f"{POS_CONV}parametrizations.weight.original0" in official
    assert not any(k.endswith(("weight_g", "weight_v")) for k in official)
    # Stored in the MELPEncoderModel / MELPModel form (everything under ecg_encoder.).
    assert all(k.startswith("ecg_encoder.") for k in official)
    assert official["ecg_encoder.attn_pool_contrast.query"].shape == (5, 32)
    assert "ecg_encoder.attn_pool_contrast.attn.q_proj_weight" in official  # 32 != 48: separate projections
    assert "ecg_encoder.attn_pool_caption.attn.in_proj_weight" in official  # 48 == 48: packed
    assert tensors["input_values"].shape == (2, 12, 500)
    assert torch.allclose(tensors["rhythm_embedding"], tensors["beat_embeddings"].mean(dim=1), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Parity: every layout x every weight-norm naming
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_norm", ["parametrizations", "weight_g/weight_v"])
@pytest.mark.parametrize("name", ["melp_encoder", "lightning", "ecgfm"])
def test_converted_model_matches_the_official_outputs(fixture, name, weight_norm):
    state = layout(fixture["official"], name, weight_norm)
    model, report = convert_official_state_dict(state, **TINY_HEADS)
    assert report["layout"] == ("ecgfm" if name == "ecgfm" else "melp")
    assert report["weight_norm"] == weight_norm
    assert report["skipped_non_ecg"] == (sorted(NON_ECG) if name == "lightning" else [])
    assert "ecg_encoder.quantizer.vars" in report["skipped_unused"]
    config = model.config
    assert (config.num_leads, config.lead_names, config.conv_dim, config.conv_kernel) == (
        12,
        MIMIC_ORDER,
        [32] * 4,
        [2] * 4,
    )
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (48, 2, 96)
    assert (config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups) == (16, 4)
    assert (
        config.n_beat_queries,
        config.beat_hidden_size,
        config.n_token_queries,
        config.token_hidden_size,
    ) == (5, 32, 8, 48)
    assert not model.training
    assert_matches_official(model, fixture["tensors"])


def test_eager_attention_matches_too(fixture):
    model, _ = convert_official_state_dict(fixture["official"], **TINY_HEADS)
    model.set_attn_implementation("eager")
    assert_matches_official(model, fixture["tensors"])


def test_the_head_counts_matter(fixture):
    """The heads are not in the weights: they come from the options (or config.json), and they matter."""
    with pytest.raises(ValueError, match="num_attention_heads"):
        convert_official_state_dict(fixture["official"], num_attention_heads=5, pooler_num_attention_heads=4)
    model, _ = convert_official_state_dict(
        fixture["official"], num_attention_heads=4, pooler_num_attention_heads=8
    )
    assert max_differences(model, fixture["tensors"])["beat_embeddings"] > 1e-3


def test_a_bfloat16_release_is_converted_to_float32(fixture):
    """fuyingw/MELP_Encoder ships bf16 weights: the converted model holds their exact float32 values."""
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in fixture["official"].items()}
    model, _ = convert_official_state_dict(state, **TINY_HEADS)
    weights = model.state_dict()
    query = weights["attn_pool_contrast.query"]
    assert query.dtype == torch.float32
    assert torch.equal(query, state["ecg_encoder.attn_pool_contrast.query"].float())
    with torch.no_grad():
        rhythm = model(fixture["tensors"]["input_values"]).rhythm_embeds
    assert torch.allclose(rhythm, fixture["tensors"]["rhythm_embedding"], atol=0.2)


# ----------------------------------------------------------------------------------------------
# n_q from the query tensor
# ----------------------------------------------------------------------------------------------


def test_n_beat_queries_comes_from_the_query_tensor(fixture, tmp_path):
    official = dict(fixture["official"])
    query = official["ecg_encoder.attn_pool_contrast.query"]
    generator = torch.Generator().manual_seed(1)
    official["ecg_encoder.attn_pool_contrast.query"] = torch.cat(
        [query, torch.randn(2, 32, generator=generator)]
    )
    model, _ = convert_official_state_dict(official, **TINY_HEADS)
    assert model.config.n_beat_queries == 7 and model.attn_pool_contrast.query.shape == (7, 32)
    with torch.no_grad():
        output = model(fixture["tensors"]["input_values"])
    # Each query attends on its own: the first five beats are the official ones.
    assert (output.beat_embeds[:, :5] - fixture["tensors"]["beat_embeddings"]).abs().max() <= TOLERANCE
    assert output.beat_embeds.shape == (2, 7, 32)

    # A release folder whose config.json disagrees: the weights win (and the CLI says so).
    folder = tmp_path / "MELP_Encoder"
    folder.mkdir()
    save_file(official, folder / "model.safetensors")
    release = {"model_type": "melp", "model_size": "small", "n_queries_contrast": 14, "attn_pooler_heads": 4}
    (folder / "config.json").write_text(json.dumps(release))
    output_dir, report = convert_checkpoint(str(folder), str(tmp_path / "out"), num_attention_heads=4)
    assert AutoModel.from_pretrained(output_dir).config.n_beat_queries == 7
    assert "n_queries_contrast=14" in report["note"]


# ----------------------------------------------------------------------------------------------
# Unexpected and missing keys
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        "ecg_encoder.ecg_encoder.encoder.layers.0.self_attn.rel_pos_bias",  # inside the trunk
        "ecg_encoder.attn_pool_contrast.attn.bias_k",  # inside a pooler
        "ecg_encoder.head.proj.weight",  # a linear head instead of attentional pooling
        "ecg_encoder.extra_pooler.query",  # inside the ECG tower
        "vision_tower.weight",  # outside MELPModel
    ],
)
def test_an_unexpected_key_is_an_error_naming_it(fixture, extra):
    official = dict(fixture["official"])
    official[extra] = torch.zeros(3)
    with pytest.raises(ValueError, match="unexpected key") as error:
        convert_official_state_dict(official, **TINY_HEADS)
    assert repr(extra) in str(error.value)  # named as the checkpoint spells it


@pytest.mark.parametrize(
    "dropped",
    [
        "ecg_encoder.ln_caption.weight",
        "ecg_encoder.proj_contrast",
        "ecg_encoder.attn_pool_contrast.attn.k_proj_weight",
        "ecg_encoder.ecg_encoder.encoder.layers.1.fc2.bias",
        "ecg_encoder.ecg_encoder.feature_extractor.conv_layers.0.2.weight",
        "ecg_encoder.ecg_encoder.post_extract_proj.weight",
        "ecg_encoder.attn_pool_contrast.query",  # n_q cannot be read: named, not defaulted
        f"{POS_CONV}parametrizations.weight.original0",
    ],
)
def test_a_missing_key_is_an_error_naming_it(fixture, dropped):
    official = dict(fixture["official"])
    del official[dropped]
    with pytest.raises(ValueError, match="missing") as error:
        convert_official_state_dict(official, **TINY_HEADS)
    assert dropped in str(error.value)


def test_a_missing_old_style_weight_norm_half_is_named(fixture):
    official = with_old_weight_norm(fixture["official"])
    del official[f"{POS_CONV}weight_v"]
    with pytest.raises(ValueError, match="weight_v"):
        convert_official_state_dict(official, **TINY_HEADS)


def test_a_mis_shaped_key_and_a_doubled_weight_norm_are_refused(fixture):
    official = dict(fixture["official"])
    official["ecg_encoder.ln_contrast.weight"] = torch.ones(31)
    with pytest.raises(ValueError, match=r"'ecg_encoder\.ln_contrast\.weight' has shape \(31,\)"):
        convert_official_state_dict(official, **TINY_HEADS)
    both = dict(fixture["official"])
    both[f"{POS_CONV}weight_g"] = both[f"{POS_CONV}parametrizations.weight.original0"]
    with pytest.raises(ValueError, match="stored twice"):
        convert_official_state_dict(both, **TINY_HEADS)


def test_a_plain_positional_weight_is_accepted(fixture):
    """A checkpoint saved after removing the weight norm stores the effective ``weight``."""
    official = dict(fixture["official"])
    g = official.pop(f"{POS_CONV}parametrizations.weight.original0")
    v = official.pop(f"{POS_CONV}parametrizations.weight.original1")
    official[f"{POS_CONV}weight"] = torch._weight_norm(v, g, 2)
    model, report = convert_official_state_dict(official, **TINY_HEADS)
    assert report["weight_norm"] == "plain weight"
    assert_matches_official(model, fixture["tensors"])


def test_not_a_melp_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not a MELP ECG encoder checkpoint"):
        convert_official_state_dict({"encoder.layers.0.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="does not exist"):
        load_official_state_dict(str(tmp_path / "missing.ckpt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_official_state_dict(str(tmp_path / "empty"))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        load_official_state_dict(str(garbage))


# ----------------------------------------------------------------------------------------------
# Files: Lightning .ckpt, release folder, CLI
# ----------------------------------------------------------------------------------------------


class _RunsCode:
    """Pickles as a call of ``os.system``: loading must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class AttributeDict(dict):
    """Stands for Lightning's ``AttributeDict`` (the pickled ``hyper_parameters``): a global that
    ``weights_only`` does not allow, whose items are plain values."""


def test_a_lightning_checkpoint_is_read_with_inert_stand_ins(fixture, tmp_path):
    hyper_parameters = AttributeDict(
        norm_layer=torch.nn.LayerNorm, n_queries_contrast=12, dirpath=PurePosixPath("/ckpt"), lr=2e-4
    )
    checkpoint = {
        "epoch": 4,
        "global_step": 1000,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": layout(fixture["official"], "lightning", "weight_g/weight_v"),
        "hyper_parameters": hyper_parameters,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4}]}],
    }
    source = tmp_path / "melp_pretrain.ckpt"
    torch.save(checkpoint, source)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only loading refuses it
        torch.load(source, weights_only=True)
    state, release_config = load_official_state_dict(str(source))
    assert release_config is None and set(state) == set(checkpoint["state_dict"])

    output_dir, report = convert_checkpoint(str(source), str(tmp_path / "melp-ecg"), **TINY_HEADS)
    assert report["layout"] == "melp" and report["weight_norm"] == "weight_g/weight_v"
    assert report["skipped_non_ecg"] == sorted(NON_ECG)
    assert_matches_official(AutoModel.from_pretrained(output_dir).eval(), fixture["tensors"])


def test_pickled_code_is_never_run(fixture, tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint = {"state_dict": dict(fixture["official"]), "hyper_parameters": {"hook": _RunsCode(marker)}}
    source = tmp_path / "malicious.ckpt"
    torch.save(checkpoint, source)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_official_state_dict(str(source))
    assert not marker.exists()

    arbitrary = tmp_path / "arbitrary.ckpt"
    torch.save({"state_dict": {"a": AttributeDict(), "b": torch.zeros(1)}}, arbitrary)
    with pytest.raises(ValueError, match="holds no MELP state dict"):
        load_official_state_dict(str(arbitrary))


def test_cli_writes_a_loadable_folder(fixture, tmp_path, capsys):
    """``ecg-hub convert melp`` on the release layout (a bare model.safetensors, no config.json)."""
    source = tmp_path / "model.safetensors"
    save_file(fixture["official"], source)
    output = tmp_path / "melp-ecg-tiny"
    assert cli_main(["convert", "melp", str(source), str(output), *TINY_CLI_HEADS]) == 0
    printed = capsys.readouterr().out
    assert "melp layout" in printed and "5 beat queries" in printed
    written = sorted(os.listdir(output))
    assert [name for name in written if not name.endswith(".py")] == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert {"modeling_melp.py", "configuration_melp.py", "feature_extraction_ecg.py"} <= set(written)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".melp_convert_")]  # no staging left

    model = AutoModel.from_pretrained(output).eval()
    assert isinstance(model, MelpEcgModel)
    assert (model.config.num_attention_heads, model.config.pooler_num_attention_heads) == (4, 4)
    assert model.config.n_beat_queries == 5 and model.config.lead_names == MIMIC_ORDER
    assert_matches_official(model, fixture["tensors"])
    with safe_open(output / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert (
        "conv_pos.pos_conv.0.parametrizations.weight.original1" in keys and "attn_pool_contrast.query" in keys
    )
    assert not any("quantizer" in k or "mask_emb" in k or k.startswith("bn.") for k in keys)

    extractor = AutoFeatureExtractor.from_pretrained(output)
    assert extractor.sampling_rate == 500 and extractor.num_samples == 5000
    assert list(extractor.leads) == MIMIC_ORDER and extractor.normalization == "minmax_record"

    # A second conversion into the same folder is refused unless asked for.
    assert cli_main(["convert", "melp", str(source), str(output), *TINY_CLI_HEADS]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["convert", "melp", str(source), str(output), *TINY_CLI_HEADS, "--overwrite"]) == 0


def test_cli_release_folder_reads_the_heads_from_config_json(fixture, tmp_path):
    folder = tmp_path / "MELP_Encoder"
    folder.mkdir()
    save_file(
        {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in fixture["official"].items()},
        folder / "model.safetensors",
    )
    (folder / "config.json").write_text(
        json.dumps(
            {"model_type": "melp", "model_size": "small", "attn_pooler_heads": 4, "n_queries_contrast": 5}
        )
    )
    output = tmp_path / "out"
    # model_size "small" means 12 encoder heads, which 48 allows but the tiny run does not use: the
    # option overrides it, the pooler heads come from config.json.
    assert cli_main(["convert", "melp", str(folder), str(output), "--num-attention-heads", "4"]) == 0
    config = AutoModel.from_pretrained(output).config
    assert (config.num_attention_heads, config.pooler_num_attention_heads) == (4, 4)


def test_cli_failure_leaves_nothing_behind(fixture, tmp_path, capsys):
    official = dict(fixture["official"])
    del official["ecg_encoder.ln_caption.bias"]
    source = tmp_path / "broken.safetensors"
    save_file(official, source)
    output = tmp_path / "out"
    assert cli_main(["convert", "melp", str(source), str(output), *TINY_CLI_HEADS]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ecg-hub convert melp: error:") and "ecg_encoder.ln_caption.bias" in error
    assert not output.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".melp_convert_")]
