"""Publishing ecg-hub checkpoints to the Hugging Face Hub and getting them back.

A published repo holds everything needed to use the checkpoint:

- ``config.json`` + ``model.safetensors`` (safetensors only; pickles are never written or read);
- ``preprocessor_config.json`` (the :class:`EcgFeatureExtractor` input contract: leads, sampling
  rate, length, filter, scaling) or ``processor_config.json`` + tokenizer files for ECG-text models;
- the model code as Hub *remote code* (``auto_map`` in the configs, the ``modeling/`` files the
  classes are defined in and their relative imports, and a ``requirements.txt``), so a user with
  only ``transformers`` installed can load it with ``trust_remote_code=True``;
- ``README.md``: a model card rendered from ``model_cards/<family>.md`` whose ``model-index``
  metrics are read from the results JSON written by ``ecg-hub evaluate``, never typed by hand.

The project's cardiology text model (family ``cardiology_text``, a plain ``transformers`` masked LM
such as ``BertForMaskedLM``) is published the same way without remote code: its weights, its
tokenizer files and a card from ``model_cards/cardiology_text.md`` with the held-out masked-token
accuracy and perplexity the pretraining run measured before and after (``summary.json``) and the
corpus it was trained on (``ecg_hub_text_summary.json`` of the recipe's corpus folder). It loads
with ``AutoModelForMaskedLM`` / ``AutoModel`` / ``AutoTokenizer`` and ``pipeline("fill-mask")``.

Users who ``import ecg_hub`` never run remote code: importing registers every ecg-hub class with
the Auto classes, and ``transformers`` then prefers the installed code to the repo's copy.

A publish is **one commit** (``HfApi.create_commit`` with every file), so a failure at any point
leaves the remote branch exactly as it was.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import load_results

logger = logging.getLogger(__name__)

#: File patterns that hold pickled (or non-PyTorch) weights. They are never uploaded or downloaded.
UNSAFE_WEIGHT_PATTERNS = [
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.pkl",
    "*.pickle",
    "*.h5",
    "*.msgpack",
    "*.npz",
]

# Lower bounds written to the published requirements.txt (one comparison per line: transformers'
# `check_python_requirements` only parses `name<op>version`). Remote code may import only these.
_REMOTE_CODE_REQUIREMENTS = {
    "torch": "torch>=2.4",
    "transformers": "transformers>=5.0",
    "huggingface_hub": "huggingface-hub>=1.0",
    "numpy": "numpy>=1.26",
    "scipy": "scipy>=1.11",
}

_PRETTY_DATASETS = {
    "ptbxl": "PTB-XL",
    "cpsc2018": "CPSC2018",
    "csn": "Chapman-Shaoxing-Ningbo (CSN)",
    "code15": "CODE-15%",
    "mimic_iv_ecg": "MIMIC-IV-ECG",
    "synthetic": "ecg-hub synthetic ECGs",
}
_PRETTY_METRICS = {
    "macro_auroc": "Macro AUROC",
    "micro_auroc": "Micro AUROC",
    "macro_auprc": "Macro AUPRC",
    "fmax": "Fmax",
    "macro_f1": "Macro F1",
}
_TASK_TYPE_BY_PROTOCOL = {"zero-shot": "zero-shot-ecg-classification"}


# --------------------------------------------------------------------------------------------
# The catalogue of checkpoints the project publishes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubCheckpoint:
    """One checkpoint in the ecg-hub catalogue (a family's ``CheckpointEntry`` with its family).

    Attributes:
        repo_id: Hub repo id (``"ecg-hub/ecg-jepa-multiblock"``).
        family: model family (``"ecg_jepa"``, ``"etp"``, ...).
        input_preset: name of the :meth:`EcgFeatureExtractor.from_preset` input contract it expects
            (None for the text model).
        architecture: the ``transformers`` class ``from_pretrained`` builds from it.
        description: one line about what it is.
        status: ``published`` (weights on the Hub) or ``planned`` (not uploaded yet).
    """

    repo_id: str
    family: str
    input_preset: str | None
    architecture: str
    description: str
    status: str


def list_checkpoints(family: str | None = None) -> list[HubCheckpoint]:
    """The checkpoints of the ecg-hub catalogue (optionally of one ``family``), as the families
    declare them, with each one's input preset and status (``planned`` ones are not uploaded yet:
    ``ecg-hub download --list`` marks them so, and ``ecg-hub download`` of one stops with a message
    saying it is planned, before asking the Hub)."""
    from .modeling.registry import families, get_family

    chosen = [get_family(family)] if family is not None else list(families().values())
    return [
        HubCheckpoint(c.repo_id, f.name, c.input_preset, c.architecture, c.description, c.status)
        for f in chosen
        for c in f.checkpoints
    ]


#: The catalogue under its first name.
list_pretrained_checkpoints = list_checkpoints


# --------------------------------------------------------------------------------------------
# Results JSON (written by `ecg-hub evaluate`) -> model-index
# --------------------------------------------------------------------------------------------


# load_results (the one reader of the results JSON) lives in ecg_hub.results; imported above.


def _metric_config(entry: Mapping[str, Any]) -> str:
    return f"{entry['protocol']}, fraction={entry['fraction']}"


def _labels_used(entry: Mapping[str, Any]) -> str:
    """Human text for the share of training labels an entry used (zero-shot uses none)."""
    if entry["protocol"] == "zero-shot" or not entry["fraction"]:
        return "no labels (zero-shot)"
    return f"{entry['fraction']:.0%} of training labels"


def eval_results_from_results(results: Mapping[str, Any]) -> list:
    """One ``huggingface_hub.EvalResult`` per (result entry, metric) of a results JSON.

    ``metric_config`` is ``"<protocol>, fraction=<fraction>"`` and ``metric_args`` carries the seeds
    and the standard deviation, so every entry of the JSON can be found again in the card.
    """
    from huggingface_hub import EvalResult

    dataset = results["dataset"]
    dataset_name = f"{_PRETTY_DATASETS.get(dataset['name'], dataset['name'])} ({dataset['label_set']})"
    eval_results = []
    for entry in results["results"]:
        protocol = entry["protocol"]
        task_type = _TASK_TYPE_BY_PROTOCOL.get(protocol, "ecg-classification")
        for metric, value in entry["metrics"].items():
            args: dict[str, Any] = {"protocol": protocol, "fraction": entry["fraction"]}
            if entry.get("seeds") is not None:
                args["seeds"] = list(entry["seeds"])
            if metric in (entry.get("metrics_std") or {}):
                args["std"] = entry["metrics_std"][metric]
            eval_results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=f"ECG classification ({protocol}, {_labels_used(entry)})",
                    dataset_type=dataset["name"],
                    dataset_name=dataset_name,
                    dataset_config=dataset["label_set"],
                    dataset_split=entry["split"],
                    metric_type=metric,
                    metric_name=_PRETTY_METRICS.get(metric, metric),
                    metric_value=value,
                    metric_config=_metric_config(entry),
                    metric_args=args,
                )
            )
    return eval_results


def _results_markdown(results: Mapping[str, Any] | None) -> str:
    if results is None:
        return (
            "No evaluation results were published with this checkpoint. Run `ecg-hub evaluate` and "
            "publish again with `--results results.json` to add them."
        )
    dataset = results["dataset"]
    pretty = _PRETTY_DATASETS.get(dataset["name"], dataset["name"])
    metric_names = list(dict.fromkeys(m for e in results["results"] for m in e["metrics"]))
    lines = [
        f"Computed by `ecg-hub evaluate` (ecg-hub {results.get('ecg_hub_version', '?')}) on **{pretty}**, "
        f"label set `{dataset['label_set']}`"
        + (f" ({len(dataset['class_names'])} classes)" if dataset.get("class_names") else "")
        + ". Values are the mean over seeds, ± the standard deviation where several seeds ran, "
        "[95 % bootstrap interval] where one seed ran.",
    ]
    if isinstance(dataset.get("split_records"), dict):
        lines[0] += (
            " Records per split: " + ", ".join(f"{k} {v}" for k, v in dataset["split_records"].items()) + "."
        )
    if isinstance(dataset.get("split_sha256"), dict):
        lines[0] += (
            " Split fingerprints (SHA-256 of the sorted record ids): "
            + ", ".join(f"{k} `{str(v)[:16]}…`" for k, v in dataset["split_sha256"].items())
            + "."
        )
    lines += [
        "",
        "| Protocol | Labels used | Split | Seeds | "
        + " | ".join(_PRETTY_METRICS.get(m, m) for m in metric_names)
        + " |",
        "|---|---|---|---|" + "---|" * len(metric_names),
    ]
    for entry in results["results"]:
        cells = []
        for metric in metric_names:
            if metric not in entry["metrics"]:
                cells.append("–")
                continue
            cell = f"{entry['metrics'][metric]:.4f}"
            std = (entry.get("metrics_std") or {}).get(metric)
            if std is not None and len(entry.get("seeds") or []) > 1:
                cell += f" ± {std:.4f}"
            interval = (entry.get("metrics_ci95") or {}).get(metric)
            if isinstance(interval, (list, tuple)) and len(interval) == 2:
                cell += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
            cells.append(cell)
        seeds = ", ".join(str(s) for s in entry.get("seeds") or []) or "–"
        used = _labels_used(entry).replace(" of training labels", "")
        lines.append(
            f"| {entry['protocol']} | {used} | {entry['split']} | {seeds} | " + " | ".join(cells) + " |"
        )
    for entry in results["results"]:
        per_class = entry.get("per_class_auroc")
        if per_class:
            lines += [
                "",
                f"Per-class AUROC ({entry['protocol']}, {_labels_used(entry)}, {entry['split']} split):",
                "",
                "| " + " | ".join(per_class) + " |",
                "|" + "---|" * len(per_class),
                "| " + " | ".join(f"{v:.4f}" for v in per_class.values()) + " |",
            ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def _input_markdown(feature_extractor: Any) -> str:
    """The input contract, read from the saved feature extractor (never restated by hand)."""
    fe = feature_extractor
    leads = list(getattr(fe, "leads", []))
    num_samples = getattr(fe, "num_samples", None)
    rate = getattr(fe, "sampling_rate", None)
    length = (
        f"{num_samples} samples ({num_samples / rate:g} s)"
        if num_samples and rate
        else "variable (padded per batch)"
    )
    bandpass = getattr(fe, "bandpass", None)
    filt = (
        f"Butterworth band-pass {bandpass[0]:g}–{bandpass[1]:g} Hz, order {getattr(fe, 'filter_order', '?')}, zero-phase"
        if bandpass
        else "none"
    )
    scaling = {
        "none": "none: physical units (mV) go in unscaled",
        "zscore_lead": "per-lead z-score over the window",
        "minmax_record": "whole-record min-max to [0, 1] (one min and one max over all leads)",
    }.get(getattr(fe, "normalization", None), str(getattr(fe, "normalization", "?")))
    rows = [
        ("Leads", f"{len(leads)}, in this order: {', '.join(leads)}"),
        (
            "Sampling rate",
            f"{rate} Hz (other rates are resampled, method `{getattr(fe, 'resample_method', '?')}`)",
        ),
        (
            "Length",
            f"{length}; longer records are cropped (`{getattr(fe, 'crop', '?')}`), shorter ones zero-padded and masked",
        ),
        ("Units", "millivolts (mV); pass `units=` for µV or V sources"),
        ("Filter", filt),
        ("Scaling", scaling),
        (
            "Missing leads",
            (
                "III, aVR, aVL, aVF derived from I and II when absent; "
                if getattr(fe, "derive_limb_leads", False)
                else ""
            )
            + (
                "others zero-filled and flagged in `lead_mask`"
                if getattr(fe, "missing_leads", "zero") == "zero"
                else "an error"
            ),
        ),
        ("Model inputs", ", ".join(f"`{n}`" for n in getattr(fe, "model_input_names", []))),
    ]
    table = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(table)


def _architecture_markdown(model: Any) -> str:
    config = model.config
    fields = [
        ("Class", f"`{type(model).__name__}` (`model_type` = `{config.model_type}`)"),
        ("Parameters", f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"),
    ]
    for name, label in (
        ("hidden_size", "Width"),
        ("num_hidden_layers", "Depth"),
        ("num_attention_heads", "Attention heads"),
        ("patch_size", "Patch size (samples)"),
        ("projection_dim", "Projection dimension"),
    ):
        value = getattr(config, name, None)
        if value is not None:
            fields.append((label, str(value)))
    if "ForSequenceClassification" in type(model).__name__:
        fields.append(
            ("Output classes", f"{config.num_labels}: " + ", ".join(str(v) for v in config.id2label.values()))
        )
        fields.append(("Problem type", str(getattr(config, "problem_type", None))))
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in fields])


def _training_markdown(recipe_text: str | None) -> str:
    if recipe_text is None:
        return (
            "The training recipe was not recorded with this checkpoint (no `recipe.yaml` was published with it). "
            "The method's reference training setup is described above."
        )
    return (
        "The recipe this checkpoint was trained with (`recipe.yaml`, torchtune style):\n\n```yaml\n"
        + recipe_text.rstrip()
        + "\n```"
    )


def _card_template(family: str) -> str:
    from .modeling.registry import get_family

    template = get_family(family).model_card
    return (importlib.resources.files("ecg_hub.model_cards") / template).read_text(encoding="utf-8")


def render_model_card(
    *,
    repo_id: str,
    family: str,
    model: Any,
    preprocessor: Any,
    results: Mapping[str, Any] | None = None,
    recipe_text: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
):
    """Render ``model_cards/<family>.md`` into a ``huggingface_hub.ModelCard``.

    Args:
        repo_id: the repo the card is for (used in the usage snippets and as ``model-index`` name).
        family: model family (selects the template).
        model: the loaded ``PreTrainedModel`` (architecture table, parameter count).
        preprocessor: its feature extractor or processor (the input-contract table).
        results: a results JSON from ``ecg-hub evaluate`` (see :func:`load_results`), or ``None``.
        recipe_text: the training recipe YAML, if one was saved with the checkpoint.
        license: Hub licence id of the weights.
        base_model: repo id this checkpoint was fine-tuned from, if any.
    """
    from huggingface_hub import ModelCard, ModelCardData

    feature_extractor = getattr(preprocessor, "feature_extractor", preprocessor)
    is_classifier = "ForSequenceClassification" in type(model).__name__
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        tags=["ecg-hub", "ecg", "electrocardiogram", "time-series", family.replace("_", "-")],
        pipeline_tag=None if is_classifier else "feature-extraction",
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results_from_results(results) if results is not None else None,
    )
    tokenizer = getattr(preprocessor, "tokenizer", None)
    card = ModelCard.from_template(
        card_data,
        template_str=_card_template(family),
        repo_id=repo_id,
        model_class=type(model).__name__,
        model_type=model.config.model_type,
        config=model.config,  # for family-specific fields a template shows (e.g. a codebook size)
        is_classifier=is_classifier,
        auto_class="AutoModelForSequenceClassification" if is_classifier else "AutoModel",
        preprocessor_class="AutoProcessor" if tokenizer is not None else "AutoFeatureExtractor",
        tokenizer_class=type(tokenizer).__name__ if tokenizer is not None else None,
        sampling_rate=feature_extractor.sampling_rate,
        leads=list(getattr(feature_extractor, "leads", [])),
        architecture_section=_architecture_markdown(model),
        input_section=_input_markdown(feature_extractor),
        training_section=_training_markdown(recipe_text),
        results_section=_results_markdown(results),
        license_id=license,
    )
    return card


# --------------------------------------------------------------------------------------------
# Exporting a checkpoint folder with remote code
# --------------------------------------------------------------------------------------------


def _check_remote_code_imports(folder: Path) -> list[str]:
    """Third-party imports of the copied code files, as requirement lines. Raises ValueError on an
    import that a plain ``transformers`` install cannot satisfy (e.g. ``ecg_hub`` itself)."""
    needed: dict[str, str] = {}
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        # Optional imports (inside `try:` or `if TYPE_CHECKING:`) are not requirements, as in
        # transformers' own `check_imports`.
        optional = {
            id(inner)
            for block in ast.walk(tree)
            if isinstance(block, ast.Try)
            or (isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test))
            for statement in block.body
            for inner in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if top not in _REMOTE_CODE_REQUIREMENTS:
                    raise ValueError(
                        f"remote code file {path.name} imports {name!r}; Hub remote code may import only "
                        f"{sorted(_REMOTE_CODE_REQUIREMENTS)}, the standard library and relative modules"
                    )
                needed[top] = _REMOTE_CODE_REQUIREMENTS[top]
    return [needed[k] for k in sorted(needed)]


def _registered_model_classes(config: Any) -> dict[str, type]:
    """Auto class name -> model class registered for ``type(config)`` (after ``import ecg_hub``)."""
    import transformers

    found = {}
    from .modeling.registry import AUTO_MODEL_CLASSES

    for auto_name in AUTO_MODEL_CLASSES:
        auto_cls = getattr(transformers, auto_name)
        with contextlib.suppress(KeyError, ValueError):
            found[auto_name] = auto_cls._model_mapping[type(config)]
    return found


def _load_checkpoint(model_dir: Path):
    """Load (model, preprocessor) from a saved ecg-hub checkpoint folder with the registered classes."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor

    from .modeling import register_all

    register_all()  # the ecg-hub classes with the Auto classes (idempotent; import ecg_hub does it too)

    if not (model_dir / "config.json").is_file():
        raise ValueError(f"checkpoint {model_dir}: no config.json (expected a save_pretrained folder)")
    weight_files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not weight_files:
        pickles = sorted({p.name for pattern in UNSAFE_WEIGHT_PATTERNS for p in model_dir.glob(pattern)})
        raise ValueError(
            f"checkpoint {model_dir}: no *.safetensors weights"
            + (
                f" (found {pickles}: pickled weights are never published; re-save with save_pretrained)"
                if pickles
                else ""
            )
        )
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    from .modeling.registry import families, family_of_model_type

    declared = family_of_model_type(config.model_type)
    if declared is None:
        known = sorted(t for f in families().values() for t in f.model_types)
        raise ValueError(
            f"checkpoint {model_dir}: config.json model_type {config.model_type!r} is not an ecg-hub model "
            f"(known: {known})"
        )
    family = declared.name
    architectures = getattr(config, "architectures", None) or []
    registered = {cls.__name__: cls for cls in _registered_model_classes(config).values()}
    if not architectures or architectures[0] not in registered:
        raise ValueError(
            f"checkpoint {model_dir}: config.json 'architectures' is {architectures}; expected one of the classes "
            f"registered for {config.model_type!r}: {sorted(registered)}"
        )
    model_cls = registered[architectures[0]]
    # The base loader, not a family's from_pretrained override: overrides adjust training state
    # (e.g. ETP re-freezes layers) and may not pass the loading report through; weights are the same.
    from transformers import PreTrainedModel

    model, info = PreTrainedModel.from_pretrained.__func__(
        model_cls, model_dir, use_safetensors=True, output_loading_info=True
    )
    problems = {
        k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        raise ValueError(f"checkpoint {model_dir}: weights do not match {model_cls.__name__}: {problems}")

    if (model_dir / "processor_config.json").is_file():
        preprocessor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
    elif (model_dir / "preprocessor_config.json").is_file():
        preprocessor = AutoFeatureExtractor.from_pretrained(model_dir, trust_remote_code=False)
    else:
        raise ValueError(
            f"checkpoint {model_dir}: no preprocessor_config.json or processor_config.json. The input contract "
            "must travel with the weights: save the EcgFeatureExtractor (or processor) into the folder, e.g. "
            "EcgFeatureExtractor.from_preset('ecg_jepa').save_pretrained(folder)"
        )
    return model, preprocessor, family


def find_recipe(model_dir: str | os.PathLike) -> Path | None:
    """The training recipe saved with a checkpoint: ``DIR/recipe.yaml``, or ``DIR/../recipe.yaml``
    when ``DIR`` is the ``model`` folder of an ``ecg-hub pretrain`` output directory."""
    model_dir = Path(model_dir)
    candidates = [model_dir / "recipe.yaml"]
    if model_dir.resolve().name == "model":
        candidates.append(model_dir.resolve().parent / "recipe.yaml")
    return next((c for c in candidates if c.is_file()), None)


def export_checkpoint(
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    repo_id: str,
    results: Mapping[str, Any] | None = None,
    recipe: str | os.PathLike | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
) -> list[str]:
    """Write the folder a publish uploads: weights, configs, remote code, requirements, model card.

    The checkpoint in ``model_dir`` is loaded with the installed (registered) ecg-hub classes,
    which checks that every weight matches the architecture, then saved again with
    the classes registered for their Auto classes (as ``import ecg_hub`` leaves them), so
    ``transformers`` copies the defining modules (and their relative imports) and writes
    ``auto_map``, which also names every other Auto class registered for the config whose class
    lives in the copied files (e.g. ``AutoModel`` for a classifier).

    The training recipe (``recipe``, else :func:`find_recipe`) is copied as ``recipe.yaml`` and
    shown in the card. ``output_dir`` must be empty or absent.

    Returns the relative paths written, sorted.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"export folder {output_dir} is not empty; everything in it would be published")
    if _is_text_checkpoint(model_dir):
        return _export_text_checkpoint(
            model_dir, output_dir, repo_id=repo_id, recipe=recipe, license=license, base_model=base_model
        )
    model, preprocessor, family = _load_checkpoint(model_dir)
    config = model.config

    # Every ecg-hub class is registered for its Auto class at import (registry.register_families), so
    # save_pretrained copies the defining modules and writes auto_map (completed by
    # registry.complete_auto_map); here the result is only checked.
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    preprocessor.save_pretrained(output_dir)
    auto_map = json.loads((output_dir / "config.json").read_text(encoding="utf-8")).get("auto_map") or {}
    if "AutoConfig" not in auto_map or not any(name in auto_map for name in _registered_model_classes(config)):
        raise RuntimeError(
            f"export of {model_dir}: config.json has auto_map {auto_map}; expected AutoConfig and the model's "
            "Auto class (is the family registered? import ecg_hub first)"
        )

    requirements = _check_remote_code_imports(output_dir)
    (output_dir / "requirements.txt").write_text(
        "# Python packages the remote code in this repo imports (transformers checks this file).\n"
        + "\n".join(requirements)
        + "\n",
        encoding="utf-8",
    )

    recipe_text = _copy_recipe(model_dir, output_dir, recipe)
    card = render_model_card(
        repo_id=repo_id,
        family=family,
        model=model,
        preprocessor=preprocessor,
        results=results,
        recipe_text=recipe_text,
        license=license,
        base_model=base_model,
    )
    card.save(output_dir / "README.md")
    return _written_files(model_dir, output_dir)


def _copy_recipe(model_dir: Path, output_dir: Path, recipe: str | os.PathLike | None) -> str | None:
    """Copy the training recipe (``recipe``, else :func:`find_recipe`) as ``recipe.yaml``; its text."""
    recipe_path = Path(recipe) if recipe is not None else find_recipe(model_dir)
    if recipe_path is None:
        return None
    if not recipe_path.is_file():
        raise ValueError(f"recipe {recipe_path}: no such file")
    shutil.copyfile(recipe_path, output_dir / "recipe.yaml")
    return recipe_path.read_text(encoding="utf-8")


def _written_files(model_dir: Path, output_dir: Path) -> list[str]:
    """The exported files, relative and sorted; refuses any pickled weight file."""
    written = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())
    unsafe = [p for p in written if any(Path(p).match(pattern) for pattern in UNSAFE_WEIGHT_PATTERNS)]
    if unsafe:  # save_pretrained only writes safetensors; this guards against a future change
        raise RuntimeError(f"export of {model_dir} produced non-safetensors weight files {unsafe}")
    return written


# --------------------------------------------------------------------------------------------
# The cardiology text model (a plain transformers masked LM, no remote code)
# --------------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def _is_text_checkpoint(model_dir: Path) -> bool:
    """A folder holding a transformers masked LM (not an ecg-hub model type) and its tokenizer."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return False
    config = json.loads(config_path.read_text(encoding="utf-8"))
    from .modeling.registry import family_of_model_type

    if family_of_model_type(str(config.get("model_type"))) is not None:
        return False
    architectures = config.get("architectures") or []
    return bool(architectures) and str(architectures[0]).endswith("ForMaskedLM")


def _run_summary(model_dir: Path) -> dict[str, Any] | None:
    """``summary.json`` of the pretraining run a ``model`` folder came from, if there is one."""
    for candidate in (model_dir / "summary.json", model_dir.resolve().parent / "summary.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    return None


def _recipe_corpus_summary(recipe: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``ecg-hub text prepare`` summary of the corpus folder the recipe's dataset reads."""
    dataset = recipe.get("dataset") or {}
    path = dataset.get("path") if isinstance(dataset, Mapping) else None
    summary_path = Path(str(path)) / "ecg_hub_text_summary.json" if path else None
    if summary_path is None or not summary_path.is_file():
        return None
    return json.loads(summary_path.read_text(encoding="utf-8"))


def _recipe_base_model(recipe: Mapping[str, Any]) -> str | None:
    """The Hub id the recipe's model started from (``pretrained_model_name_or_path`` as a string)."""
    model = recipe.get("model") or {}
    start = model.get("pretrained_model_name_or_path") if isinstance(model, Mapping) else None
    return start if isinstance(start, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", start) else None


def _held_out_markdown(summary: Mapping[str, Any] | None) -> str:
    evaluation = (summary or {}).get("evaluation") or {}
    initial, final = evaluation.get("initial"), evaluation.get("final")
    if not initial or not final or "perplexity" not in final:
        return (
            "No held-out evaluation was recorded with this checkpoint (the pretraining run had no "
            "`evaluation.split`)."
        )
    rows = [
        f"| | before pretraining (step 0) | after (step {final['step']}) |",
        "|---|---|---|",
        f"| Masked-token accuracy | {initial['masked_accuracy']:.4f} | {final['masked_accuracy']:.4f} |",
        f"| Perplexity | {initial['perplexity']:.2f} | {final['perplexity']:.2f} |",
        (
            f"| Held-out sequences / scored tokens | {initial['examples']:.0f} / {initial['scored_positions']:.0f} | "
            f"{final['examples']:.0f} / {final['scored_positions']:.0f} |"
        ),
    ]
    return (
        f"Measured by the pretraining loop on the corpus's `{evaluation.get('split')}` split (documents held out "
        "from training), with the same masks before and after:\n\n" + "\n".join(rows)
    )


def _corpus_markdown(corpus: Mapping[str, Any] | None) -> str:
    if corpus is None:
        return "The corpus summary was not found (the recipe's dataset folder has no `ecg_hub_text_summary.json`)."
    lines = ["| Source | Kind | Documents kept |", "|---|---|---|"]
    for source in corpus.get("sources", []):
        lines.append(f"| {source.get('source', source.get('path', '?'))} | {source.get('kind', '?')} | {source.get('documents', '?')} |")
    facts = [
        f"Documents: {corpus.get('documents')}, chunks: {corpus.get('chunks')}, tokens: {corpus.get('tokens')}.",
        f"Licence of the corpus: {corpus.get('licence') or 'not recorded'}.",
    ]
    if corpus.get("ecg_splits") is not None:
        facts.append(f"Reports of prepared ECG datasets were read from the splits {corpus.get('ecg_splits')} only.")
    return "\n".join(lines) + "\n\n" + " ".join(facts)


def _export_text_checkpoint(
    model_dir: Path,
    output_dir: Path,
    *,
    repo_id: str,
    recipe: str | os.PathLike | None,
    license: str,
    base_model: str | None,
) -> list[str]:
    """`export_checkpoint` for the cardiology text model: weights, tokenizer, recipe, card."""
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from .modeling.registry import text_family

    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(f"checkpoint {model_dir}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); a text model travels with its tokenizer")
    if not sorted(model_dir.glob("*.safetensors")):
        raise ValueError(f"checkpoint {model_dir}: no *.safetensors weights")
    model, info = AutoModelForMaskedLM.from_pretrained(model_dir, use_safetensors=True, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"checkpoint {model_dir}: weights do not match {type(model).__name__}: {problems}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"checkpoint {model_dir}: the tokenizer has {len(tokenizer)} tokens but config.vocab_size is "
            f"{model.config.vocab_size}"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    import yaml

    recipe_text = _copy_recipe(model_dir, output_dir, recipe)
    recipe_data = (yaml.safe_load(recipe_text) or {}) if recipe_text is not None else {}
    family = text_family()
    base_model = base_model or _recipe_base_model(recipe_data)
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        tags=["ecg-hub", "cardiology", "ecg", "clinical-text", "fill-mask"],
        pipeline_tag="fill-mask",
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
    )
    template = (importlib.resources.files("ecg_hub.model_cards") / family.model_card).read_text(encoding="utf-8")
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        repo_id=repo_id,
        model_class=type(model).__name__,
        model_type=model.config.model_type,
        base_model=base_model,
        paper=family.paper,
        mask_token=tokenizer.mask_token,
        architecture_section=_architecture_markdown(model),
        held_out_section=_held_out_markdown(_run_summary(model_dir)),
        corpus_section=_corpus_markdown(_recipe_corpus_summary(recipe_data)),
        training_section=_training_markdown(recipe_text),
        license_id=license,
    )
    card.save(output_dir / "README.md")
    return _written_files(model_dir, output_dir)


# --------------------------------------------------------------------------------------------
# Publish / download
# --------------------------------------------------------------------------------------------


class PublishError(RuntimeError):
    """A publish failed; the message says which step failed and the state of the remote branch."""


def _check_results_match(
    results: Mapping[str, Any], model_dir: Path, repo_id: str, results_path: Path
) -> None:
    evaluated = results["model"]
    if evaluated == repo_id:
        return
    candidate = Path(evaluated)
    if not candidate.is_absolute():
        candidate = results_path.parent / candidate if not candidate.exists() else candidate
    with contextlib.suppress(OSError):
        if candidate.exists() and os.path.samefile(candidate, model_dir):
            return
    raise ValueError(
        f"results JSON {results_path}: field 'model' is {evaluated!r}, which is neither the published folder "
        f"{str(model_dir)!r} nor the repo {repo_id!r}; the card's numbers must come from evaluating this checkpoint"
    )


def publish(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    results: str | os.PathLike | None = None,
    recipe: str | os.PathLike | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
):
    """Publish the checkpoint folder ``model_dir`` to the Hub repo ``repo_id`` in one commit.

    Args:
        model_dir: a ``save_pretrained`` folder of an ecg-hub model, holding safetensors weights and
            the feature extractor (``preprocessor_config.json``) or processor.
        repo_id: ``"org/name"``; the repo is created if needed.
        results: path of a results JSON written by ``ecg-hub evaluate`` for this checkpoint; its
            metrics become the card's ``model-index``.
        recipe: the training recipe YAML to publish (default: found next to the checkpoint).
        private: create the repo private (ignored when the repo exists).
        revision: branch to commit to (created from ``main`` if missing). Defaults to ``main``.
        commit_message, license, base_model: commit summary, licence id, fine-tuned-from repo id.
        token, endpoint: passed to ``huggingface_hub.HfApi``.

    Returns:
        ``huggingface_hub.CommitInfo`` of the commit (``.oid`` is the commit id to pin).

    Raises:
        ValueError: the checkpoint or the results JSON is not publishable (nothing was sent).
        PublishError: a Hub call failed; the message names the step and the remote state.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    model_dir = Path(model_dir)
    results_dict = None
    if results is not None:
        results_dict = load_results(results)
        _check_results_match(results_dict, model_dir, repo_id, Path(results))
    branch = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", branch):
        raise ValueError(f"revision {branch!r} looks like a commit id; publish commits to a branch name")
    api = HfApi(endpoint=endpoint, token=token)

    with tempfile.TemporaryDirectory(prefix="ecg-hub-publish-") as staging:
        files = export_checkpoint(
            model_dir,
            staging,
            repo_id=repo_id,
            results=results_dict,
            recipe=recipe,
            license=license,
            base_model=base_model,
        )
        step = "creating the repo"
        head = None
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if branch != "main":
                step = f"creating branch {branch!r}"
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            step = f"reading the current files of {repo_id}@{branch}"
            head = api.repo_info(repo_id, revision=branch).sha
            stale = [
                f
                for f in api.list_repo_files(repo_id, revision=head)
                if f not in files and f != ".gitattributes"
            ]
            operations = [
                CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(Path(staging) / f)) for f in files
            ]
            operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
            step = f"committing {len(files)} files" + (
                f" (and deleting {len(stale)} stale ones)" if stale else ""
            )
            commit = api.create_commit(
                repo_id,
                operations=operations,
                commit_message=commit_message or f"Publish {model_dir.name} with ecg-hub",
                revision=branch,
                parent_commit=head,  # refuse to commit over a concurrent change
            )
        except Exception as err:
            raise PublishError(
                f"publishing {model_dir} to {repo_id}@{branch} failed while {step}: {type(err).__name__}: {err}. "
                + _remote_state(api, repo_id, branch, head)
            ) from err
    logger.info("published %s to %s@%s as commit %s", model_dir, repo_id, branch, commit.oid)
    return commit


def _remote_state(api: Any, repo_id: str, branch: str, head_before: str | None) -> str:
    if head_before is None:
        return "No commit was attempted."
    try:
        head_now = api.repo_info(repo_id, revision=branch).sha
    except Exception as err:  # noqa: BLE001 - the Hub may be unreachable: say so rather than guess
        return (
            f"The remote state could not be checked ({type(err).__name__}); a Hub commit is all-or-nothing."
        )
    if head_now == head_before:
        return f"The remote repo is unchanged: {branch} is still at {head_before}."
    return f"Warning: {branch} moved from {head_before} to {head_now} meanwhile; check the repo."


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
) -> str:
    """Download a checkpoint into the Hugging Face cache (``HF_HOME``) and return its local folder.

    Pickled weight files are skipped (only safetensors are ever read). With ``HF_HUB_OFFLINE=1``
    the cached snapshot is returned without network access.
    """
    from huggingface_hub import snapshot_download

    return snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        endpoint=endpoint,
        ignore_patterns=UNSAFE_WEIGHT_PATTERNS,
    )
