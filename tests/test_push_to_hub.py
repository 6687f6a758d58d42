"""A plain ``save_pretrained`` / ``push_to_hub`` / ``Trainer(push_to_hub=True)`` carries ecg-hub's code:
every class is registered for its Auto class at ``import ecg_hub``, so the folder holds the modeling
files and a complete ``auto_map``, and loads with ``trust_remote_code=True`` in a fresh process where
ecg_hub cannot be imported (loopback Hub for the uploads)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from ecg_hub.modeling import EcgFeatureExtractor, EcgJepaForSequenceClassification, EtpModel
from ecg_hub.modeling.processing_etp import EtpProcessor
from model_battery import tiny_ecg_jepa_config, tiny_etp_config
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments

import ecg_hub
from ecg_hub.data.collators import EcgCollator
from ecg_hub.data.text_collators import train_report_tokenizer

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.hub]

LEADS = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]

_CHILD = r'''
import importlib.abc, json, sys

class HideEcgHub(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ecg_hub" or name.startswith("ecg_hub."):
            raise ModuleNotFoundError(f"ecg_hub is hidden from this process ({name})")

sys.meta_path.insert(0, HideEcgHub())
import torch
import transformers
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)
args = json.loads(sys.argv[1])
inputs = load_file(args["inputs"])
out = {}
for name, spec in args["loads"].items():
    model = getattr(transformers, spec["auto_class"]).from_pretrained(spec["source"], trust_remote_code=True).eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(spec["source"], trust_remote_code=True)
    features = extractor(inputs["signal"].numpy(), sampling_rate=250, leads=args["leads"], return_tensors="pt")
    with torch.no_grad():
        output = model(**{k: v for k, v in features.items() if k in ("input_values", "lead_mask", "attention_mask")})
    out[name] = getattr(output, spec["output"]).contiguous()
    out[name + ".module"] = torch.tensor([type(model).__module__.startswith("transformers_modules")])
save_file(out, args["out"])
'''


def _run_child(tmp_path: Path, loads: dict, signal: np.ndarray, hf_home: Path) -> dict:
    inputs = tmp_path / "inputs.safetensors"
    save_file({"signal": torch.from_numpy(signal)}, inputs)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = tmp_path / "out.safetensors"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", OMP_NUM_THREADS="1")
    args = {"inputs": str(inputs), "loads": loads, "leads": LEADS, "out": str(out)}
    process = subprocess.run(
        [sys.executable, str(script), json.dumps(args)], check=False, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return load_file(out)


def _expected(model, extractor, signal):
    features = extractor(signal, sampling_rate=250, leads=LEADS, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**features)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    names = {0: "NORM", 1: "MI", 2: "AF"}
    config = tiny_ecg_jepa_config(id2label=names, label2id={v: k for k, v in names.items()})
    return EcgJepaForSequenceClassification(config).eval(), EcgFeatureExtractor.from_preset("ecg_jepa", num_samples=500)


def test_plain_save_pretrained_holds_code_and_a_complete_auto_map(classifier, tmp_path):
    model, extractor = classifier
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_ecg_jepa.EcgJepaConfig",
        "AutoModel": "modeling_ecg_jepa.EcgJepaModel",
        "AutoModelForPreTraining": "modeling_ecg_jepa.EcgJepaForPreTraining",
        "AutoModelForSequenceClassification": "modeling_ecg_jepa.EcgJepaForSequenceClassification",
    }
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["auto_map"] == {
        "AutoFeatureExtractor": "feature_extraction_ecg.EcgFeatureExtractor"
    }
    for name in ("modeling_ecg_jepa.py", "configuration_ecg_jepa.py", "feature_extraction_ecg.py", "leads.py"):
        assert (tmp_path / name).read_bytes() == (Path(ecg_hub.modeling.__file__).parent / name).read_bytes()
    assert not list(tmp_path.glob("*etp*")) and not list(tmp_path.glob("*ecg2tok*"))  # only this family's code


def test_an_ecg2tok_tokenizer_saves_an_auto_map_autoconfig_can_read(tmp_path):
    """transformers writes [slow, fast] pairs for class names with "Tokenizer"; the config fixes them."""
    from ecg_hub.modeling import Ecg2TokTokenizerModel
    from model_battery import tiny_ecg2tok_tokenizer_config
    from transformers import AutoConfig

    Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert all(isinstance(reference, str) for reference in auto_map.values())
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ecg2tok_tokenizer"


def test_push_to_hub_and_trainer_push_load_with_remote_code_only(classifier, hub_server, tmp_path):
    model, extractor = classifier
    signal = (np.random.default_rng(0).normal(size=(8, 500)) * 0.2).astype(np.float32)
    expected = _expected(model, extractor, signal).logits

    model.push_to_hub("ecg-hub-test/plain-push")
    extractor.push_to_hub("ecg-hub-test/plain-push")

    # Trainer(push_to_hub=True): one step on three synthetic rows, then the end-of-training push.
    rows = datasets.Dataset.from_dict({
        "signal": [signal, signal * 0.5, signal * 2], "sampling_rate": [250] * 3, "leads": [LEADS] * 3,
        "labels": [[0], [1], [2]],
    })
    trained = EcgJepaForSequenceClassification(model.config).eval()
    trained.load_state_dict(model.state_dict())
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=3, learning_rate=1e-3,
        report_to=[], push_to_hub=True, hub_model_id="ecg-hub-test/trainer-push", save_strategy="no",
        use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
    )
    trainer = Trainer(
        model=trained, args=arguments, train_dataset=rows, processing_class=extractor,
        data_collator=EcgCollator(extractor, label_column="labels", num_classes=3),
    )
    trainer.train()
    trainer.push_to_hub(blocking=True)
    trainer_expected = _expected(trained, extractor, signal).logits
    assert not torch.allclose(trainer_expected, expected)  # the step changed the weights

    for repo_id in ("ecg-hub-test/plain-push", "ecg-hub-test/trainer-push"):
        files = hub_server.state.repos[("model", repo_id)].commits[
            hub_server.state.repos[("model", repo_id)].branches["main"]
        ].files
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_ecg_jepa.py"} <= set(files)

    loads = {
        "plain": {"source": "ecg-hub-test/plain-push", "auto_class": "AutoModelForSequenceClassification", "output": "logits"},
        "trainer": {"source": "ecg-hub-test/trainer-push", "auto_class": "AutoModelForSequenceClassification", "output": "logits"},
        "encoder": {"source": "ecg-hub-test/plain-push", "auto_class": "AutoModel", "output": "pooler_output"},
    }
    got = _run_child(tmp_path, loads, signal, tmp_path / "empty-cache")
    torch.testing.assert_close(got["plain"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["trainer"], trainer_expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        got["encoder"], _expected(model.ecg_jepa, extractor, signal).pooler_output, rtol=0, atol=1e-6
    )
    assert all(bool(got[name + ".module"]) for name in loads)  # the repo's code, not an installed package


def test_a_processor_folder_carries_its_code(tmp_path):
    tokenizer = train_report_tokenizer(["sinus rhythm", "atrial fibrillation"] * 4, vocab_size=60)
    EtpModel(tiny_etp_config()).save_pretrained(tmp_path)
    EtpProcessor(EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=400), tokenizer).save_pretrained(tmp_path)
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_etp.EtpProcessor"}
    assert (tmp_path / "processing_etp.py").is_file() and (tmp_path / "modeling_etp.py").is_file()
