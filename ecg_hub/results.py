"""The ecg-hub results JSON: one schema, one writer (:func:`write_results`), one reader (:func:`load_results`).

Written by ``ecg-hub evaluate`` (:func:`ecg_hub.evaluation.protocol.evaluate_model`) and by
``ecg-hub finetune`` (:func:`ecg_hub.training.finetune.run_finetune_recipe`); read by the Hub model
cards (:mod:`ecg_hub.hub`) and the results tables of both commands. The schema::

    {
      "ecg_hub_version": "0.1.0",
      "model": "<checkpoint folder or Hub id>",
      "init": "pretrained" | "random",              # optional: the weights the run started from
      "dataset": {
        "name", "path", "label_set", "class_names", "problem_type",
        "split_records": {split: records},          # the task's records per split
        "split_sha256": {split: sha256 of the sorted record ids}
      },
      "processor_config": {...},                     # optional: the feature extractor used
      "inference_dtype": "float32 (auto: ...)",     # optional: the precision of features and scores, and why
      "results": [                                   # one entry per (protocol, label fraction)
        {
          "protocol": "linear-probe" | "finetune" | "zero-shot",
          "fraction": 0.1, "split": "test", "seeds": [42, 43, 44],
          "train_records": 1745,                     # labelled training records per run (the largest)
          "metrics": {name: mean over seeds},        # macro_auroc, macro_auprc, fmax, macro_f1
          "metrics_std": {name: population std over seeds},
          "per_class_auroc": {class: mean},          # classes undefined in a run are left out ...
          "excluded_classes": [class, ...],          # ... and listed here
          "metrics_ci95": {name: [low, high]},       # single-seed entries with a bootstrap
          "runs": [{"seed", "train_records", "val_macro_auroc", "metrics", "ci95"?, ...}],
          "seconds": wall clock
        }
      ]
    }

Build entries with :func:`score_run` (one seed: test metrics, macro F1 at thresholds tuned on
validation, bootstrap interval) and :func:`aggregate_runs` (mean and std over seeds), the document
with :class:`ResultsDocument`.

``import ecg_hub`` imports this module (through :mod:`ecg_hub.hub`), so it stays light: the
metrics (scikit-learn) are imported by :func:`score_run` when it first runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecg_hub.data.splits import split_fingerprint
from ecg_hub.utils import write_json_atomic
from ecg_hub.version import __version__

__all__ = [
    "INITS",
    "SUMMARY_METRICS",
    "ResultsDocument",
    "TestScoreCapture",
    "aggregate_runs",
    "capture_test_scores",
    "capturing_test_scores",
    "dataset_section",
    "format_results_table",
    "note_test_scores",
    "load_results",
    "score_run",
    "validate_results",
    "write_results",
]

#: The metrics of every entry (means over seeds), in table order: the headline metrics
#: (``ecg_hub.evaluation.metrics.HEADLINE_METRICS``) and macro F1 at validation-tuned thresholds.
SUMMARY_METRICS = ("macro_auroc", "macro_auprc", "fmax", "macro_f1")

#: Values of the document's ``init``: the weights the evaluated runs started from.
INITS = ("pretrained", "random")


# --- building -----------------------------------------------------------------------------------


@dataclass
class TestScoreCapture:
    """The test labels and scores of every run scored inside :func:`capture_test_scores`, one entry
    per (protocol, fraction) cell: ``{"protocol", "fraction", "runs": [(seed, y_true, y_score)]}``.
    The results JSON keeps metrics only; this is how a caller (``ecg-hub benchmark``'s ROC curves)
    gets the predictions without scoring twice."""

    __test__ = False  # not a pytest class, despite its name

    entries: list[dict] = field(default_factory=list)
    pending: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)


_ACTIVE_CAPTURE: contextvars.ContextVar[TestScoreCapture | None] = contextvars.ContextVar(
    "ecg_hub_test_score_capture", default=None
)


@contextlib.contextmanager
def capture_test_scores():
    """Collect the test predictions of every run :func:`score_run` (or a zero-shot evaluation)
    scores and :func:`aggregate_runs` groups, while the context is open."""
    capture = TestScoreCapture()
    token = _ACTIVE_CAPTURE.set(capture)
    try:
        yield capture
    finally:
        _ACTIVE_CAPTURE.reset(token)


def capturing_test_scores() -> bool:
    """Whether a :func:`capture_test_scores` context is open (zero-shot then returns its scores)."""
    return _ACTIVE_CAPTURE.get() is not None


def note_test_scores(seed: int, test_labels, test_scores) -> None:
    """Hand one run's test labels and scores to the open capture, if any."""
    capture = _ACTIVE_CAPTURE.get()
    if capture is not None:
        capture.pending.append((int(seed), np.asarray(test_labels), np.asarray(test_scores)))


def score_run(
    seed: int,
    train_records: int,
    val_labels,
    val_scores,
    test_labels,
    test_scores,
    class_names: Sequence[str],
    *,
    bootstrap: int = 1000,
    **extra,
) -> dict:
    """One seed's run: test metrics (``classification_metrics``, with macro F1 at per-class
    thresholds tuned on validation), validation macro AUROC, and a ``bootstrap``-resample 95 %
    interval of the test metrics (seed 0; ``bootstrap=0``: none). ``extra`` fields (``epochs``,
    ``seconds``, ...) are added to the run."""
    from ecg_hub.evaluation.metrics import (
        bootstrap_confidence_intervals,
        classification_metrics,
        tune_f1_thresholds,
    )

    thresholds = tune_f1_thresholds(val_labels, val_scores)
    metrics = classification_metrics(test_labels, test_scores, class_names, f1_thresholds=thresholds)
    run = {"seed": int(seed), "train_records": int(train_records), "metrics": metrics}
    run["val_macro_auroc"] = classification_metrics(val_labels, val_scores, class_names)["macro_auroc"]
    if bootstrap:
        run["ci95"] = bootstrap_confidence_intervals(test_labels, test_scores, num_resamples=bootstrap, seed=0)
    run.update(extra)
    note_test_scores(seed, test_labels, test_scores)
    return run


def aggregate_runs(protocol: str, fraction: float, runs: list[dict], class_names: Sequence[str]) -> dict:
    """The results entry of one (protocol, fraction) cell: mean and population std over its runs
    (:func:`score_run`)."""
    capture = _ACTIVE_CAPTURE.get()
    if capture is not None:
        capture.entries.append({"protocol": protocol, "fraction": float(fraction), "runs": capture.pending})
        capture.pending = []
    keys = [k for k in SUMMARY_METRICS if all(k in r["metrics"] for r in runs)]
    result = {
        "protocol": protocol,
        "fraction": float(fraction),
        "split": "test",
        "seeds": [r["seed"] for r in runs],
        "train_records": max(int(r.get("train_records", 0)) for r in runs),
        "metrics": {k: float(np.mean([r["metrics"][k] for r in runs])) for k in keys},
        "metrics_std": {k: float(np.std([r["metrics"][k] for r in runs])) for k in keys},
    }
    # Classes undefined in any run (no positive or no negative test record) are left out and listed
    # under "excluded_classes": the model-card reader expects numbers only.
    per_class = {}
    for name in class_names:
        values = [r["metrics"]["per_class_auroc"].get(name) for r in runs]
        if all(v is not None for v in values):
            per_class[name] = float(np.mean(values))
    result["per_class_auroc"] = per_class
    if len(runs) == 1 and "ci95" in runs[0]:
        result["metrics_ci95"] = runs[0]["ci95"]
    result["excluded_classes"] = sorted({c for r in runs for c in r["metrics"]["excluded_classes"]})
    result["runs"] = [
        {k: v for k, v in r.items() if k != "metrics"}
        | {"metrics": {k: r["metrics"][k] for k in keys}}
        for r in runs
    ]
    result["seconds"] = float(sum(r.get("seconds", 0.0) for r in runs))
    return result


def dataset_section(
    splits: Mapping[str, Any],
    *,
    name: str,
    path: str,
    label_set: str,
    class_names: Sequence[str],
    problem_type: str,
) -> dict:
    """The document's ``dataset``: what was scored, with the records and a hash of their ids per
    split (``splits``: the task's records, see :func:`ecg_hub.data.splits.select_task_records`)."""
    return {
        "name": name,
        "path": str(path),
        "label_set": label_set,
        "class_names": list(class_names),
        "problem_type": problem_type,
        "split_records": {split: len(dataset) for split, dataset in splits.items()},
        "split_sha256": {split: split_fingerprint(dataset) for split, dataset in splits.items()},
    }


@dataclass
class ResultsDocument:
    """A results JSON being built (see the module docstring for the schema).

    Attributes:
        model: the evaluated checkpoint (folder or Hub id).
        dataset: :func:`dataset_section`.
        init: ``"pretrained"`` or ``"random"`` (``None``: not recorded).
        processor_config: the feature extractor's ``to_dict()`` (``None``: not recorded).
        inference_dtype: the precision features and scores were computed in, with why (``None``: not recorded).
        results: entries from :func:`aggregate_runs`.
        ecg_hub_version: the writing ecg-hub version.
    """

    model: str
    dataset: dict
    init: str | None = None
    processor_config: dict | None = None
    inference_dtype: str | None = None
    results: list[dict] = field(default_factory=list)
    ecg_hub_version: str = __version__

    def __post_init__(self):
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"init: expected one of {INITS} or None, got {self.init!r}")

    def to_dict(self) -> dict:
        document: dict[str, Any] = {"ecg_hub_version": self.ecg_hub_version, "model": str(self.model)}
        if self.init is not None:
            document["init"] = self.init
        document["dataset"] = self.dataset
        if self.processor_config is not None:
            document["processor_config"] = self.processor_config
        if self.inference_dtype is not None:
            document["inference_dtype"] = self.inference_dtype
        document["results"] = self.results
        return document

    def write(self, path: str | os.PathLike) -> dict:
        """:func:`write_results` of :meth:`to_dict`; returns the document written."""
        document = self.to_dict()
        write_results(path, document)
        return document


