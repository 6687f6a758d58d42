"""An interactive browser demo of one ecg-hub model (Gradio): an ECG in, the 12-lead plot, the
model's predictions and, for classifiers, where in the record the evidence was.

``build_demo(model)`` returns a ``gradio.Blocks`` app; ``ecg-hub demo MODEL`` launches it, and
``ecg-hub demo --space DIR MODEL_ID`` writes a Hugging Face Space folder that runs it
(:func:`write_space`).

- Input: a bundled synthetic example (:mod:`ecg_hub.data.synthetic`, not a patient), or an upload:
  a WFDB record (``.hea`` + ``.dat``, as several files), a PhysioNet ``.mat`` with its ``.hea``, a
  CODE-15 ``.mat``, an SPH ``.h5`` (sampling rate from the form), or a CSV export with one column
  per lead (:func:`read_csv_record`).
- A fine-tuned ``...ForSequenceClassification``: the ``ecg-classification`` pipeline's labels and
  scores, and an integrated-gradients saliency overlay (:func:`ecg_hub.explain.explain`) for the
  top class or a chosen one.
- An ECG-text model (``get_ecg_features``, e.g. ETP): ``zero-shot-ecg-classification`` scores for
  candidate labels typed into the form (comma-separated).

Every event calls a plain function of this module (:class:`EcgDemo` ``.analyze``, which uses
:func:`load_upload`, :func:`example_record`, :func:`predict_record`, :func:`plot_record`,
:func:`saliency_record`), so the app's numbers are the pipelines' numbers and tests can call them
without a browser. A research demo, not a medical device.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecg_hub.data.records import EcgRecord, make_record, read_record
from ecg_hub.modeling.feature_extraction_ecg import EcgInputReducedWarning
from ecg_hub.modeling.leads import STANDARD_LEADS, canonical_lead_name
from ecg_hub.version import __version__

__all__ = [
    "EXAMPLES",
    "DemoModel",
    "EcgDemo",
    "build_demo",
    "example_record",
    "load_demo_model",
    "load_upload",
    "parse_labels",
    "plot_record",
    "predict_record",
    "read_csv_record",
    "saliency_record",
    "space_requirements",
    "write_space",
]

#: Bundled examples: display name -> (rhythm of :func:`ecg_hub.data.synthetic.synthesize_ecg`, seed).
#: Fixed seeds, so an example is the same record on every machine and in every test.
EXAMPLES: dict[str, tuple[str, int]] = {
    "Synthetic: sinus rhythm": ("SR", 11),
    "Synthetic: sinus bradycardia": ("SB", 12),
    "Synthetic: sinus tachycardia": ("ST", 13),
    "Synthetic: atrial fibrillation": ("AF", 14),
}
EXAMPLE_SAMPLING_RATE = 500
EXAMPLE_DURATION_S = 10.0

#: File types an upload may contain (lower-case extensions).
UPLOAD_TYPES = (".hea", ".dat", ".mat", ".csv", ".h5", ".hdf5")
_UPLOAD_HELP = (
    "expected a WFDB record (.hea with its .dat), a PhysioNet .mat with its .hea, a CODE-15 .mat, an SPH "
    ".h5, or a CSV with one column per lead"
)

#: Candidate labels of a zero-shot model whose config names no classes; they match the bundled
#: synthetic examples.
DEFAULT_ZERO_SHOT_LABELS = ("sinus rhythm", "sinus bradycardia", "sinus tachycardia", "atrial fibrillation")
#: More candidate labels than this in one request is a mistake or abuse (each costs a text forward).
MAX_LABELS = 64

#: CSV amplitude units and their factor to mV.
CSV_UNITS = {"mV": 1.0, "µV": 1e-3}
# CSV header names of a time column (lower case, spaces collapsed) and their factor to seconds.
_TIME_COLUMNS = {
    "time": 1.0,
    "t": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "seconds": 1.0,
    "time_s": 1.0,
    "time (s)": 1.0,
    "time [s]": 1.0,
    "time(s)": 1.0,
    "time_ms": 1e-3,
    "time (ms)": 1e-3,
    "time [ms]": 1e-3,
    "time(ms)": 1e-3,
    "ms": 1e-3,
}
# Header names of a sample-number column: carries no rate, ignored.
_INDEX_COLUMNS = {"sample", "samples", "sample #", "sample_index", "index", "n", "#"}
# A time column may wobble by this fraction of the sampling period (exports round the times).
_TIME_JITTER = 0.25
# A rate entered in the form and the rate of the time column may differ by this fraction.
_RATE_TOLERANCE = 0.01

_TOP_CLASS = "top class"
_SALIENCY_METHOD = "integrated_gradients"
_DISCLAIMER = "Research demo, not a medical device: do not use it for diagnosis."

# One model and one matplotlib state per process: pipelines and pyplot are not thread-safe, and
# Gradio runs events in a thread pool.
_LOCK = threading.RLock()


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


@dataclass
class DemoModel:
    """A loaded model and how the demo uses it.

    Attributes:
        name: the folder or Hub id it was loaded from.
        kind: ``"classifier"`` (the ``ecg-classification`` pipeline) or ``"zero-shot"``
            (``zero-shot-ecg-classification``).
        pipeline: the transformers pipeline.
        labels: the classifier's class names, or the default candidate labels of a zero-shot model.
        class_descriptions: zero-shot: ``{label: description}`` used for labels it names.
        whole_record: score every window of the model's length and average them (a 10 s record on a
            2.5 s model is four windows); False: the first window only (the pipeline's crop).
    """

    name: str
    kind: str
    pipeline: Any
    labels: list[str]
    class_descriptions: dict[str, Any] = field(default_factory=dict)
    whole_record: bool = True

    @property
    def feature_extractor(self):
        return self.pipeline.feature_extractor


def load_demo_model(
    model: str | os.PathLike,
    *,
    device: str | int | None = None,
    labels: Sequence[str] | None = None,
    class_descriptions: Mapping[str, Any] | None = None,
    whole_record: bool = True,
) -> DemoModel:
    """Load ``model`` (a folder or Hub id) as the demo uses it: a fine-tuned classifier through the
    ``ecg-classification`` pipeline, else an ECG-text model through ``zero-shot-ecg-classification``.

    Raises:
        ValueError: for a checkpoint that is neither (e.g. a bare encoder), naming what it holds.
    """
    from transformers import AutoConfig, pipeline

    name = os.fspath(model)
    config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    architectures = list(getattr(config, "architectures", None) or [])
    if any(arch.endswith("ForSequenceClassification") for arch in architectures):
        if labels is not None or class_descriptions:
            raise ValueError(
                f"ecg-hub demo: labels and class descriptions are for zero-shot models; {name!r} is a "
                f"fine-tuned classifier ({architectures}) whose classes come from config.id2label"
            )
        pipe = pipeline("ecg-classification", model=name, device=device, trust_remote_code=False)
        return DemoModel(name, "classifier", pipe, list(pipe.class_names), whole_record=whole_record)
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    # Decided from the config before any weights load: a bare encoder has no class scores to show.
    model_class = MODEL_MAPPING.get(type(config), None)
    if model_class is None or not hasattr(model_class, "get_ecg_features"):
        raise ValueError(
            f"ecg-hub demo: {name!r} holds {architectures or [type(config).__name__]}, neither a "
            "fine-tuned ...ForSequenceClassification nor an ECG-text model with get_ecg_features() for "
            "zero-shot scores; fine-tune an encoder first (ecg-hub finetune)"
        )
    pipe = pipeline("zero-shot-ecg-classification", model=name, device=device, trust_remote_code=False)
    if labels is None:
        # A config that names real classes (not transformers' LABEL_0 placeholders) suggests them.
        names = [str(v) for _, v in sorted((int(k), v) for k, v in (config.id2label or {}).items())]
        labels = names if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)) else None
    labels = list(labels) if labels is not None else list(DEFAULT_ZERO_SHOT_LABELS)
    parse_labels(", ".join(labels))  # the defaults must survive the form's own parsing
    return DemoModel(name, "zero-shot", pipe, labels, dict(class_descriptions or {}), whole_record)


def parse_labels(text: str | Sequence[str] | None) -> list[str]:
    """Candidate labels from the form's text box: comma-separated, blanks trimmed.

    Raises:
        ValueError: for no label, a repeated label, or more than :data:`MAX_LABELS`.
    """
    if text is None:
        parts: list[str] = []
    elif isinstance(text, str):
        parts = text.split(",")
    else:
        parts = [str(part) for part in text]
    labels = [" ".join(part.split()) for part in parts if part.strip()]
    if not labels:
        raise ValueError(
            "candidate labels: enter at least one class name, comma-separated (e.g. sinus rhythm, atrial "
            "fibrillation)"
        )
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(
            f"candidate labels: {', '.join(repeated)} appear more than once; expected each label once"
        )
    if len(labels) > MAX_LABELS:
        raise ValueError(f"candidate labels: {len(labels)} labels; expected at most {MAX_LABELS}")
    return labels


# ----------------------------------------------------------------------------------------------
# Records: bundled examples and uploads
# ----------------------------------------------------------------------------------------------


def example_record(name: str) -> EcgRecord:
    """The bundled synthetic example ``name`` (a key of :data:`EXAMPLES`): 10 s, 12 leads, 500 Hz."""
    from ecg_hub.data.synthetic import synthesize_ecg

    if name not in EXAMPLES:
        raise ValueError(f"example {name!r} is not a bundled example; expected one of {', '.join(EXAMPLES)}")
    rhythm, seed = EXAMPLES[name]
    ecg = synthesize_ecg(
        rhythm, seed=seed, sampling_rate=EXAMPLE_SAMPLING_RATE, duration_s=EXAMPLE_DURATION_S
    )
    metadata = {"source": "synthetic", "rhythm": rhythm, "seed": seed, "report": ecg.report}
    return make_record(ecg.signal, ecg.sampling_rate, ecg.leads, f"synthetic-{rhythm}-seed{seed}", metadata)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_rows(text: str, name: str) -> tuple[list[str], list[list[str]], str]:
    """Header, data rows and delimiter of a CSV text (comma, semicolon or tab separated)."""
    sample = text[:8192]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    rows = [
        row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(cell.strip() for cell in row)
    ]
    if not rows:
        raise ValueError(
            f"{name}: the CSV file is empty; expected a header of lead names and one row per sample"
        )
    return [cell.strip() for cell in rows[0]], rows[1:], delimiter


def read_csv_record(
    path: str | os.PathLike, sampling_rate: float | None = None, units: str = "mV", name: str | None = None
) -> EcgRecord:
    """Read a CSV export: one column per lead, the header naming the leads (I, II, aVR, ..., V6; the
    spellings :func:`ecg_hub.modeling.leads.canonical_lead_name` accepts), optionally a time column
    (``time``/``t``/``time_s`` in seconds, ``time_ms``/``ms`` in milliseconds) and a sample-number
    column (``sample``/``index``, ignored). Comma, semicolon or tab separated; with semicolons a
    decimal comma is accepted.

    Args:
        path: the file.
        sampling_rate: Hz; needed unless the file has a time column (then both must agree to 1 %).
        units: amplitude unit of the values, a key of :data:`CSV_UNITS` (``"mV"`` or ``"µV"``).
        name: the file's name in error messages and the record id (default: the path's name).

    Raises:
        ValueError: naming the file, and the line and column where it applies, for no header, an
            unknown column, a repeated lead, a short or non-numeric row, an irregular or decreasing
            time column, a missing or disagreeing sampling rate, or a record :func:`make_record`
            refuses (too short, implausible amplitude, ...).
    """
    path = os.fspath(path)
    name = name or os.path.basename(path)
    if units not in CSV_UNITS:
        raise ValueError(f"{name}: units must be one of {', '.join(CSV_UNITS)}, got {units!r}")
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # Windows exports; lead names are ASCII either way
    header, rows, delimiter = _csv_rows(text, name)
    if all(_is_number(cell) for cell in header if cell):
        raise ValueError(
            f"{name}: the first line {','.join(header[:4])}... is numbers; expected a header naming the "
            f"leads ({', '.join(STANDARD_LEADS)}), optionally with a time column"
        )
    time_column, time_scale, lead_columns, leads = None, 1.0, [], []
    for column, cell in enumerate(header):
        key = " ".join(cell.lower().split())
        if key in _TIME_COLUMNS:
            if time_column is not None:
                raise ValueError(
                    f"{name}: two time columns ({header[time_column]!r} and {cell!r}); expected at most one"
                )
            time_column, time_scale = column, _TIME_COLUMNS[key]
            continue
        if key in _INDEX_COLUMNS:
            continue
        try:
            lead = canonical_lead_name(cell)
        except ValueError:
            raise ValueError(
                f"{name}: column {column + 1} {cell!r} is neither a lead nor a time column; expected lead "
                f"names ({', '.join(STANDARD_LEADS)}), a time column (time, time_s, time_ms) or a sample "
                "column"
            ) from None
        if lead in leads:
            raise ValueError(
                f"{name}: lead {lead} has two columns ({header[lead_columns[leads.index(lead)]]!r}, {cell!r})"
            )
        lead_columns.append(column)
        leads.append(lead)
    if not leads:
        raise ValueError(f"{name}: the header {header} names no lead; expected columns such as I, II, V1")
    if not rows:
        raise ValueError(f"{name}: the CSV file has a header but no samples")
    values = np.empty((len(rows), len(header)), dtype=np.float64)
    decimal_comma = delimiter == ";"
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{name}: line {line} has {len(row)} values; expected {len(header)}, one per header column"
            )
        for column, cell in enumerate(row):
            cell = cell.strip()
            if decimal_comma:
                cell = cell.replace(",", ".")
            try:
                values[line - 2, column] = float(cell)
            except ValueError:
                raise ValueError(
                    f"{name}: line {line}, column {header[column]!r}: {cell!r} is not a number; expected a "
                    f"value in {units}"
                ) from None
    rate = _csv_sampling_rate(
        values[:, time_column] * time_scale if time_column is not None else None, sampling_rate, name
    )
    signal = values[:, lead_columns].T * CSV_UNITS[units]
    record_id = os.path.splitext(name)[0]
    return make_record(signal, rate, leads, record_id, {"source": "csv", "file": name, "units": units})


def _csv_sampling_rate(times_s: np.ndarray | None, sampling_rate: float | None, name: str) -> float:
    """The record's rate: from the time column (checked regular and increasing) and/or the form."""
    given = None
    if sampling_rate is not None and not (isinstance(sampling_rate, float) and np.isnan(sampling_rate)):
        given = float(sampling_rate)
        if not given > 0:
            raise ValueError(f"{name}: sampling rate {sampling_rate!r} Hz; expected a positive number of Hz")
    if times_s is None:
        if given is None:
            raise ValueError(
                f"{name}: the CSV file has no time column; enter its sampling rate (Hz) in the form's "
                "sampling rate field"
            )
        return given
    if len(times_s) < 2:
        raise ValueError(f"{name}: the time column has {len(times_s)} value; expected one per sample")
    steps = np.diff(times_s)
    if np.any(steps <= 0):
        line = int(np.argmax(steps <= 0)) + 3  # step k ends at data row k + 1, file line k + 3
        raise ValueError(
            f"{name}: the time column does not increase at line {line}; expected one row per sample, in "
            "time order"
        )
    # The median step is the sampling period even when a gap inflates the mean.
    typical = float(np.median(steps))
    off = np.abs(steps - typical) > _TIME_JITTER * typical
    if np.any(off):
        k = int(np.argmax(off))
        raise ValueError(
            f"{name}: the time column jumps at line {k + 3} ({steps[k]:g} s after the previous sample; the "
            f"record's sampling period is {typical:g} s); expected regularly sampled rows without gaps"
        )
    # Without gaps the mean step is the most precise period (exports round each time stamp).
    period = (times_s[-1] - times_s[0]) / (len(times_s) - 1)
    from_times = 1.0 / period
    if abs(from_times - round(from_times)) <= _RATE_TOLERANCE * from_times:
        from_times = float(round(from_times))  # exported times are rounded; rates are whole Hz
    if given is not None and abs(from_times - given) > _RATE_TOLERANCE * given:
        raise ValueError(
            f"{name}: the time column gives {from_times:g} Hz but the sampling rate field says {given:g} "
            "Hz; expected them to agree (clear the field to use the time column)"
        )
    return given if given is not None else from_times


