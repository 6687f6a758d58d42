"""ONNX export (``ecg_hub.export.export_onnx`` and ``ecg-hub export onnx``): every ECG family's tiny
encoder and classifier exports, and onnxruntime fed straight from the feature extractor matches
PyTorch at two batch sizes; unsupported models and bad arguments are refused by name; a failed
check leaves no output behind."""

import json
import math

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from ecg_hub.modeling import (
    Ecg2TokTokenizerModel,
    EcgFeatureExtractor,
    EcgJepaForPreTraining,
    EcgJepaModel,
)
from model_battery import MODEL_SPECS, feature_extractor_for
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, BertModel

from ecg_hub import export as export_module
from ecg_hub.cli import build_parser, main
from ecg_hub.export import ONNX_FILE, REPORT_FILE, OnnxParityError, export_onnx

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECS = {spec.name: spec for spec in MODEL_SPECS}
OUT_FILES = {ONNX_FILE, REPORT_FILE, "config.json", "preprocessor_config.json"}
INPUTS = ["input_values", "attention_mask", "lead_mask"]
OUTPUTS = {
    "encoder": ["pooler_output", "last_hidden_state"],
    "ecg_text": ["pooler_output", "last_hidden_state"],
    "classifier": ["logits"],
}
SUPPORTED = [
    "Ecg2TokForSequenceClassification",
    "Ecg2TokModel",
    "EcgJepaForSequenceClassification",
    "EcgJepaModel",
    "EcgResNetForSequenceClassification",
    "EcgResNetModel",
    "EtpForSequenceClassification",
    "EtpModel",
    "MelpEcgForSequenceClassification",
    "MelpEcgModel",
    "MelpForSequenceClassification",
    "MelpModel",
]

# (test id, battery spec, config overrides, exported kind). ECG2TOK's encoder runs with CroPA, whose
# [CLS] is a global token: the mask path the full-attention classifier does not take.
CASES = [
    ("ecg_jepa_model", "ecg_jepa_model", {}, "encoder"),
    ("ecg_jepa_classifier", "ecg_jepa_classifier", {}, "classifier"),
    ("ecg2tok_model_cropa", "ecg2tok_model", {"attention_pattern": "cropa"}, "encoder"),
    ("ecg2tok_classifier", "ecg2tok_classifier", {}, "classifier"),
    ("ecg_resnet_model", "ecg_resnet_model", {}, "encoder"),
    ("ecg_resnet_classifier", "ecg_resnet_classifier", {}, "classifier"),
    ("etp_model", "etp_model", {}, "ecg_text"),
    ("etp_classifier", "etp_classifier", {}, "classifier"),
    # MELP: the ECG tower alone (melp_ecg), its linear probe, and the full model's ECG side.
    ("melp_ecg_model", "melp_ecg_model", {}, "encoder"),
    ("melp_ecg_classifier", "melp_ecg_classifier", {}, "classifier"),
    ("melp_model", "melp_model", {}, "ecg_text"),
    ("melp_classifier", "melp_classifier", {}, "classifier"),
]
# The battery's MELP input is 1 s at 500 Hz, which is also the shortest record the extractor takes
# (min_samples = 1 s): 2 s leave room for the padded 3/5-length records of _extractor_batch.
EXTRACTOR_OVERRIDES = {name: {"num_samples": 1000} for name in SPECS if name.startswith("melp")}


def _save(path, spec_name: str, **overrides):
    """A tiny random checkpoint of a battery spec with its feature extractor, as save_pretrained writes it."""
    spec = SPECS[spec_name]
    torch.manual_seed(0)
    model = spec.model_class(spec.config(**overrides))
    model.save_pretrained(path)
    extractor = feature_extractor_for(spec)
    for key, value in EXTRACTOR_OVERRIDES.get(spec_name, {}).items():
        setattr(extractor, key, value)
    extractor.save_pretrained(path)
    return model, extractor