# --- checking, writing, reading -------------------------------------------------------------------


def validate_results(document: Any, source: str | os.PathLike = "<document>", *, allow_empty: bool = False) -> dict:
    """``document`` if it follows the results schema, else a ``ValueError`` naming ``source`` and the field.

    Checked: ``{"model", "dataset": {"name", "label_set", ...}, "results": [{"protocol",
    "fraction", "split", "seeds", "metrics": {name: float}, "metrics_std"?, "per_class_auroc"?}]}``
    with at least one entry (unless ``allow_empty``).
    """

    def fail(field: str, expectation: str) -> None:
        raise ValueError(f"results JSON {source}: field {field!r} {expectation}")

    if not isinstance(document, dict):
        fail("<root>", "must be an object")
    if not isinstance(document.get("model"), str):
        fail("model", "must be the evaluated model directory or repo id (a string)")
    dataset = document.get("dataset")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str):
        fail("dataset.name", "must be a string (e.g. 'ptbxl')")
    if not isinstance(dataset.get("label_set"), str):
        fail("dataset.label_set", "must be a string (e.g. 'superclass')")
    entries = document.get("results")
    if not isinstance(entries, list) or (not entries and not allow_empty):
        fail("results", "must be a non-empty list of evaluation entries")
    for i, entry in enumerate(entries):
        where = f"results[{i}]"
        if not isinstance(entry, dict):
            fail(where, "must be an object")
        for key, kind in (("protocol", str), ("split", str), ("fraction", (int, float)), ("metrics", dict)):
            if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                fail(f"{where}.{key}", f"must be a {getattr(kind, '__name__', 'number')}")
        if not entry["metrics"]:
            fail(f"{where}.metrics", "must hold at least one metric")
        for group in ("metrics", "metrics_std", "per_class_auroc"):
            for name, value in (entry.get(group) or {}).items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    fail(f"{where}.{group}.{name}", f"must be a number, got {value!r}")
    return document