def load_upload(
    paths: Sequence[str | os.PathLike] | str | os.PathLike | None,
    sampling_rate: float | None = None,
    units: str = "mV",
) -> EcgRecord:
    """One record from the uploaded files (a Gradio ``File`` with several files gives their paths).

    The files are copied under their own names into one folder first: Gradio stores every upload in
    a folder of its own, but a WFDB header finds its ``.dat`` by name next to it.

    Args:
        paths: the uploaded files of one record: ``.hea`` + ``.dat`` (WFDB), ``.hea`` + ``.mat``
            (PhysioNet/CinC), one ``.mat`` (CODE-15), one ``.h5`` (SPH) or one ``.csv``.
        sampling_rate: Hz of a CSV without a time column or of an ``.h5`` file.
        units: amplitude unit of a CSV's values (:data:`CSV_UNITS`).

    Raises:
        ValueError: naming the file, for an unsupported type (e.g. ``notes.txt``), files of more than
            one record, a ``.dat`` without its header, or a file the reader refuses.
    """
    if paths is None:
        paths = []
    elif isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError(f"no file uploaded; {_UPLOAD_HELP}")
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"uploaded files {names} repeat a name; expected each file of the record once")
    for name in names:
        ext = os.path.splitext(name)[1].lower()
        if ext not in UPLOAD_TYPES:
            raise ValueError(f"{name}: unsupported file type {ext or '(no extension)'!r}; {_UPLOAD_HELP}")
    by_ext: dict[str, list[str]] = {}
    for name in names:
        by_ext.setdefault(os.path.splitext(name)[1].lower(), []).append(name)
    csvs = by_ext.get(".csv", [])
    if csvs:
        if len(names) > 1:
            others = [n for n in names if n not in csvs[:1]]
            raise ValueError(
                f"{csvs[0]}: a CSV upload is one file; also got {', '.join(others)}. Upload one record at "
                "a time"
            )
        return read_csv_record(paths[0], sampling_rate, units, name=names[0])
    headers = by_ext.get(".hea", [])
    if len(headers) > 1:
        raise ValueError(
            f"uploaded headers {', '.join(headers)} are {len(headers)} records; upload one record at a time"
        )
    if not headers:
        if ".dat" in by_ext:
            dat = by_ext[".dat"][0]
            raise ValueError(
                f"{dat}: a WFDB signal file needs its header; upload {os.path.splitext(dat)[0]}.hea with it"
            )
        if len(names) > 1:
            raise ValueError(
                f"uploaded files {', '.join(names)} are more than one record; upload one record at a time"
            )
    with tempfile.TemporaryDirectory(prefix="ecg-hub-demo-") as folder:
        for source, name in zip(paths, names):
            shutil.copyfile(source, os.path.join(folder, name))
        target = headers[0] if headers else names[0]
        kwargs: dict[str, Any] = {}
        if os.path.splitext(target)[1].lower() in (".h5", ".hdf5"):
            if sampling_rate is None:
                raise ValueError(
                    f"{target}: an HDF5 file stores no sampling rate; enter it (Hz) in the form's sampling "
                    "rate field"
                )
            kwargs["sampling_rate"] = float(sampling_rate)
        stem = os.path.splitext(target)[0]
        location = os.path.join(folder, stem if headers else target)
        try:
            return read_record(location, record_id=stem, **kwargs)
        except ValueError as error:
            raise ValueError(f"{target}: {error}") from error
        except Exception as error:  # wfdb / scipy / h5py raise their own types on damaged files
            raise ValueError(
                f"{target}: could not be read ({type(error).__name__}: {error}); {_UPLOAD_HELP}"
            ) from error