def _extractor_batch(extractor: EcgFeatureExtractor, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """The extractor's numpy output for random records: odd records 3/5 as long as num_samples (padded),
    the last one with lead 1 masked (zero-filled, lead_mask 0)."""
    rng = np.random.default_rng(seed)
    leads, num_samples = list(extractor.leads), extractor.num_samples
    short = max(extractor.effective_min_samples, 3 * num_samples // 5)
    records = [
        rng.standard_normal((len(leads), short if i % 2 else num_samples)).astype(np.float32)
        for i in range(batch_size)
    ]
    masked = [[leads[1]] if i == batch_size - 1 else [] for i in range(batch_size)]
    batch = extractor(
        records, sampling_rate=extractor.sampling_rate, leads=leads, masked_leads=masked, return_tensors="np"
    )
    return {name: np.asarray(value) for name, value in batch.items()}


def _pytorch(model, kind: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tensors = {name: torch.from_numpy(value) for name, value in feeds.items()}
    with torch.no_grad():
        if kind == "ecg_text":
            out = model.get_ecg_features(
                tensors["input_values"],
                ecg_attention_mask=tensors["attention_mask"],
                lead_mask=tensors["lead_mask"],
            )
        else:
            out = model(**tensors)
    return {name: getattr(out, name).numpy() for name in OUTPUTS[kind]}


def _session(path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_diff(session, model, kind, feeds) -> dict[str, float]:
    expected = _pytorch(model, kind, feeds)
    got = dict(zip(OUTPUTS[kind], session.run(OUTPUTS[kind], feeds)))
    for name in expected:
        assert got[name].shape == expected[name].shape, name
    return {name: float(np.abs(got[name] - expected[name]).max()) for name in expected}


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(("case", "spec_name", "overrides", "kind"), CASES, ids=[c[0] for c in CASES])
def test_every_family_exports_and_matches_onnxruntime_at_two_batch_sizes(
    tmp_path, case, spec_name, overrides, kind
):
    _, extractor = _save(tmp_path / "model", spec_name, **overrides)
    report = export_onnx(tmp_path / "model", tmp_path / "onnx")

    assert {p.name for p in (tmp_path / "onnx").iterdir()} == OUT_FILES
    assert report.exported == kind and report.opset == 17 and report.check_batch_sizes == (1, 3)
    assert 0.0 <= report.max_abs_diff <= 1e-4
    assert set(report.max_abs_diff_by_output) == set(OUTPUTS[kind])
    document = json.loads((tmp_path / "onnx" / REPORT_FILE).read_text())
    assert list(document["inputs"]) == INPUTS and list(document["outputs"]) == OUTPUTS[kind]
    assert document["inputs"]["input_values"] == {
        "dtype": "float32",
        "shape": ["batch", extractor.num_leads, extractor.num_samples],
    }
    assert document["inputs"]["lead_mask"] == {"dtype": "int64", "shape": ["batch", extractor.num_leads]}
    assert document["check"]["max_abs_diff"] == report.max_abs_diff and document["check"]["atol"] == 1e-4
    assert document["opset"] == 17 and document["versions"]["onnx"] == onnx.__version__
    assert document["versions"]["torch"] == torch.__version__
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["architectures"] == [report.model_class]
    saved = EcgFeatureExtractor.from_pretrained(tmp_path / "onnx")
    assert saved.num_samples == extractor.num_samples and saved.leads == extractor.leads

    # Independently of the exporter's own check: the extractor's output feeds the graph as it is, and
    # onnxruntime agrees with the model reloaded through its Auto class at batch 1 and 4 (traced at 2).
    auto = AutoModelForSequenceClassification if kind == "classifier" else AutoModel
    model = auto.from_pretrained(tmp_path / "model").eval()
    assert type(model).__name__ == report.model_class
    session = _session(tmp_path / "onnx" / ONNX_FILE)
    assert [i.name for i in session.get_inputs()] == INPUTS
    assert session.get_inputs()[0].shape == ["batch", extractor.num_leads, extractor.num_samples]
    for batch_size in (1, 4):
        feeds = _extractor_batch(extractor, batch_size, seed=batch_size)
        assert sorted(feeds) == sorted(INPUTS)
        assert feeds["lead_mask"][-1, 1] == 0 and (
            batch_size == 1 or feeds["attention_mask"][1].sum() < extractor.num_samples
        )
        diffs = _max_diff(session, model, kind, feeds)
        assert max(diffs.values()) <= 1e-4, (batch_size, diffs)


def test_a_pretraining_checkpoint_exports_its_encoder(tmp_path):
    _, extractor = _save(tmp_path / "model", "ecg_jepa_pretraining")
    pretraining = EcgJepaForPreTraining.from_pretrained(tmp_path / "model").eval()
    report = export_onnx(tmp_path / "model", tmp_path / "onnx")
    assert report.model_class == "EcgJepaModel" and report.exported == "encoder"
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["architectures"] == ["EcgJepaModel"]
    # The context encoder's weights, not a fresh initialisation.
    diffs = _max_diff(
        _session(tmp_path / "onnx" / ONNX_FILE),
        pretraining.ecg_jepa,
        "encoder",
        _extractor_batch(extractor, 2, seed=7),
    )
    assert max(diffs.values()) <= 1e-4, diffs


def test_a_model_object_exports_in_eval_mode_and_keeps_its_mode(tmp_path):
    """Dropout 0.5 in training mode: the export and its check run the model in eval mode (else the
    check could not pass), and the model is handed back in training mode."""
    spec = SPECS["ecg_jepa_model"]
    torch.manual_seed(0)
    model = EcgJepaModel(spec.config(hidden_dropout_prob=0.5)).train()
    extractor = feature_extractor_for(spec)
    report = export_onnx(model, tmp_path / "onnx", feature_extractor=extractor)
    assert model.training and report.source == "<EcgJepaModel object>" and report.max_abs_diff <= 1e-4
    model.eval()
    diffs = _max_diff(
        _session(tmp_path / "onnx" / ONNX_FILE), model, "encoder", _extractor_batch(extractor, 3, 3)
    )
    assert max(diffs.values()) <= 1e-4, diffs


def test_an_extractor_without_attention_mask_gives_a_graph_without_it(tmp_path):
    spec = SPECS["ecg_resnet_model"]
    torch.manual_seed(0)
    model = spec.model_class(spec.config()).eval()
    extractor = feature_extractor_for(spec)
    extractor.return_attention_mask = False
    report = export_onnx(model, tmp_path / "onnx", feature_extractor=extractor)
    assert list(report.inputs) == ["input_values", "lead_mask"] and report.max_abs_diff <= 1e-4
    session = _session(tmp_path / "onnx" / ONNX_FILE)
    assert [i.name for i in session.get_inputs()] == ["input_values", "lead_mask"]
    feeds = _extractor_batch(extractor, 3, seed=5)
    assert sorted(feeds) == ["input_values", "lead_mask"]
    diffs = _max_diff(session, model, "encoder", feeds)
    assert max(diffs.values()) <= 1e-4, diffs
    saved = json.loads((tmp_path / "onnx" / "preprocessor_config.json").read_text())
    assert saved["return_attention_mask"] is False


def _bert(path=None):
    model = BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
    )
    if path is not None:
        model.save_pretrained(path)
    return model


@pytest.mark.parametrize("what", ["bert_folder", "bert_object", "pretraining_object", "tokenizer_object"])
def test_unsupported_models_are_refused_with_the_supported_classes(tmp_path, what):
    extractor = feature_extractor_for(SPECS["ecg_jepa_model"])
    if what == "bert_folder":
        source, expected = tmp_path / "bert", "model_type 'bert', not an ecg-hub ECG model"
        _bert(source)
    elif what == "bert_object":
        source, expected = _bert(), "BertModel (model_type 'bert', not an ecg-hub ECG model)"
    elif what == "pretraining_object":
        source, expected = (
            EcgJepaForPreTraining(SPECS["ecg_jepa_pretraining"].config()),
            "EcgJepaForPreTraining",
        )
    else:
        source, expected = Ecg2TokTokenizerModel(SPECS["ecg2tok_tokenizer"].config()), "Ecg2TokTokenizerModel"
    with pytest.raises(ValueError, match="cannot be exported to ONNX") as error:
        export_onnx(source, tmp_path / "onnx", feature_extractor=extractor)
    assert expected in str(error.value)
    assert all(name in str(error.value) for name in SUPPORTED)
    assert not (tmp_path / "onnx").exists()


def _tamper(monkeypatch):
    """Make the exporter write a graph whose largest weight is shifted by 0.5: a broken export."""
    original = export_module._write_onnx

    def write_then_tamper(graph, example, path, output_names, opset):
        original(graph, example, path, output_names, opset)
        proto = onnx.load(str(path))
        weight = max(proto.graph.initializer, key=lambda tensor: np.prod(tensor.dims))
        weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) + 0.5, weight.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(export_module, "_write_onnx", write_then_tamper)


def test_a_failed_check_leaves_no_output_and_no_new_folders(tmp_path, monkeypatch):
    _save(tmp_path / "model", "ecg_resnet_model")
    out = tmp_path / "new" / "deeper" / "onnx"

    # Tolerance 0: the float32 graph differs from PyTorch in the last bits (about 1e-6 here).
    with pytest.raises(OnnxParityError, match=r"nothing was written") as error:
        export_onnx(tmp_path / "model", out, atol=0.0)
    assert 0 < error.value.max_abs_diff < 1e-4 and error.value.atol == 0.0
    assert set(error.value.diffs) == {f"{o}@batch{b}" for o in OUTPUTS["encoder"] for b in (1, 3)}
    assert _leftovers(tmp_path) == ["model"]

    _tamper(monkeypatch)
    with pytest.raises(OnnxParityError, match=r"> atol 1e-04") as error:
        export_onnx(tmp_path / "model", out)
    assert error.value.max_abs_diff > 1e-2
    assert _leftovers(tmp_path) == ["model"]

    # With overwrite, a failed export leaves the previous folder as it was.
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "keep.txt").write_text("previous export")
    with pytest.raises(OnnxParityError):
        export_onnx(tmp_path / "model", out, overwrite=True)
    assert _leftovers(out) == ["keep.txt"] and _leftovers(tmp_path) == ["model", "onnx"]

    monkeypatch.undo()
    report = export_onnx(tmp_path / "model", out, overwrite=True)
    assert {p.name for p in out.iterdir()} == OUT_FILES and report.max_abs_diff <= 1e-4
    assert _leftovers(tmp_path) == ["model", "onnx"]


def test_bad_arguments_and_inputs_are_refused_by_name(tmp_path):
    model, extractor = _save(tmp_path / "model", "ecg_jepa_model")
    out = tmp_path / "onnx"
    folder = tmp_path / "model"

    def jepa(**fields):
        return EcgFeatureExtractor.from_preset("ecg_jepa", **fields)

    cases = [
        ({"model_or_path": folder, "opset": 13}, r"opset: expected an integer from 14 to \d+, got 13"),
        ({"model_or_path": folder, "opset": "17"}, r"opset: expected an integer .* got '17'"),
        ({"model_or_path": folder, "atol": -1e-4}, r"atol: expected a finite number >= 0, got -0.0001"),
        ({"model_or_path": folder, "atol": math.nan}, r"atol: expected a finite number >= 0, got nan"),
        ({"model_or_path": model}, r"feature_extractor: required when a model object is exported"),
        ({"model_or_path": model, "feature_extractor": jepa(num_samples=None)}, r"num_samples is null"),
        (
            {"model_or_path": model, "feature_extractor": jepa(num_samples=500, return_dtype="float16")},
            r"return_dtype is 'float16'.*float32",
        ),
        (
            {
                "model_or_path": model,
                "feature_extractor": EcgFeatureExtractor.from_preset("etp", num_samples=500),
            },
            r"feature extractor leads: 12 .* but the model takes 8 leads",
        ),
        (
            {"model_or_path": model, "feature_extractor": jepa(num_samples=1000)},
            (
                r"EcgJepaModel does not take the feature extractor's input \(8 leads x 1000 samples\)"
                r".*up to num_samples=500"
            ),
        ),
        ({"model_or_path": tmp_path / "not" / "here"}, r"not a save_pretrained folder or a Hub model id"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            export_onnx(out_dir=out, **kwargs)
        assert not out.exists(), message

    # A folder without safetensors weights, or without a feature extractor config.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "model" / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights; export onnx loads safetensors only"):
        export_onnx(pickled, out)
    (tmp_path / "model" / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match=r"no feature extractor config"):
        export_onnx(tmp_path / "model", out)
    extractor.save_pretrained(tmp_path / "model")

    # An existing, non-empty output folder is never clobbered without overwrite.
    out.mkdir()
    (out / "other.txt").write_text("someone else's")
    with pytest.raises(ValueError, match=r"exists and is not empty; choose a new folder or pass overwrite"):
        export_onnx(tmp_path / "model", out)
    assert _leftovers(out) == ["other.txt"]
    assert not any(name.startswith(".") for name in _leftovers(tmp_path))


def test_cli_exports_prints_the_report_and_refuses_an_existing_out(tmp_path, capsys):
    _save(tmp_path / "model", "ecg_resnet_classifier")
    out = tmp_path / "onnx"
    assert main(["export", "onnx", str(tmp_path / "model"), str(out)]) == 0
    line = capsys.readouterr().out.strip()
    document = json.loads((out / REPORT_FILE).read_text())
    assert line.startswith(
        f"exported EcgResNetForSequenceClassification (classifier) to {out / ONNX_FILE} (opset 17"
    )
    assert (
        "input_values[batch,12,400], attention_mask[batch,400], lead_mask[batch,12] -> logits[batch,3]"
        in line
    )
    assert f"max abs diff {document['check']['max_abs_diff']:.2e} (atol 1e-04) at batch 1 and 3" in line

    assert main(["export", "onnx", str(tmp_path / "model"), str(out)]) == 1
    assert "ecg-hub export onnx: error: out_dir" in capsys.readouterr().err

    argv = ["export", "onnx", str(tmp_path / "model"), str(out), "--overwrite", "--no-check", "--opset", "18"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith("not checked against onnxruntime")
    document = json.loads((out / REPORT_FILE).read_text())
    assert document["opset"] == 18 and document["check"] is None
    assert {o.domain: o.version for o in onnx.load(str(out / ONNX_FILE)).opset_import}[""] == 18

    for bad in (["--atol", "-1"], ["--atol", "inf"], ["--opset", "99"], ["--opset", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "onnx", str(tmp_path / "model"), str(tmp_path / "other"), *bad])
        assert exit_info.value.code == 2
    assert "expected" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_cli_options_all_have_plain_help():
    parser = build_parser()
    export = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "export")[1]
    onnx_parser = export._subparsers._group_actions[0].choices["onnx"]
    actions = [a for a in onnx_parser._actions if a.dest != "help"]
    assert {a.dest for a in actions} == {"model", "out", "opset", "atol", "no_check", "revision", "overwrite"}
    for action in actions:
        assert action.help and "``" not in action.help, action.dest
    assert "``" not in onnx_parser.description
