"""A MELP checkpoint round trip through the (loopback) Hub: one plain ``save_pretrained`` folder of a
tiny ``MelpModel`` and its ``MelpProcessor`` (a tiny WordPiece tokenizer trained here, with MELP's
``[BOS]``) serves all three MELP uses: ``AutoModel`` loads the ``MelpModel`` (zero-shot scores and
embeddings), ``AutoModelForMultimodalLM`` the ``MelpForConditionalGeneration`` (report writing; it
ignores ``proj_t``, ``sent_proj`` and ``logit_scale``), ``AutoProcessor`` the processor.

After publishing with ``HfApi.upload_folder``, two fresh processes with an empty HF cache load it
from the Hub: (a) with ecg_hub installed (the registered classes and the ecg_hub pipelines), and (b)
with ecg_hub import-blocked and ``trust_remote_code=True`` (the repo's own code only; the zero-shot
scores by hand from ``get_ecg_features`` / ``get_text_features``, as the pipeline computes them).
Both must give the local model's zero-shot scores, greedy ``generate()`` ids and decoded text, and
embeddings (rhythm, probe = ``pooler_output``, projection), computed in the parent, within 1e-6
(every record is run on its own everywhere, so batch composition plays no part).

Also: ``ecg-hub embed`` (``batch_inference``) on the same folder writes the default (projection)
embedding the feature-extraction pipeline gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from ecg_hub.modeling import EcgFeatureExtractor
from ecg_hub.modeling.configuration_melp import MelpDecoderConfig
from ecg_hub.modeling.leads import MIMIC_LEADS
from ecg_hub.modeling.modeling_melp import MelpForConditionalGeneration, MelpModel
from ecg_hub.modeling.processing_melp import MelpProcessor
from huggingface_hub import HfApi
from model_battery import tiny_melp_config
from transformers import BertConfig, pipeline

import ecg_hub
from ecg_hub.data.synthetic import make_synthetic_dataset
from ecg_hub.data.text_collators import train_report_tokenizer
from ecg_hub.pipelines import build_class_prompts

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.hub]

REPO_ID = "ecg-hub-test/melp-tiny"
LEADS = list(MIMIC_LEADS)
REPORTS = [
    "sinus rhythm. normal axis. rate 72.",
    "sinus bradycardia. left axis deviation.",
    "atrial fibrillation with rapid ventricular response. no p waves.",
    "sinus tachycardia. rate 121",
]
LABELS = ["SR", "SB", "AF"]
DESCRIPTIONS = {"SB": "sinus bradycardia, slow heart rate", "AF": "atrial fibrillation"}
MAX_NEW_TOKENS = 8
ATOL = 1e-6
#: The files a MELP repo needs to load without ecg_hub (the modeling files and their imports).
CODE_FILES = {
    "configuration_melp.py", "modeling_melp.py", "processing_melp.py", "processing_ecg_text.py",
    "feature_extraction_ecg.py", "leads.py", "registry.py", "contrastive.py", "heads.py", "layers.py",
    "text_tower.py",
}

# One child script for both modes. Every value goes back as JSON (a float32 -> float -> JSON -> float32
# round trip is exact).
_CHILD = r'''
import importlib.abc, json, sys

with open(sys.argv[1]) as file:
    args = json.load(file)
remote = args["mode"] == "remote"
if remote:
    class HideEcgHub(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ecg_hub" or name.startswith("ecg_hub."):
                raise ModuleNotFoundError(f"ecg_hub is hidden from this process ({name})")

    sys.meta_path.insert(0, HideEcgHub())
else:
    import ecg_hub  # noqa: F401  (registers the classes and the pipelines)

import numpy as np
import torch
import torch.nn.functional as F
import transformers

torch.set_num_threads(1)
repo, leads, labels = args["repo"], args["leads"], args["labels"]
signals = [np.asarray(s, dtype=np.float32) for s in args["signals"]]
trust = {"trust_remote_code": True} if remote else {}
out = {"modules": {}}

model = transformers.AutoModel.from_pretrained(repo, **trust).eval()
writer = transformers.AutoModelForMultimodalLM.from_pretrained(repo, **trust).eval()
processor = transformers.AutoProcessor.from_pretrained(repo, **trust)
for name, obj in (("model", model), ("writer", writer), ("processor", processor), ("tokenizer", processor.tokenizer),
                  ("feature_extractor", processor.feature_extractor)):
    out["modules"][name] = type(obj).__module__ + "." + type(obj).__name__
out["bos"] = [processor.tokenizer.bos_token, processor.tokenizer.bos_token_id, model.config.bos_token_id]

with torch.no_grad():
    out["ids"], out["text"], out["rhythm"], out["probe"], out["projection"] = [], [], [], [], []
    for signal in signals:
        batch = processor(ecg=signal, sampling_rate=500, leads=leads, return_tensors="pt")
        ids = writer.generate(
            input_values=batch["input_values"], ecg_attention_mask=batch["ecg_attention_mask"],
            lead_mask=batch["lead_mask"], max_new_tokens=args["max_new_tokens"],
        )
        out["ids"].append(ids[0].tolist())
        out["text"].append(processor.batch_decode(ids)[0])
        if remote:  # the embeddings the ecg-feature-extraction pipeline gives, by hand
            tower = model.ecg_encoder(batch["input_values"], attention_mask=batch["ecg_attention_mask"],
                                      lead_mask=batch["lead_mask"])
            features = model.get_ecg_features(batch["input_values"], batch["ecg_attention_mask"], batch["lead_mask"])
            out["rhythm"].append(tower.rhythm_embeds[0].tolist())
            out["probe"].append(tower.pooler_output[0].tolist())
            out["projection"].append(F.normalize(features.pooler_output, dim=-1)[0].tolist())

    if remote:  # the zero-shot pipeline's scores, by hand (ecg_hub.pipelines.class_text_embeddings, ...)
        prompts = args["class_prompts"]
        tokens = processor(text=[p for ps in prompts for p in ps], return_tensors="pt")
        text = F.normalize(model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output.float(), dim=-1)
        classes, start = [], 0
        for ps in prompts:
            classes.append(text[start:start + len(ps)].mean(0))
            start += len(ps)
        classes = F.normalize(torch.stack(classes), dim=-1)
        scale = min(float(model.logit_scale.detach().exp()), float(model.config.max_logit_scale))
        out["zero_shot"] = []
        for signal in signals:
            batch = processor(ecg=signal, sampling_rate=500, leads=leads, return_tensors="pt")
            features = model.get_ecg_features(batch["input_values"], batch["ecg_attention_mask"], batch["lead_mask"])
            cosine = F.normalize(features.pooler_output.float(), dim=-1) @ classes.t()
            out["zero_shot"].append((scale * cosine).softmax(-1)[0].tolist())

if not remote:  # the ecg_hub pipelines, from the Hub id
    common = {"sampling_rate": 500, "leads": leads, "inference_dtype": "float32"}
    classifier = transformers.pipeline("zero-shot-ecg-classification", model=repo)
    results = classifier(signals, candidate_labels=labels, class_descriptions=args["descriptions"], **common)
    out["zero_shot"] = [[next(r["score"] for r in result if r["label"] == label) for label in labels] for result in results]
    embedder = transformers.pipeline("ecg-feature-extraction", model=repo)
    for key, embedding in (("rhythm", "rhythm"), ("probe", "probe"), ("projection", None)):
        kwargs = {"embedding": embedding} if embedding else {}
        out[key] = [embedder(signal, **kwargs, **common) for signal in signals]
    report_writer = transformers.pipeline("ecg-report-generation", model=repo)
    out["pipeline_text"] = [r[0]["generated_text"] for r in report_writer(signals, max_new_tokens=args["max_new_tokens"], **common)]
    for name, pipe in (("zero_shot_pipeline", classifier), ("feature_pipeline", embedder), ("report_pipeline", report_writer)):
        out["modules"][name] = type(pipe.model).__module__ + "." + type(pipe.model).__name__

out["ecg_hub_imported"] = any(name == "ecg_hub" or name.startswith("ecg_hub.") for name in sys.modules)
print("CHILD-OUTPUT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def melp_folder(tmp_path_factory):
    """``(folder, model, processor)``: a tiny random MelpModel and its processor, saved with
    save_pretrained (the tokenizer trained on a few reports; ``[BOS]`` added by the processor)."""
    words = ["an ECG showing", "electrocardiogram with", "slow heart rate", "normal ecg"]
    tokenizer = train_report_tokenizer(REPORTS * 3 + words * 3, vocab_size=160)
    processor = MelpProcessor(EcgFeatureExtractor.from_preset("melp", num_samples=500), tokenizer, max_text_length=32)
    tokenizer = processor.tokenizer
    config = tiny_melp_config(
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64),
        decoder_config=MelpDecoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.bos_token_id, sentence_separator_token_id=tokenizer.convert_tokens_to_ids("."),
    )
    torch.manual_seed(0)
    model = MelpModel(config).eval()
    folder = tmp_path_factory.mktemp("melp-hub") / "melp"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


@pytest.fixture(scope="module")
def signals() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((12, 500)).astype(np.float32) for _ in range(2)]


def _local_pipeline(task: str, model, processor):
    """An ecg_hub pipeline on in-memory objects (the Hub children load theirs by repo id)."""
    return pipeline(
        task, model=model, processor=processor, feature_extractor=processor.feature_extractor, tokenizer=processor.tokenizer
    )


def _local_expectations(folder: Path, model: MelpModel, processor: MelpProcessor, signals) -> dict:
    """What the local (ecg_hub) model gives, record by record: the in-memory MelpModel for the
    zero-shot pipeline and the embeddings, MelpForConditionalGeneration from the folder for the text."""
    writer = MelpForConditionalGeneration.from_pretrained(folder).eval()
    common = {"sampling_rate": 500, "leads": LEADS, "inference_dtype": "float32"}
    classifier = _local_pipeline("zero-shot-ecg-classification", model, processor)
    results = classifier(signals, candidate_labels=LABELS, class_descriptions=DESCRIPTIONS, **common)
    expected = {
        "zero_shot": [[next(r["score"] for r in result if r["label"] == label) for label in LABELS] for result in results],
        "ids": [], "text": [], "rhythm": [], "probe": [], "projection": [],
    }
    with torch.no_grad():
        for signal in signals:
            batch = processor(ecg=signal, sampling_rate=500, leads=LEADS, return_tensors="pt")
            tower = model.ecg_encoder(batch["input_values"], attention_mask=batch["ecg_attention_mask"], lead_mask=batch["lead_mask"])
            expected["rhythm"].append(tower.rhythm_embeds[0])
            expected["probe"].append(tower.pooler_output[0])
            expected["projection"].append(F.normalize(tower.rhythm_embeds, dim=-1)[0])
            ids = writer.generate(
                input_values=batch["input_values"], ecg_attention_mask=batch["ecg_attention_mask"],
                lead_mask=batch["lead_mask"], max_new_tokens=MAX_NEW_TOKENS,
            )
            expected["ids"].append(ids[0].tolist())
            expected["text"].append(processor.batch_decode(ids)[0])
    # The local pipelines agree with the direct calls above (so the children may use either).
    report_writer = _local_pipeline("ecg-report-generation", writer, processor)
    assert [r[0]["generated_text"] for r in report_writer(signals, max_new_tokens=MAX_NEW_TOKENS, **common)] == expected["text"]
    embedder = _local_pipeline("ecg-feature-extraction", model, processor)
    for signal, projection in zip(signals, expected["projection"]):
        torch.testing.assert_close(embedder(signal, return_tensors=True, **common), projection, rtol=0, atol=ATOL)
    assert all(len(ids) > 1 and ids[0] == model.config.bos_token_id for ids in expected["ids"])
    return expected


def _run_child(tmp_path: Path, mode: str, signals, hf_home: Path) -> dict:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", OMP_NUM_THREADS="1")
    args = {
        "mode": mode, "repo": REPO_ID, "leads": LEADS, "labels": LABELS, "descriptions": DESCRIPTIONS,
        "class_prompts": build_class_prompts(LABELS, DESCRIPTIONS), "max_new_tokens": MAX_NEW_TOKENS,
        "signals": [s.tolist() for s in signals],
    }
    args_file = tmp_path / f"args-{mode}.json"
    args_file.write_text(json.dumps(args))
    process = subprocess.run(
        [sys.executable, str(script), str(args_file)], check=False, cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    line = next(line for line in process.stdout.splitlines() if line.startswith("CHILD-OUTPUT "))
    assert (hf_home / "hub" / ("models--" + REPO_ID.replace("/", "--"))).is_dir()  # downloaded into its own cache
    return json.loads(line[len("CHILD-OUTPUT "):])


def _max_diff(got, expected) -> float:
    return max(
        float((torch.as_tensor(g, dtype=torch.float32) - torch.as_tensor(e, dtype=torch.float32)).abs().max())
        for g, e in zip(got, expected, strict=True)
    )


@pytest.fixture(scope="module")
def published(hub_server, melp_folder):
    folder, _, _ = melp_folder
    api = HfApi()
    api.create_repo(REPO_ID, exist_ok=True)
    api.upload_folder(repo_id=REPO_ID, folder_path=str(folder), commit_message="tiny MELP")
    repo = hub_server.state.repos[("model", REPO_ID)]
    return set(repo.commits[repo.branches["main"]].files)


def test_the_folder_holds_the_code_and_auto_maps_of_all_three_uses(melp_folder, published):
    folder, model, processor = melp_folder
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_melp.MelpConfig",
        "AutoModel": "modeling_melp.MelpModel",
        "AutoModelForMultimodalLM": "modeling_melp.MelpForConditionalGeneration",
        "AutoModelForSequenceClassification": "modeling_melp.MelpForSequenceClassification",
    }
    assert json.loads((folder / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_melp.MelpProcessor"
    }
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["bos_token"] == "[BOS]" and processor.tokenizer.bos_token_id == model.config.bos_token_id
    for name in CODE_FILES:
        assert (folder / name).read_bytes() == (Path(ecg_hub.modeling.__file__).parent / name).read_bytes(), name
    assert not list(folder.glob("*etp*")) and not list(folder.glob("*jepa*"))  # only MELP's code
    assert CODE_FILES | {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                         "tokenizer_config.json"} <= published


@pytest.mark.parametrize("mode", ["ecg_hub", "remote"])
def test_a_fresh_process_from_the_hub_gives_the_local_scores_text_and_embeddings(
    melp_folder, published, signals, tmp_path, mode
):
    folder, model, processor = melp_folder
    expected = _local_expectations(folder, model, processor, signals)
    assert not (tmp_path / "empty-cache").exists()
    got = _run_child(tmp_path, mode, signals, tmp_path / "empty-cache")

    prefix = "transformers_modules." if mode == "remote" else "ecg_hub.modeling."
    assert all(name.startswith(prefix) for name in got["modules"].values() if "Tokenizers" not in name), got["modules"]
    assert got["modules"]["model"].endswith(".MelpModel") and got["modules"]["writer"].endswith(".MelpForConditionalGeneration")
    assert got["modules"]["processor"].endswith(".MelpProcessor")
    assert got["ecg_hub_imported"] == (mode == "ecg_hub")
    assert got["bos"] == ["[BOS]", model.config.bos_token_id, model.config.bos_token_id]

    assert got["ids"] == expected["ids"] and got["text"] == expected["text"]
    if mode == "ecg_hub":
        assert got["pipeline_text"] == expected["text"]
    diffs = {key: _max_diff(got[key], expected[key]) for key in ("zero_shot", "rhythm", "probe", "projection")}
    assert max(diffs.values()) <= ATOL, diffs


def test_ecg_hub_embed_writes_the_default_embedding_of_a_melp_folder(melp_folder, tmp_path):
    from ecg_hub.cli import main

    folder, model, processor = melp_folder
    dataset = make_synthetic_dataset(num_records=3, seed=1, sampling_rate=500, duration_s=1.0)
    dataset.save_to_disk(str(tmp_path / "records"))
    out = tmp_path / "embeddings.parquet"
    argv = ["embed", str(folder), "--dataset", str(tmp_path / "records"), "--out", str(out),
            "--batch-size", "2", "--dtype", "float32", "--no-progress"]
    assert main(argv) == 0
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"ecg_hub"])
    assert meta["model_class"] == "MelpModel" and meta["embedding"] == "projection" and meta["normalize"] is True
    assert meta["num_written"] == 3 and meta["dim"] == model.config.projection_dim
    rows = list(datasets.load_from_disk(str(tmp_path / "records")).with_format("numpy", columns=["signal"], output_all_columns=True))
    embedder = _local_pipeline("ecg-feature-extraction", model, processor)
    expected = np.array(embedder(rows, inference_dtype="float32"))
    # 1e-5, not 1e-6: a batch of two rounds differently from one record in the conv front-end, and
    # this tiny random tower's LayerNorm magnifies it (measured 6.5e-7 here, up to 4e-6 on other
    # records; with batch size 1 the two are bit-identical).
    np.testing.assert_allclose(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), expected, rtol=0, atol=1e-5)