def record_row(record: EcgRecord) -> dict[str, Any]:
    """The pipelines' dataset-row form of ``record`` (its masked leads included)."""
    return {
        "signal": record.signal,
        "sampling_rate": record.sampling_rate,
        "leads": list(record.leads),
        "record_id": record.record_id,
        "masked_leads": list(record.masked_leads),
    }


# ----------------------------------------------------------------------------------------------
# Scores, plots, saliency
# ----------------------------------------------------------------------------------------------


def window_stride(demo_model: DemoModel) -> int | None:
    """``window_stride`` of the demo's pipeline calls: the model's window length (consecutive,
    non-overlapping windows cover the record; the last one ends at its end), or None to score the
    first window only (``whole_record=False``, or a model without a fixed length)."""
    length = getattr(demo_model.feature_extractor, "num_samples", None)
    return int(length) if demo_model.whole_record and length else None


def predict_record(
    demo_model: DemoModel, record: EcgRecord, labels: str | Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The pipeline's result for ``record``: ``[{"label", "score"(, "positive")}, ...]`` best first.

    Args:
        demo_model: from :func:`load_demo_model`.
        record: from :func:`example_record` or :func:`load_upload`.
        labels: zero-shot: the candidate labels (text of the form or a list; default the model's);
            ignored for a classifier.
    """
    kwargs: dict[str, Any] = {}
    stride = window_stride(demo_model)
    if stride is not None:
        kwargs["window_stride"] = stride
    if demo_model.kind == "zero-shot":
        candidates = parse_labels(labels if labels is not None else demo_model.labels)
        descriptions = {k: v for k, v in demo_model.class_descriptions.items() if k in candidates}
        kwargs.update(candidate_labels=candidates, class_descriptions=descriptions or None)
    with _LOCK:
        return demo_model.pipeline(record_row(record), **kwargs)


def _figure_array(draw) -> np.ndarray:
    """``(height, width, 3)`` uint8 of the PNG ``draw(path)`` writes (plot_ecg's own Agg path, which
    closes its figure: a long-running server must not accumulate figures)."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="ecg-hub-demo-plot-") as folder:
        path = os.path.join(folder, "plot.png")
        with _LOCK:
            draw(path)
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))