def write_results(path: str | os.PathLike, document: Mapping[str, Any]) -> None:
    """Check ``document`` against the schema (:func:`validate_results`; an empty ``results`` list
    is allowed) and write it atomically as indented JSON (:func:`ecg_hub.utils.write_json_atomic`)."""
    if isinstance(document, ResultsDocument):
        document = document.to_dict()
    validate_results(document, path, allow_empty=True)
    write_json_atomic(path, document)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a results JSON written by ``ecg-hub evaluate`` or ``ecg-hub finetune``.

    Raises:
        ValueError: naming the file and the field when the JSON does not follow the format
            ``{"model", "dataset": {"name", "label_set", ...}, "results": [{"protocol", "fraction",
            "split", "seeds", "metrics": {name: float}, "metrics_std"?, "per_class_auroc"?}]}``.
    """
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"results JSON {path}: cannot be read as JSON ({err})") from err
    return validate_results(results, path)


def format_results_table(document: Mapping[str, Any]) -> str:
    """A plain-text table of the results (mean ± std over seeds), one row per (protocol, fraction)."""
    header = ["protocol", "labels", "seeds", "macro AUROC", "macro AUPRC", "Fmax", "macro F1 (val thr.)", "time (s)"]
    rows = []
    for result in document["results"]:

        def cell(key, result=result):
            if key not in result["metrics"]:
                return "-"
            mean, std = result["metrics"][key], result["metrics_std"].get(key, 0.0)
            return f"{mean:.3f} ± {std:.3f}" if len(result["seeds"]) > 1 else f"{mean:.3f}"

        fraction = "zero-shot" if result["protocol"] == "zero-shot" else f"{result['fraction']:.0%}"
        rows.append(
            [result["protocol"], fraction, str(len(result["seeds"])), cell("macro_auroc"), cell("macro_auprc"),
             cell("fmax"), cell("macro_f1"), f"{result.get('seconds', 0.0):.1f}"]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    # A baseline has no weights, so no init to name.
    init = f" ({document['init']})" if document.get("init") else "" if "baseline" in document["model"] else " (pretrained)"
    title = f"{document['model']}{init} on {document['dataset']['name']} / {document['dataset']['label_set']}"
    extraction = {r["feature_extraction_seconds"] for r in document["results"] if "feature_extraction_seconds" in r}
    if extraction:  # paid once per run, shared by every linear-probe row
        lines.append(f"linear probe: backbone features extracted once in {max(extraction):.0f} s (not in the rows' times)")
    return title + "\n" + "\n".join(lines)
