"""Looking at the token ids of an ECG2TOK stage-A tokenizer: one record drawn with its codes, and a
report of what the codes fall on (R peaks, P / QRS / T waves, baseline) over a dataset.

- :func:`load_tokenizer`: the tokenizer (``Ecg2TokTokenizerModel.from_pretrained``, never remote
  code) and its own feature extractor (``preprocessor_config.json`` of the same folder).
- :func:`encode_rows`: dataset rows -> preprocessed signals, masks and ids ``(batch, leads, patches)``.
- :func:`plot_tokens`: the leads of one record with each patch shaded by its code, plus a code-usage
  histogram, written atomically as a PNG (``ecg-hub tokens show``).
- :func:`token_report`: per-code counts, R-peak share, wave-segment shares, most enriched label,
  the mutual information between code and "patch holds an R peak", the share of codes that sit on
  the baseline (``ecg-hub tokens report``).

The waves come from lead II of the preprocessed signal (the signal the tokenizer saw, at the
model's rate): ``neurokit2.ecg_clean`` then ``ecg_peaks`` (R peaks) and ``ecg_delineate`` (wave
boundaries, ``dwt`` by default). The leads are simultaneous, so the lead II annotation is used for
the patches of every lead at the same time. A patch's segment is the wave (P, QRS from R onset to R
offset, T) that covers most of its samples, or ``isoelectric`` when it overlaps none of them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ecg_hub.utils import save_figure_atomic

IGNORE_INDEX = -100
SEGMENTS = ("P", "QRS", "T", "isoelectric")
#: neurokit2 wave-boundary keys of each wave segment (onset, offset).
_WAVE_KEYS = {
    "P": ("ECG_P_Onsets", "ECG_P_Offsets"),
    "QRS": ("ECG_R_Onsets", "ECG_R_Offsets"),
    "T": ("ECG_T_Onsets", "ECG_T_Offsets"),
}
#: A report warns when more than this share of the codes mostly fall on isoelectric patches.
ISOELECTRIC_WARNING_SHARE = 0.5

__all__ = [
    "SEGMENTS",
    "code_colors",
    "encode_rows",
    "find_record",
    "load_tokenizer",
    "plot_tokens",
    "select_split",
    "show_record",
    "token_report",
    "wave_annotation",
]


# -- loading ---------------------------------------------------------------------------------------


def load_tokenizer(model: str | os.PathLike):
    """``(tokenizer, feature_extractor)`` of a stage-A ECG2TOK folder or Hub id (no remote code)."""
    from ecg_hub.modeling.feature_extraction_ecg import EcgFeatureExtractor
    from ecg_hub.modeling.modeling_ecg2tok import Ecg2TokTokenizerModel

    tokenizer = Ecg2TokTokenizerModel.from_pretrained(str(model)).eval()
    feature_extractor = EcgFeatureExtractor.from_pretrained(str(model))
    return tokenizer, feature_extractor


def load_dataset(path: str | os.PathLike, split: str | None = None):
    """A prepared dataset folder (``datasets.load_from_disk``) as one ``Dataset``, of one split if given."""
    import datasets

    from ecg_hub.data.splits import load_dataset_folder

    dataset = load_dataset_folder(path)
    if split is None and isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.concatenate_datasets(list(dataset.values()))
    return select_split(dataset, split)


def select_split(dataset, split: str | None):
    """The rows of ``split`` (``None``: all rows), with an error naming the splits that exist."""
    if split is None:
        return dataset
    import datasets

    from ecg_hub.data.splits import dataset_split

    if isinstance(dataset, datasets.DatasetDict):
        present = list(dataset.keys())
    elif "split" in dataset.column_names:
        present = sorted({str(v) for v in dataset.unique("split")})
    else:
        raise ValueError(f"dataset has no 'split' column; cannot select split {split!r}")
    if split not in present:
        raise ValueError(f"dataset has no split {split!r}; its splits are {present}")
    return dataset_split(dataset, split)


def find_record(dataset, record_id: str) -> dict:
    """The row (numpy format) whose ``record_id`` is ``record_id``; ``KeyError`` naming it if absent."""
    if "record_id" not in dataset.column_names:
        raise KeyError(f"record {record_id!r}: the dataset has no 'record_id' column")
    ids = [str(r) for r in dataset["record_id"]]
    try:
        index = ids.index(str(record_id))
    except ValueError:
        close = [r for r in ids if str(record_id) in r][:5]
        hint = f"; similar ids: {close}" if close else f"; e.g. {ids[:3]}" if ids else ""
        raise KeyError(f"record {record_id!r} is not in the dataset ({len(ids)} records){hint}") from None
    return dataset.with_format("numpy")[index]


# -- encoding --------------------------------------------------------------------------------------


def encode_rows(tokenizer, feature_extractor, rows: Sequence[dict]) -> dict[str, np.ndarray]:
    """Rows (``signal``, ``sampling_rate``, ``leads``) -> ``input_values`` (B, L, T) float32,
    ``attention_mask`` (B, T), ``lead_mask`` (B, L) and ``ids`` (B, L, patches) int64 (-100 for
    missing leads and padded time), as numpy arrays."""
    import torch

    features = feature_extractor(list(rows), return_tensors="pt")
    attention_mask = features.get("attention_mask")
    lead_mask = features.get("lead_mask")
    with torch.no_grad():
        ids = tokenizer.encode(features["input_values"], lead_mask=lead_mask, attention_mask=attention_mask)
    batch, leads, samples = features["input_values"].shape
    return {
        "input_values": features["input_values"].numpy(),
        "attention_mask": attention_mask.numpy() if attention_mask is not None else np.ones((batch, samples), np.int64),
        "lead_mask": lead_mask.numpy() if lead_mask is not None else np.ones((batch, leads), np.int64),
        "ids": ids.cpu().numpy().astype(np.int64),
    }


# -- waves -----------------------------------------------------------------------------------------


def wave_annotation(signal: np.ndarray, sampling_rate: float, method: str = "dwt") -> dict[str, Any]:
    """R peaks and per-sample wave segment of one lead.

    Returns ``{"r_peaks": int array, "segment": (samples,) int8 array}`` where ``segment`` holds the
    index in :data:`SEGMENTS` (``3`` = isoelectric). Raises ``ValueError`` when neurokit2 finds no
    R peak or cannot delineate the waves.
    """
    import neurokit2 as nk

    signal = np.asarray(signal, dtype=np.float64)
    if signal.size == 0 or not np.isfinite(signal).all() or np.ptp(signal) == 0:
        raise ValueError("flat, empty or non-finite signal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            clean = nk.ecg_clean(signal, sampling_rate=int(sampling_rate))
            _, info = nk.ecg_peaks(clean, sampling_rate=int(sampling_rate))
            r_peaks = np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
            if r_peaks.size < 2:
                raise ValueError(f"{r_peaks.size} R peak(s) found")
            _, waves = nk.ecg_delineate(clean, r_peaks, sampling_rate=int(sampling_rate), method=method)
        except ValueError:
            raise
        except Exception as error:  # neurokit2 raises IndexError, KeyError, ... on odd signals
            raise ValueError(f"neurokit2 {method!r} delineation failed: {type(error).__name__}: {error}") from error
    segment = np.full(signal.size, SEGMENTS.index("isoelectric"), dtype=np.int8)
    found = 0
    for name, (on_key, off_key) in _WAVE_KEYS.items():
        onsets = np.asarray(waves.get(on_key, []), dtype=np.float64)
        offsets = np.asarray(waves.get(off_key, []), dtype=np.float64)
        for onset, offset in zip(onsets, offsets):
            if not (np.isfinite(onset) and np.isfinite(offset)) or offset < onset:
                continue
            segment[int(max(onset, 0)) : int(min(offset, signal.size - 1)) + 1] = SEGMENTS.index(name)
            found += 1
    if found == 0:
        raise ValueError(f"neurokit2 {method!r} delineation found no P, QRS or T boundaries")
    return {"r_peaks": r_peaks, "segment": segment}


def _patch_annotation(annotation: dict, num_patches: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(has_r_peak (patches,) bool, segment (patches,) int)`` from a per-sample annotation."""
    segment = annotation["segment"]
    has_r = np.zeros(num_patches, dtype=bool)
    patch_of_peak = annotation["r_peaks"] // patch_size
    has_r[patch_of_peak[(patch_of_peak >= 0) & (patch_of_peak < num_patches)]] = True
    iso = SEGMENTS.index("isoelectric")
    patch_segment = np.full(num_patches, iso, dtype=np.int64)
    for p in range(num_patches):
        chunk = segment[p * patch_size : (p + 1) * patch_size]
        waves = np.bincount(chunk[chunk != iso], minlength=len(SEGMENTS))[:iso] if chunk.size else np.zeros(iso)
        if waves.sum() > 0:
            patch_segment[p] = int(np.argmax(waves))
    return has_r, patch_segment