def plot_record(record: EcgRecord, title: str | None = None) -> np.ndarray:
    """The 12-lead plot (:func:`ecg_hub.data.plot.plot_ecg`) of ``record`` as recorded (its own rate
    and leads; the first 10 s), as an RGB array."""
    from ecg_hub.data.plot import plot_ecg

    return _figure_array(
        lambda path: plot_ecg(
            record.signal, record.sampling_rate, record.leads, path, title=title, record_id=record.record_id
        )
    )


def saliency_record(
    demo_model: DemoModel, record: EcgRecord, target: int | str | None = None, steps: int = 32
):
    """``(RGB array, EcgExplanation)``: integrated gradients (:func:`ecg_hub.explain.explain`) of the
    classifier's score for ``target`` (None: the top class) on ``record``, drawn over the 12-lead
    plot of the signal the model saw (resampled, its first window).

    Raises:
        ValueError: for a zero-shot model (not supported by ecg_hub.explain) or a target that is not
            a class of the model.
        ImportError: without Captum (pip install 'ecg-hub[explain]').
    """
    if demo_model.kind != "classifier":
        raise ValueError(
            "saliency: needs a fine-tuned classifier; zero-shot models are not supported by ecg_hub.explain"
        )
    from ecg_hub.explain import explain

    pipe = demo_model.pipeline
    with _LOCK, warnings.catch_warnings():
        # explain scores the first window by design (the summary says so); its crop warning would
        # only repeat that in the server log on every request.
        warnings.simplefilter("ignore", EcgInputReducedWarning)
        explanation = explain(
            pipe.model,
            pipe.feature_extractor,
            record.signal,
            sampling_rate=record.sampling_rate,
            leads=list(record.leads),
            target=target,
            method=_SALIENCY_METHOD,
            steps=steps,
            masked_leads=list(record.masked_leads) or None,
        )
    image = _figure_array(lambda path: explanation.plot(path, record_id=record.record_id))
    return image, explanation


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