# -- the report ------------------------------------------------------------------------------------


def token_report(
    tokenizer,
    dataset,
    feature_extractor=None,
    *,
    max_records: int | None = None,
    top_k: int = 10,
    label_column: str | None = None,
    batch_size: int = 32,
    lead: str = "II",
    method: str = "dwt",
) -> dict[str, Any]:
    """What the codes of a tokenizer fall on, over (up to ``max_records``) rows of ``dataset``.

    Args:
        tokenizer: an ``Ecg2TokTokenizerModel`` (or a folder / Hub id, loaded with :func:`load_tokenizer`).
        dataset: a ``datasets.Dataset`` of rows (``signal``, ``sampling_rate``, ``leads``, ``record_id``).
        feature_extractor: the tokenizer's ``EcgFeatureExtractor`` (required with a model object).
        max_records: encode the first N rows only.
        top_k: number of codes in ``top`` (the most frequent).
        label_column: a ``Sequence(ClassLabel)`` column; each code gets its most enriched label.
        lead: the lead the waves are found on.
        method: ``neurokit2.ecg_delineate`` method.

    Returns a JSON-able dict: ``num_records`` (analysed), ``num_skipped`` and ``skipped`` (record id,
    reason: records whose waves could not be found, left out of every figure), ``num_patches``
    (valid patches), ``codebook_size``, ``codes_used``, ``codes`` (one row per used code, most
    frequent first: ``code``, ``count``, ``share``, ``r_peak_share``, ``segment_shares`` {P, QRS, T,
    isoelectric}, ``majority_segment``, and with ``label_column`` ``num_records`` (records where
    the code occurs), ``enriched_label`` and ``enrichment``: the label with the highest ratio of its
    frequency among those records to its frequency among all analysed records, ``None`` when no
    ratio exceeds 1), ``top`` (the first ``top_k`` rows), ``mutual_information_bits`` (code vs
    "patch holds an R peak"), ``r_peak_share_of_patches``, ``r_peak_majority_code`` and
    ``isoelectric_majority_code`` (most frequent code of R-peak / isoelectric patches, with their
    shares), ``isoelectric_code_share`` (share of used codes with more than half of their patches
    isoelectric; a warning above 50 %) and ``warnings``.
    """
    from sklearn.metrics import mutual_info_score

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer, loaded = load_tokenizer(tokenizer)
        feature_extractor = feature_extractor or loaded
    if feature_extractor is None:
        raise ValueError("token_report: give the tokenizer's feature_extractor (or a model folder)")
    config = tokenizer.config
    lead_names = list(getattr(config, "lead_names", None) or feature_extractor.leads)
    if lead not in lead_names:
        raise ValueError(f"token_report: the tokenizer has no lead {lead!r} to find the waves on; its leads are {lead_names}")
    lead_index = lead_names.index(lead)
    patch_size = int(config.patch_size)
    sampling_rate = float(feature_extractor.sampling_rate)
    codebook_size = int(config.codebook_size)

    label_names: list[str] = []
    if label_column is not None:
        from ecg_hub.data.labels import label_names as _label_names

        label_names = _label_names(dataset, label_column)

    total = len(dataset) if max_records is None else min(int(max_records), len(dataset))
    if total == 0:
        raise ValueError("token_report: the dataset has no records")
    rows_view = dataset.with_format("numpy")
    all_ids, all_r, all_seg = [], [], []
    record_codes: list[np.ndarray] = []  # codes present in each analysed record
    record_labels: list[np.ndarray] = []  # multi-hot labels of each analysed record
    skipped: list[dict[str, str]] = []
    for start in range(0, total, batch_size):
        rows = [rows_view[i] for i in range(start, min(start + batch_size, total))]
        encoded = encode_rows(tokenizer, feature_extractor, rows)
        for b, row in enumerate(rows):
            record_id = str(row.get("record_id", start + b))
            if not encoded["lead_mask"][b, lead_index]:
                skipped.append({"record_id": record_id, "reason": f"lead {lead} missing"})
                continue
            real = int(encoded["attention_mask"][b].sum())
            try:
                annotation = wave_annotation(encoded["input_values"][b, lead_index, :real], sampling_rate, method=method)
            except ValueError as error:
                skipped.append({"record_id": record_id, "reason": str(error)})
                continue
            ids = encoded["ids"][b]  # (leads, patches)
            has_r, segment = _patch_annotation(annotation, ids.shape[1], patch_size)
            valid = ids != IGNORE_INDEX
            all_ids.append(ids[valid])
            all_r.append(np.broadcast_to(has_r, ids.shape)[valid])
            all_seg.append(np.broadcast_to(segment, ids.shape)[valid])
            record_codes.append(np.unique(ids[valid]))
            if label_column is not None:
                hot = np.zeros(len(label_names), dtype=bool)
                hot[np.asarray(row[label_column], dtype=np.int64)] = True
                record_labels.append(hot)

    report: dict[str, Any] = {
        "num_records": len(record_codes),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "codebook_size": codebook_size,
        "lead": lead,
        "delineation_method": method,
        "label_column": label_column,
        "warnings": [],
    }
    if not record_codes:
        raise ValueError(
            f"token_report: no record could be analysed ({len(skipped)} skipped; first: "
            f"{skipped[0]['record_id']}: {skipped[0]['reason']})"
        )
    ids = np.concatenate(all_ids)
    has_r = np.concatenate(all_r)
    segment = np.concatenate(all_seg)
    num_patches = int(ids.size)
    iso = SEGMENTS.index("isoelectric")

    label_matrix = np.stack(record_labels) if record_labels else None
    overall_label_freq = label_matrix.mean(axis=0) if label_matrix is not None else None
    counts = np.bincount(ids, minlength=codebook_size)
    codes = []
    for code in np.argsort(-counts, kind="stable"):
        count = int(counts[code])
        if count == 0:
            continue
        mask = ids == code
        seg_counts = np.bincount(segment[mask], minlength=len(SEGMENTS))
        row = {
            "code": int(code),
            "count": count,
            "share": count / num_patches,
            "r_peak_share": float(has_r[mask].mean()),
            "segment_shares": {name: float(seg_counts[i] / count) for i, name in enumerate(SEGMENTS)},
            "majority_segment": SEGMENTS[int(np.argmax(seg_counts))],
        }
        if label_matrix is not None:
            present = np.array([code in c for c in record_codes])
            freq = label_matrix[present].mean(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(overall_label_freq > 0, freq / overall_label_freq, np.nan)
            # No label is enriched when the code occurs in every record alike (every ratio <= 1).
            if np.isfinite(ratio).any() and np.nanmax(ratio) > 1.0:
                best = int(np.nanargmax(ratio))
                row["enriched_label"] = label_names[best]
                row["enrichment"] = float(ratio[best])
            else:
                row["enriched_label"], row["enrichment"] = None, None
            row["num_records"] = int(present.sum())
        codes.append(row)

    def majority(mask: np.ndarray) -> dict[str, Any] | None:
        if not mask.any():
            return None
        code, count = Counter(ids[mask].tolist()).most_common(1)[0]
        return {"code": int(code), "share": count / int(mask.sum()), "num_patches": int(mask.sum())}

    mi_nats = float(mutual_info_score(ids, has_r.astype(np.int64)))
    iso_codes = [row for row in codes if row["segment_shares"]["isoelectric"] > 0.5]
    iso_code_share = len(iso_codes) / len(codes)
    report.update(
        num_patches=num_patches,
        codes_used=len(codes),
        codes=codes,
        top=codes[: max(int(top_k), 0)],
        mutual_information_bits=mi_nats / math.log(2),
        r_peak_share_of_patches=float(has_r.mean()),
        segment_shares_of_patches={name: float((segment == i).mean()) for i, name in enumerate(SEGMENTS)},
        r_peak_majority_code=majority(has_r),
        isoelectric_majority_code=majority(segment == iso),
        isoelectric_codes=[row["code"] for row in iso_codes],
        isoelectric_code_share=iso_code_share,
    )
    if iso_code_share > ISOELECTRIC_WARNING_SHARE:
        report["warnings"].append(
            f"{len(iso_codes)} of {len(codes)} used codes ({iso_code_share:.0%}) fall mostly on isoelectric patches "
            f"(more than {ISOELECTRIC_WARNING_SHARE:.0%}): the codebook spends its capacity on the baseline"
        )
    if skipped:
        report["warnings"].append(f"{len(skipped)} record(s) skipped: their waves could not be found on lead {lead}")
    return report


# -- plotting --------------------------------------------------------------------------------------


def code_colors(codebook_size: int) -> np.ndarray:
    """``(codebook_size, 4)`` RGBA: a qualitative palette (tab20, tab20b, tab20c; cycled beyond 60
    codes), so code ``k`` has the same colour in every figure of the same codebook size."""
    import matplotlib

    if codebook_size <= 10:
        palette = list(matplotlib.colormaps["tab10"].colors)
    else:
        palette = [c for name in ("tab20", "tab20b", "tab20c") for c in matplotlib.colormaps[name].colors]
    return np.array([(*palette[k % len(palette)], 1.0) for k in range(codebook_size)])


def plot_tokens(
    signal: np.ndarray,
    ids: np.ndarray,
    *,
    sampling_rate: float,
    patch_size: int,
    lead_names: Sequence[str],
    codebook_size: int,
    lead_mask: np.ndarray | None = None,
    out_path: str | os.PathLike | None = None,
    title: str | None = None,
    usage_counts: np.ndarray | None = None,
    usage_label: str = "this record",
    dpi: int = 100,
):
    """Draw one record's leads with each patch shaded by the colour of its code and the id above it,
    plus a code-usage histogram.

    Args:
        signal: ``(leads, samples)`` preprocessed signal (the tokenizer's input).
        ids: ``(leads, patches)`` code ids, ``-100`` for missing leads / padded time.
        lead_mask: ``(leads,)`` 1 present, 0 missing (drawn as "missing"); default: leads whose
            ids are all ``-100`` are missing.
        usage_counts: ``(codebook_size,)`` counts for the histogram (default: this record's ids).
        out_path: write the figure there atomically (temp file then rename), close it and return
            the path; else return the figure.
    """
    import matplotlib

    if out_path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    signal = np.asarray(signal, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    num_leads, num_patches = ids.shape
    if lead_mask is None:
        lead_mask = (ids != IGNORE_INDEX).any(axis=1)
    lead_mask = np.asarray(lead_mask).astype(bool)
    colors = code_colors(codebook_size)
    fs = float(sampling_rate)
    duration = num_patches * patch_size / fs
    time = np.arange(signal.shape[1]) / fs
    if usage_counts is None:
        usage_counts = np.bincount(ids[ids != IGNORE_INDEX], minlength=codebook_size)

    fig = plt.figure(figsize=(max(12.0, duration * 1.6), 1.15 * num_leads + 2.6), dpi=dpi)
    # One spacer row between the last lead (and its time axis) and the histogram.
    grid = fig.add_gridspec(num_leads + 2, 1, height_ratios=[1.0] * num_leads + [0.45, 1.9], hspace=0.35)
    id_font = 6 if num_patches > 40 else 7
    for lead in range(num_leads):
        ax = fig.add_subplot(grid[lead])
        ax.set_xlim(0, duration)
        ax.set_yticks([])
        ax.set_ylabel(str(lead_names[lead]), rotation=0, ha="right", va="center", fontsize=9)
        if lead < num_leads - 1:
            ax.set_xticklabels([])
        else:
            ax.set_xlabel("time (s)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if not lead_mask[lead]:
            ax.set_facecolor("#eeeeee")
            ax.set_ylim(0, 1)
            ax.text(duration / 2, 0.5, "missing", ha="center", va="center", fontsize=10, color="#777777", style="italic")
            continue
        trace = signal[lead]
        low, high = float(np.min(trace)), float(np.max(trace))
        span = max(high - low, 1e-3)
        top = high + 0.45 * span
        ax.set_ylim(low - 0.08 * span, top)
        for p in range(num_patches):
            start, end = p * patch_size / fs, (p + 1) * patch_size / fs
            code = int(ids[lead, p])
            if code == IGNORE_INDEX:
                ax.axvspan(start, end, facecolor="#dddddd", hatch="//", edgecolor="#bbbbbb", linewidth=0)
                continue
            ax.axvspan(start, end, facecolor=colors[code], alpha=0.45, linewidth=0)
            ax.text((start + end) / 2, high + 0.22 * span, str(code), ha="center", va="center", fontsize=id_font)
        ax.plot(time, trace, color="black", linewidth=0.7)
    hist = fig.add_subplot(grid[num_leads + 1])
    hist.bar(np.arange(codebook_size), usage_counts, color=colors, edgecolor="#444444", linewidth=0.4)
    hist.set_xlim(-0.6, codebook_size - 0.4)
    hist.set_xlabel("code id", fontsize=8)
    hist.set_ylabel("patches", fontsize=8)
    hist.set_title(f"code usage ({usage_label}: {int(np.sum(usage_counts))} patches, "
                   f"{int(np.count_nonzero(usage_counts))} of {codebook_size} codes)", fontsize=9)
    if codebook_size <= 64:
        hist.set_xticks(np.arange(codebook_size))
    hist.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.95 if title else 0.98, bottom=0.05)
    if out_path is None:
        return fig
    try:
        return save_figure_atomic(fig, out_path, dpi=dpi)
    finally:
        plt.close(fig)


def show_record(
    tokenizer,
    feature_extractor,
    dataset,
    record_id: str,
    out_path: str | os.PathLike,
    *,
    dpi: int = 100,
) -> dict[str, Any]:
    """Encode one record of ``dataset`` and draw it with :func:`plot_tokens`; returns ``{"path",
    "record_id", "ids" (leads, patches) list, "lead_names"}``. ``KeyError`` naming an unknown record."""
    row = find_record(dataset, record_id)
    encoded = encode_rows(tokenizer, feature_extractor, [row])
    config = tokenizer.config
    lead_names = list(getattr(config, "lead_names", None) or feature_extractor.leads)
    title_parts = [
        f"{row['record_id']}",
        f"{int(config.codebook_size)} codes, {int(config.patch_size)}-sample patches at {float(feature_extractor.sampling_rate):g} Hz",
    ]
    from ecg_hub.data.labels import label_columns, label_names

    for column in label_columns(dataset):
        names = label_names(dataset, column)
        title_parts.append(f"{column}: {', '.join(names[int(i)] for i in row[column]) or '-'}")
    path = plot_tokens(
        encoded["input_values"][0],
        encoded["ids"][0],
        sampling_rate=float(feature_extractor.sampling_rate),
        patch_size=int(config.patch_size),
        lead_names=lead_names,
        codebook_size=int(config.codebook_size),
        lead_mask=encoded["lead_mask"][0],
        out_path=out_path,
        title="  |  ".join(title_parts),
        dpi=dpi,
    )
    return {"path": str(path), "record_id": str(row["record_id"]), "ids": encoded["ids"][0].tolist(), "lead_names": lead_names}