class EcgDemo:
    """The demo's state (one model) and the function behind every event: :meth:`analyze`."""

    def __init__(self, demo_model: DemoModel, *, saliency_steps: int = 32):
        if isinstance(saliency_steps, bool) or not isinstance(saliency_steps, int) or saliency_steps < 1:
            raise ValueError(
                f"saliency_steps must be a positive integer (integration points), got {saliency_steps!r}"
            )
        self.model = demo_model
        self.saliency_steps = saliency_steps

    def record(
        self,
        example: str | None,
        files: Sequence[str] | None,
        sampling_rate: float | None = None,
        units: str = "mV",
    ) -> EcgRecord:
        """The record to analyze: the uploaded files when there are any, else the example. A sampling
        rate of 0 is no rate (an emptied number field can arrive as 0)."""
        if sampling_rate is not None and sampling_rate == 0:
            sampling_rate = None
        if files:
            return load_upload(files, sampling_rate, units)
        if example:
            return example_record(example)
        raise ValueError(f"no record: pick a bundled example or upload a file ({_UPLOAD_HELP})")

    def analyze(
        self,
        example: str | None,
        files: Sequence[str] | None,
        sampling_rate: float | None,
        units: str,
        labels: str | None,
        target: str | None,
        saliency: bool,
    ) -> tuple[np.ndarray, dict[str, float], np.ndarray | None, str, dict[str, Any]]:
        """One request: ``(ECG plot, {label: score} for gr.Label, saliency plot or None, summary
        Markdown, raw result for gr.JSON)``. Raises ``ValueError`` with a message for the user."""
        record = self.record(example, files, sampling_rate, units)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EcgInputReducedWarning)
            predictions = predict_record(self.model, record, labels)
        # What the feature extractor reduced (zero-filled leads, a crop) belongs in the answer, where
        # the user sees it; other warnings go on to the server log.
        notes = sorted({str(w.message) for w in caught if isinstance(w.message, EcgInputReducedWarning)})
        for w in caught:
            if not isinstance(w.message, EcgInputReducedWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        ecg_image = plot_record(record)
        saliency_image, explanation, saliency_note = None, None, None
        if saliency and self.model.kind == "classifier":
            chosen = None if target in (None, "", _TOP_CLASS) else target
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", UserWarning)
                    saliency_image, explanation = saliency_record(
                        self.model, record, chosen, self.saliency_steps
                    )
                # explain's caveats (e.g. a flat-line baseline that already scores high, so the map
                # explains only the difference) qualify the picture: the reader must see them.
                notes += sorted({str(w.message) for w in caught if str(w.message).startswith("explain:")})
                for w in caught:
                    if not str(w.message).startswith("explain:"):
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            except (ImportError, ValueError) as error:
                # Captum is an optional extra, and explain refuses some checkpoints (e.g. a feature
                # extractor whose lead order differs from the model's): the predictions still stand.
                saliency_note = f"Saliency unavailable: {error}"
        raw = {
            "record": {
                "record_id": record.record_id,
                "sampling_rate": record.sampling_rate,
                "leads": list(record.leads),
                "masked_leads": list(record.masked_leads),
                "duration_s": record.duration_s,
            },
            "model": self.model.name,
            "kind": self.model.kind,
            "window_stride": window_stride(self.model),
            "predictions": predictions,
        }
        if explanation is not None:
            raw["saliency"] = {
                "method": explanation.method,
                "target": explanation.target_label,
                "score": explanation.score,
                "steps": explanation.steps,
                "lead_share": explanation.lead_share(),
            }
        summary = self._summary(record, predictions, explanation, notes, saliency_note)
        return ecg_image, {item["label"]: item["score"] for item in predictions}, saliency_image, summary, raw

    def _summary(self, record, predictions, explanation, notes, saliency_note) -> str:
        fe = self.model.feature_extractor
        meta = record.metadata or {}
        source = (
            f"synthetic example (ecg_hub.data.synthetic, rhythm {meta['rhythm']}, seed {meta['seed']}; not "
            "a patient)"
            if meta.get("source") == "synthetic"
            else "upload"
        )
        masked = ", ".join(
            f"{lead} ({why})" for lead, why in zip(record.masked_leads, record.masked_lead_reasons)
        )
        lines = [
            (
                f"**Record** `{record.record_id}`: {source}; {len(record.leads)} leads, "
                f"{record.duration_s:.1f} s at {record.sampling_rate} Hz; masked leads: {masked or 'none'}."
            ),
        ]
        window_s = fe.num_samples / fe.sampling_rate if getattr(fe, "num_samples", None) else None
        if window_s is None:
            scope = "the whole record in one pass"
        elif window_stride(self.model) is not None and record.duration_s > window_s:
            scope = f"every {window_s:g} s window of the record at {fe.sampling_rate} Hz, averaged"
        else:
            scope = f"the first {window_s:g} s at {fe.sampling_rate} Hz"
        if self.model.kind == "classifier":
            problem = self.model.pipeline.problem_type
            how = (
                "independent sigmoid probabilities"
                if problem == "multi_label_classification"
                else "softmax over the classes"
            )
            lines.append(f"**Model** `{self.model.name}`: fine-tuned classifier, {how}; scored on {scope}.")
            positive = [item["label"] for item in predictions if item.get("positive")]
            if any("positive" in item for item in predictions):
                lines.append(f"**Positive** at the model's thresholds: {', '.join(positive) or 'none'}.")
        else:
            lines.append(
                f"**Model** `{self.model.name}`: zero-shot ECG-text model, softmax over the candidate "
                f"labels' prompt similarities; scored on {scope}."
            )
        if explanation is not None:
            shares = sorted(explanation.lead_share().items(), key=lambda item: -item[1])[:3]
            window = f"{explanation.signal.shape[1] / explanation.sampling_rate:g} s"
            lines.append(
                f"**Saliency**: integrated gradients ({explanation.steps} steps) of the score of "
                f"{explanation.target_label} (p={explanation.score:.2f}) on the first {window} the model "
                "saw; largest lead shares: "
                f"{', '.join(f'{lead} {_percent(share)}' for lead, share in shares)}."
            )
        if saliency_note:
            lines.append(saliency_note)
        lines += [f"Note: {note}" for note in notes]
        lines.append(f"*{_DISCLAIMER}*")
        return "\n\n".join(lines)

    def blocks(self, *, title: str | None = None, analyze_on_load: bool = True, example: str | None = None):
        """The Gradio app. ``analyze_on_load``: analyze ``example`` (default the first) when a page
        opens, so a visitor sees a result before uploading anything."""
        gr = _gradio()
        model = self.model
        example = example if example is not None else next(iter(EXAMPLES))
        if example not in EXAMPLES:
            raise ValueError(
                f"example {example!r} is not a bundled example; expected one of {', '.join(EXAMPLES)}"
            )
        classifier = model.kind == "classifier"
        title = title or f"ecg-hub demo: {model.name}"

        def analyze(example, files, sampling_rate, units, labels, target, saliency):
            try:
                return self.analyze(example, files, sampling_rate, units, labels, target, saliency)
            except ValueError as error:  # the user's input: shown in the page, not a server error
                raise gr.Error(str(error)) from error

        def pick_example(example, sampling_rate, units, labels, target, saliency):
            # Choosing an example replaces an earlier upload (else the upload would keep winning).
            return (None, *analyze(example, None, sampling_rate, units, labels, target, saliency))

        # delete_cache: uploads (possibly patient records) leave Gradio's cache within two hours.
        with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
            kind = "fine-tuned classifier" if classifier else "zero-shot ECG-text model"
            gr.Markdown(f"# {title}\n{kind} · ecg-hub {__version__} · {_DISCLAIMER}")
            with gr.Row():
                with gr.Column(scale=1):
                    example_box = gr.Dropdown(list(EXAMPLES), value=example, label="Bundled example")
                    files_box = gr.File(
                        file_count="multiple",
                        label="Or upload one record (.hea + .dat, .mat (+ .hea), .csv, .h5)",
                    )
                    with gr.Row():
                        rate_box = gr.Number(
                            value=None,
                            label="Sampling rate (Hz)",
                            minimum=0,
                            info="for a CSV without a time column, or .h5 (0: from the file)",
                            placeholder="from the file",
                        )
                        units_box = gr.Radio(list(CSV_UNITS), value="mV", label="CSV units")
                    labels_box = gr.Textbox(
                        ", ".join(model.labels),
                        label="Candidate labels (comma-separated)",
                        visible=not classifier,
                        info="press Enter to score again",
                    )
                    target_box = gr.Dropdown(
                        [_TOP_CLASS, *model.labels],
                        value=_TOP_CLASS,
                        label="Saliency for",
                        visible=classifier,
                    )
                    saliency_box = gr.Checkbox(
                        classifier, label="Saliency (integrated gradients)", visible=classifier
                    )
                    button = gr.Button("Analyze", variant="primary")
                with gr.Column(scale=1):
                    label_box = gr.Label(
                        label="Predictions", num_top_classes=min(10, max(1, len(model.labels)))
                    )
                    summary_box = gr.Markdown()
            # Headings above the images, not image labels: a label badge would cover the plot's title.
            gr.Markdown("### 12-lead ECG (the record as uploaded, first 10 s)")
            ecg_box = gr.Image(
                label="12-lead ECG", show_label=False, format="png", type="numpy", interactive=False
            )
            gr.Markdown("### Saliency over the signal the model saw", visible=classifier)
            saliency_image_box = gr.Image(
                label="Saliency",
                show_label=False,
                format="png",
                type="numpy",
                interactive=False,
                visible=classifier,
            )
            with gr.Accordion("Raw result (JSON)", open=False):
                raw_box = gr.JSON()
            inputs = [example_box, files_box, rate_box, units_box, labels_box, target_box, saliency_box]
            outputs = [ecg_box, label_box, saliency_image_box, summary_box, raw_box]
            common = {"concurrency_id": "ecg-model"}
            button.click(analyze, inputs, outputs, api_name="analyze", **common)
            labels_box.submit(analyze, inputs, outputs, api_visibility="private", **common)
            files_box.upload(analyze, inputs, outputs, api_visibility="private", **common)
            example_box.input(
                pick_example,
                [example_box, *inputs[2:]],
                [files_box, *outputs],
                api_visibility="private",
                **common,
            )
            if analyze_on_load:
                demo.load(analyze, inputs, outputs, api_visibility="private", **common)
        demo.ecg_demo = self  # tests and callers reach the plain functions through the app
        return demo


def _gradio():
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError("ecg-hub demo needs Gradio; install it with pip install 'ecg-hub[demo]'") from error
    return gr


def build_demo(
    model: str | os.PathLike,
    *,
    device: str | int | None = None,
    labels: Sequence[str] | None = None,
    class_descriptions: Mapping[str, Any] | None = None,
    saliency_steps: int = 32,
    whole_record: bool = True,
    title: str | None = None,
    analyze_on_load: bool = True,
    example: str | None = None,
):
    """The Gradio app of ``model`` (a folder or Hub id): ``build_demo(model).launch()``.

    Args:
        model: a fine-tuned classifier or an ECG-text model (:func:`load_demo_model`).
        device: the pipelines' device (e.g. ``"cpu"``, ``"cuda:1"``); default: transformers' choice, the
            first GPU (or other accelerator) when there is one, else the CPU.
        labels: zero-shot: the default candidate labels (the form can change them).
        class_descriptions: zero-shot: ``{label: description}`` for the prompts of labels it names.
        saliency_steps: integrated-gradients points per saliency map.
        whole_record: score every model-length window of a record and average them (default), or
            only the first window.
        title: page title (default names the model).
        analyze_on_load: show the result for ``example`` when a page opens.
        example: the preselected bundled example (default the first of :data:`EXAMPLES`).

    Returns:
        A ``gradio.Blocks``; its ``ecg_demo`` attribute is the :class:`EcgDemo` behind the events.
    """
    demo_model = load_demo_model(
        model, device=device, labels=labels, class_descriptions=class_descriptions, whole_record=whole_record
    )
    return EcgDemo(demo_model, saliency_steps=saliency_steps).blocks(
        title=title, analyze_on_load=analyze_on_load, example=example
    )


# ----------------------------------------------------------------------------------------------
# Hugging Face Space
# ----------------------------------------------------------------------------------------------


def _declared_requirements() -> list[str]:
    """ecg-hub's runtime requirements and its ``explain`` extra (Captum, for saliency): from the
    pyproject.toml of a source checkout (the truth while developing; an editable install's metadata
    can be stale), else from the installed distribution's metadata."""
    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == "ecg-hub":
            return list(project.get("dependencies", [])) + list(
                project.get("optional-dependencies", {}).get("explain", [])
            )
    from importlib import metadata

    try:
        declared = metadata.requires("ecg-hub") or []
    except metadata.PackageNotFoundError as error:
        raise RuntimeError(
            "ecg-hub demo --space: cannot find ecg-hub's requirements (no pyproject.toml, not installed)"
        ) from error
    found = []
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append(text)
        elif requirement.marker.evaluate({"extra": "explain"}):
            requirement.marker = None
            found.append(str(requirement))
    return found


def _pinned(text: str) -> str:
    """``name==installed version`` (local labels such as +cpu dropped: a Space installs from PyPI),
    or the declared requirement when the package is not installed or its version does not fit."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.version import Version

    requirement = Requirement(text)
    try:
        installed = Version(metadata.version(requirement.name))
    except metadata.PackageNotFoundError:
        return text
    if not requirement.specifier.contains(installed, prereleases=True):
        return text
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker is not None else ""
    return f"{requirement.name}{extras}=={installed.public}{marker}"


def space_requirements(ecg_hub_requirement: str | None = None) -> list[str]:
    """The lines of a Space's requirements.txt: ecg-hub itself (default ``ecg-hub==<this version>``;
    e.g. a ``git+https://...`` URL instead), Gradio at the installed version, and ecg-hub's
    dependencies pinned at the versions installed here (the ones this demo ran with)."""
    from importlib import metadata

    lines = [ecg_hub_requirement or f"ecg-hub=={__version__}"]
    try:
        lines.append(f"gradio=={metadata.version('gradio')}")
    except metadata.PackageNotFoundError:
        lines.append("gradio>=5")
    lines += [_pinned(text) for text in _declared_requirements()]
    return lines


def _space_readme(model_id: str, gradio_version: str, title: str) -> str:
    return f"""---
title: {title}
emoji: 🫀
colorFrom: red
colorTo: gray
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: apache-2.0
models:
  - {model_id}
short_description: 12-lead ECG predictions and saliency with ecg-hub
---

# {title}

An ecg-hub demo of the model [{model_id}](https://huggingface.co/{model_id}):
upload a 12-lead ECG (WFDB `.hea` + `.dat`, PhysioNet `.mat` + `.hea`, CODE-15 `.mat`, SPH `.h5`,
or a CSV with one column per lead) or pick a bundled synthetic example, and see the 12-lead plot,
the model's scores (a fine-tuned classifier's classes, or zero-shot scores for labels you type)
and, for classifiers, an integrated-gradients saliency map.

The examples are synthetic signals, not patients. Uploaded files are deleted from the app's cache
within two hours. {_DISCLAIMER}

Written by `ecg-hub demo --space` (ecg-hub {__version__}); run it locally with
`pip install -r requirements.txt && python app.py`.
"""


def write_space(
    directory: str | os.PathLike,
    model_id: str,
    *,
    ecg_hub_requirement: str | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face Space folder that runs the demo of the Hub model ``model_id``: app.py
    (``build_demo(model_id).launch()``), requirements.txt (:func:`space_requirements`) and
    README.md (the Space's YAML front matter: Gradio SDK at the installed version, app.py).

    The folder is written under a temporary name next to ``directory`` and renamed at the end, so an
    interrupted run never leaves a half-written Space.

    Raises:
        ValueError: for a ``model_id`` that is not a Hub repo id (e.g. a local folder: a Space
            downloads its model from the Hub), or an existing ``directory`` without ``overwrite``.
    """
    from importlib import metadata

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.isdir(model_id):
        raise ValueError(
            f"ecg-hub demo --space: MODEL_ID {model_id!r} is a local folder; a Space downloads its model "
            "from the Hub, so publish it first (ecg-hub publish) and pass its repo id (owner/name)"
        )
    try:
        validate_repo_id(model_id)
    except HFValidationError as error:
        raise ValueError(
            f"ecg-hub demo --space: MODEL_ID {model_id!r} is not a Hub repo id (owner/name): {error}"
        ) from None
    target = Path(directory)
    if target.exists() and not overwrite:
        raise ValueError(f"ecg-hub demo --space: {target} exists; choose another folder or pass --overwrite")
    try:
        gradio_version = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise ValueError(
            "ecg-hub demo --space: Gradio is not installed; the Space's sdk_version is the installed Gradio"
        ) from None
    title = title or "ecg-hub ECG demo"
    app = (
        f'"""Hugging Face Space: the ecg-hub demo of {model_id} (written by ecg-hub demo --space)."""\n\n'
        # model_id is a validated repo id (letters, digits, ._-/): safe between double quotes.
        f'from ecg_hub.demo import build_demo\n\nbuild_demo("{model_id}").launch()\n'
    )
    files = {
        "app.py": app,
        "requirements.txt": "\n".join(space_requirements(ecg_hub_requirement)) + "\n",
        "README.md": _space_readme(model_id, gradio_version, title),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        if target.exists():
            # Move the old folder aside first: the new one takes its name in one rename.
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            previous.rmdir()
            target.rename(previous)
            staging.rename(target)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
