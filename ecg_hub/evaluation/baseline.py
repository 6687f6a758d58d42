"""The hand-crafted baseline of the ecg-hub protocol: ECG measurements + logistic regression.

Every results table should carry the floor a learned representation must beat. This module scores
a classic pipeline on the same splits, label fractions, seeds and metrics as the linear probe
(:mod:`ecg_hub.evaluation.protocol`), and writes the same results JSON (:mod:`ecg_hub.results`) for
a run named ``"baseline: handcrafted features"`` with the protocol ``"handcrafted-features"``.

Features (:func:`handcrafted_features`, 120 per record; units in the names: mV, ms, bpm, deg):

- rhythm, from the R peaks of lead II (``neurokit2.ecg_clean`` + ``neurokit2.ecg_peaks``): heart
  rate, RR mean / standard deviation (SDNN) / RMSSD / coefficient of variation, beat count, and
  ``peaks_from_lead_ii`` (1: lead II; 0: lead II was absent, masked, flat or gave fewer than 3
  plausible beats, and the usable lead with the largest R amplitude was used instead);
- intervals, from ``neurokit2.ecg_delineate(method="prominence")`` on the same lead, medians over
  beats: PR (P onset to QRS onset), QRS duration, QT (QRS onset to T offset) and QTc (Bazett).
  Measured on PTB-XL at 100 Hz, the prominence method gives physiological values (PR 120-170,
  QRS 70-100, QT 370-450 ms) in 12 ms per record; the wavelet method (``dwt``, neurokit2's
  default) gave PR 60 ms and QRS 170 ms on the same records, in 9x the time;
- per lead of the standard 12 (``<feature>_<lead>``): mean, std, min and max of the cleaned lead,
  and from the median beat (the raw signal around every R peak, each beat levelled at its PR
  segment): R amplitude (largest QRS deflection), QRS minimum (deepest Q/S), QRS peak-to-peak,
  ST level at J + 60 ms and the signed T-wave extreme;
- the frontal QRS axis from the net QRS deflections of leads I and aVF.

A feature that cannot be measured (a flat, masked or absent lead, too few beats, a failed or
implausible delineation) is NaN. The classifier imputes it with the median of the training records
it is fitted on (``SimpleImputer``); the results record how many values were imputed per split.
Nothing in the extraction raises on a flat, noisy or short record.

Classifier (:func:`make_classifier`): ``SimpleImputer(median) -> StandardScaler ->
LogisticRegression`` (L2, lbfgs), one-vs-rest for multi-label tasks, multinomial for single-label.
``C`` and ``class_weight`` (``None`` or ``"balanced"``) are chosen on validation macro AUROC (the
protocol's selection metric) from a grid of 5 x 2 (:class:`BaselineConfig`); the test split is
scored once with the chosen pair, by :func:`ecg_hub.results.score_run`, so the metrics, the
validation-tuned F1 thresholds and the bootstrap intervals are those of every model. Class
weighting is left to validation rather than fixed: on the PTB-XL subset (superclass) fixing it
either way changed test macro AUROC by at most 0.003 at 1, 10 and 100 % labels, so the choice
costs nothing in honesty and only 1 s of fitting; with rarer classes it may matter more.

Speed: features are computed once per split, in ``num_workers`` processes (about 25 ms per
12-lead 10-s record at 100 Hz), and cached in a small ``.npz`` keyed by the split's records, the
feature settings and the neurokit2 version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ecg_hub.modeling.leads import STANDARD_LEADS, canonical_lead_name

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE_NAME",
    "BASELINE_PROTOCOL",
    "BaselineConfig",
    "FeatureMatrix",
    "dataset_features",
    "evaluate_baseline",
    "feature_names",
    "fit_baseline",
    "handcrafted_features",
    "make_classifier",
    "predict_scores",
    "run_feature_baseline",
]

#: The results document's ``model`` for this baseline, and the ``protocol`` of its entries.
BASELINE_NAME = "baseline: handcrafted features"
BASELINE_PROTOCOL = "handcrafted-features"
#: Bump when a feature's definition changes: it is part of the cache key and of the results JSON.
FEATURE_VERSION = 1

RHYTHM_FEATURES = (
    "heart_rate_bpm",
    "rr_mean_ms",
    "rr_std_ms",
    "rr_rmssd_ms",
    "rr_cv",
    "beat_count",
    "peaks_from_lead_ii",
)
INTERVAL_FEATURES = ("pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms")
LEAD_FEATURES = (
    "mean_mv",
    "std_mv",
    "min_mv",
    "max_mv",
    "r_amp_mv",
    "qrs_min_mv",
    "qrs_p2p_mv",
    "st_j60_mv",
    "t_amp_mv",
)
GLOBAL_FEATURES = ("qrs_axis_deg",)

# A lead whose standard deviation is below this is flat (no signal): PTB-XL's resolution is 1 uV and
# a real lead's std is 0.1-0.5 mV.
FLAT_STD_MV = 0.005
# Fewest R peaks for a usable rhythm (two RR intervals: RMSSD needs two).
MIN_BEATS = 3
# Plausible mean RR (ms): 24-300 bpm. A detection outside this range is treated as failed.
RR_RANGE_MS = (200.0, 2500.0)
# Plausible interval medians (ms); a delineation outside them is NaN (a failed measurement).
INTERVAL_RANGES_MS = {"pr_ms": (50.0, 400.0), "qrs_ms": (40.0, 250.0), "qt_ms": (200.0, 700.0)}
# Median-beat window around each R peak (s): 250 ms before (P wave), 600 ms after (T wave end).
BEAT_WINDOW_S = (0.25, 0.60)
# QRS search window around the R peak of the reference lead (s). The other leads' extremes can lead
# or lag lead II's R by tens of ms (the R' of a bundle-branch block in V1 up to ~90 ms).
QRS_WINDOW_S = (0.07, 0.09)
# Fallback fiducials relative to the R peak (s) when delineation gives no plausible value:
# QRS onset 50 ms before, offset (J point) 50 ms after, a narrow QRS of ~100 ms.
DEFAULT_QRS_ONSET_S = -0.05
DEFAULT_QRS_OFFSET_S = 0.05
# ST level is read 60 ms after the J point (the ST-segment monitoring convention, J+60).
ST_AFTER_J_S = 0.06
# T wave: from 80 ms after J to the earlier of 600 ms after R and 65 % of the median RR (so that a
# fast rhythm's next P/QRS is not read as T).
T_START_AFTER_J_S = 0.08
T_END_S = 0.60
T_END_RR_FRACTION = 0.65


def feature_names() -> list[str]:
    """The 120 feature names, in the column order of :func:`handcrafted_features`."""
    per_lead = [f"{feature}_{lead}" for feature in LEAD_FEATURES for lead in STANDARD_LEADS]
    return [*RHYTHM_FEATURES, *INTERVAL_FEATURES, *per_lead, *GLOBAL_FEATURES]


def feature_settings() -> dict:
    """What defines the features (recorded in the results JSON and hashed into the cache key)."""
    import neurokit2

    return {
        "features": "handcrafted",
        "feature_version": FEATURE_VERSION,
        "neurokit2_version": neurokit2.__version__,
        "clean": "neurokit2.ecg_clean(method='neurokit')",
        "peaks": "neurokit2.ecg_peaks(method='neurokit') on lead II, fallback: largest R amplitude",
        "delineation": "neurokit2.ecg_delineate(method='prominence')",
        "flat_std_mv": FLAT_STD_MV,
        "min_beats": MIN_BEATS,
        "beat_window_s": list(BEAT_WINDOW_S),
        "qrs_window_s": list(QRS_WINDOW_S),
        "st_after_j_s": ST_AFTER_J_S,
        "num_features": len(feature_names()),
        "feature_names": feature_names(),
    }


# --- one record ---------------------------------------------------------------------------------


def _lead_rows(leads: Sequence[str], num_rows: int) -> np.ndarray:
    """(12,) row of each standard lead in the signal, -1 where absent (unknown names are ignored)."""
    if len(leads) != num_rows:
        raise ValueError(
            f"leads: {len(leads)} names for a signal with {num_rows} rows; expected one name per row"
        )
    rows = np.full(len(STANDARD_LEADS), -1)
    for row, name in enumerate(leads):
        try:
            rows[STANDARD_LEADS.index(canonical_lead_name(str(name)))] = row
        except ValueError:  # e.g. Frank X/Y/Z of the PTB Diagnostic database: not a feature lead
            continue
    return rows


@functools.lru_cache(maxsize=8)
def _clean_filters(sampling_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The two filters of ``neurokit2.ecg_clean(method="neurokit")`` at this rate: a 5th-order
    0.5 Hz Butterworth high-pass (second-order sections) and the 50 Hz moving average (one powerline
    period, at least 2 samples), designed once per rate rather than once per lead."""
    from scipy.signal import butter

    sos = butter(5, 0.5, btype="highpass", output="sos", fs=sampling_rate)
    taps = np.ones(int(sampling_rate / 50)) if sampling_rate >= 100 else np.ones(2)
    return sos, taps


def _clean_leads(leads: np.ndarray, sampling_rate: float) -> np.ndarray | None:
    """``neurokit2.ecg_clean(lead, sampling_rate, method="neurokit")`` of every row at once (the same
    zero-phase filters, ``sosfiltfilt`` then ``filtfilt(method="pad")``, along the last axis;
    tests/test_baseline.py checks it equals neurokit2's per-lead result). 70 % of the extraction
    time went into redesigning the same Butterworth filter for each of the 12 leads."""
    from scipy.signal import filtfilt, sosfiltfilt

    sos, taps = _clean_filters(float(sampling_rate))
    try:
        cleaned = filtfilt(taps, [len(taps)], sosfiltfilt(sos, leads, axis=-1), axis=-1, method="pad")
    except ValueError:  # shorter than the filters' padding: nothing to measure
        return None
    return cleaned


def _r_peaks(cleaned: np.ndarray, sampling_rate: float) -> np.ndarray:
    """R-peak sample indices, or an empty array when detection fails or looks implausible."""
    import neurokit2 as nk

    try:
        _, info = nk.ecg_peaks(cleaned, sampling_rate=sampling_rate, method="neurokit")
        peaks = np.unique(np.asarray(info["ECG_R_Peaks"], dtype=np.int64))
    except Exception:  # noqa: BLE001
        return np.zeros(0, dtype=np.int64)
    if len(peaks) < MIN_BEATS:
        return np.zeros(0, dtype=np.int64)
    rr_mean = np.mean(np.diff(peaks)) / sampling_rate * 1000.0
    if not RR_RANGE_MS[0] <= rr_mean <= RR_RANGE_MS[1]:
        return np.zeros(0, dtype=np.int64)
    return peaks


def _median_in_range(values: np.ndarray, low: float, high: float) -> float:
    """Median of the finite values, NaN when none, or when the median lies outside [low, high]."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    median = float(np.median(values))
    return median if low <= median <= high else math.nan


def _intervals(cleaned: np.ndarray, peaks: np.ndarray, sampling_rate: float) -> dict[str, float]:
    """PR, QRS, QT medians (ms) and the per-beat QRS onset / offset relative to R (samples)."""
    import neurokit2 as nk

    out = {"pr_ms": math.nan, "qrs_ms": math.nan, "qt_ms": math.nan, "onset": math.nan, "offset": math.nan}
    try:
        _, waves = nk.ecg_delineate(cleaned, peaks, sampling_rate=sampling_rate, method="prominence")
    except Exception:  # noqa: BLE001 - delineation fails on some noisy records: NaN, imputed later
        return out

    def wave(key: str) -> np.ndarray:
        values = np.asarray(waves.get(key, []), dtype=np.float64)
        return values if values.shape == peaks.shape else np.full(peaks.shape, np.nan)

    ms = 1000.0 / sampling_rate
    p_on, r_on, r_off, t_off = (
        wave(k) for k in ("ECG_P_Onsets", "ECG_R_Onsets", "ECG_R_Offsets", "ECG_T_Offsets")
    )
    out["pr_ms"] = _median_in_range((r_on - p_on) * ms, *INTERVAL_RANGES_MS["pr_ms"])
    out["qrs_ms"] = _median_in_range((r_off - r_on) * ms, *INTERVAL_RANGES_MS["qrs_ms"])
    out["qt_ms"] = _median_in_range((t_off - r_on) * ms, *INTERVAL_RANGES_MS["qt_ms"])
    # QRS onset 10-150 ms before R and offset 10-200 ms after it, else the defaults are used.
    out["onset"] = _median_in_range(r_on - peaks, -0.15 * sampling_rate, -0.01 * sampling_rate)
    out["offset"] = _median_in_range(r_off - peaks, 0.01 * sampling_rate, 0.20 * sampling_rate)
    return out


def handcrafted_features(
    signal: np.ndarray,
    sampling_rate: float,
    leads: Sequence[str],
    *,
    masked_leads: Sequence[str] = (),
) -> tuple[list[str], np.ndarray]:
    """The hand-crafted measurements of one record (see the module docstring).

    Args:
        signal: (leads, samples) in mV.
        sampling_rate: Hz.
        leads: one name per row of ``signal`` (any spelling :func:`canonical_lead_name` knows; other
            rows are ignored).
        masked_leads: leads whose rows are not a recording (the dataset's ``masked_leads`` column:
            flat, clipped or absent leads zero-filled by ``ecg-hub data prepare``); their features are NaN.

    Returns:
        ``(names, values)``: :func:`feature_names` and a (120,) float64 array, NaN where a feature
        could not be measured.

    Raises:
        ValueError: only for malformed input (a signal that is not 2-D, a lead list of the wrong
            length, a non-positive sampling rate), never for a flat or noisy recording.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"signal: expected a (leads, samples) array in mV, got shape {x.shape}")
    try:
        fs = float(sampling_rate)
    except (TypeError, ValueError):
        fs = math.nan
    if not math.isfinite(fs) or fs <= 0:
        raise ValueError(f"sampling_rate: expected a positive number of Hz, got {sampling_rate!r}")
    rows = _lead_rows(list(leads), x.shape[0])
    masked = set()
    for name in masked_leads:
        try:
            masked.add(canonical_lead_name(str(name)))
        except ValueError:
            continue
    with warnings.catch_warnings():
        # neurokit2 warns on short, flat or irregular signals (NeuroKitWarning, PeakPropertyWarning)
        # and NumPy on empty slices of failed delineations: those measurements end as NaN, which the
        # caller counts and imputes.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            values = _measure(x, fs, rows, masked)
    return feature_names(), values


def _measure(x: np.ndarray, fs: float, rows: np.ndarray, masked: set[str]) -> np.ndarray:
    """The body of :func:`handcrafted_features` on checked input: (120,) values, NaN where unmeasured."""
    names = feature_names()
    index = {name: i for i, name in enumerate(names)}
    values = np.full(len(names), np.nan)
    raw = np.full((len(STANDARD_LEADS), x.shape[1]), np.nan)
    usable = np.zeros(len(STANDARD_LEADS), dtype=bool)
    for k, lead in enumerate(STANDARD_LEADS):
        if rows[k] < 0 or lead in masked or x.shape[1] < 2 * fs:
            continue  # absent, masked (zero-filled) or shorter than 2 s: nothing to measure
        trace = x[rows[k]]
        if np.all(np.isfinite(trace)) and np.std(trace) >= FLAT_STD_MV:  # else broken or flat
            raw[k], usable[k] = trace, True
    cleaned = np.full_like(raw, np.nan)
    if usable.any():
        filtered = _clean_leads(raw[usable], fs)
        if filtered is None or not np.all(np.isfinite(filtered)):
            usable[:] = False
        else:
            cleaned[usable] = filtered

    for k, lead in enumerate(STANDARD_LEADS):
        if usable[k]:
            values[index[f"mean_mv_{lead}"]] = cleaned[k].mean()
            values[index[f"std_mv_{lead}"]] = cleaned[k].std()
            values[index[f"min_mv_{lead}"]] = cleaned[k].min()
            values[index[f"max_mv_{lead}"]] = cleaned[k].max()
    if not usable.any():
        return values

    # Reference lead for the beats: II, else the usable lead with the largest R amplitude (the 99th
    # percentile above the median of the cleaned lead: R peaks are the tallest positive deflections).
    lead_ii = STANDARD_LEADS.index("II")
    peaks = _r_peaks(cleaned[lead_ii], fs) if usable[lead_ii] else np.zeros(0, dtype=np.int64)
    reference = lead_ii
    if peaks.size == 0:
        heights = np.full(len(STANDARD_LEADS), -np.inf)
        heights[usable] = np.percentile(cleaned[usable], 99, axis=1) - np.median(cleaned[usable], axis=1)
        heights[lead_ii] = -np.inf
        for candidate in np.argsort(-heights):
            if not np.isfinite(heights[candidate]):
                break
            peaks = _r_peaks(cleaned[candidate], fs)
            if peaks.size:
                reference = int(candidate)
                break
    if peaks.size == 0:
        return values

    rr = np.diff(peaks) / fs * 1000.0  # ms
    values[index["rr_mean_ms"]] = rr.mean()
    values[index["heart_rate_bpm"]] = 60000.0 / rr.mean()
    values[index["rr_std_ms"]] = rr.std(ddof=1)  # SDNN, as neurokit2.hrv_time
    values[index["rr_rmssd_ms"]] = math.sqrt(np.mean(np.diff(rr) ** 2))
    values[index["rr_cv"]] = rr.std(ddof=1) / rr.mean()
    values[index["beat_count"]] = len(peaks)
    values[index["peaks_from_lead_ii"]] = float(reference == lead_ii)

    intervals = _intervals(cleaned[reference], peaks, fs)
    for name in ("pr_ms", "qrs_ms", "qt_ms"):
        values[index[name]] = intervals[name]
    values[index["qtc_bazett_ms"]] = intervals["qt_ms"] / math.sqrt(rr.mean() / 1000.0)  # QT / sqrt(RR in s)

    # Median beat of every lead: raw samples (not high-passed, which would bend the ST segment)
    # around each R peak whose whole window lies inside the record.
    before, after = (round(s * fs) for s in BEAT_WINDOW_S)
    inside = peaks[(peaks - before >= 0) & (peaks + after < x.shape[1])]
    if inside.size == 0:
        return values
    offsets = np.arange(-before, after + 1)
    beats = raw[:, inside[:, None] + offsets[None, :]]  # (12, beats, window)
    onset = intervals["onset"] if math.isfinite(intervals["onset"]) else DEFAULT_QRS_ONSET_S * fs
    offset = intervals["offset"] if math.isfinite(intervals["offset"]) else DEFAULT_QRS_OFFSET_S * fs
    # Each beat levelled at its PR segment (the 30 ms before QRS onset): removes baseline wander.
    iso = np.arange(round(onset - 0.03 * fs), round(onset) + 1) + before
    beats = beats - beats[:, :, iso].mean(axis=2, keepdims=True)
    template = np.median(beats, axis=1)  # (12, window); NaN rows for unusable leads

    def span(start: float, stop: float) -> np.ndarray:
        """Template columns from ``start`` to ``stop`` samples relative to R, clipped to the window."""
        first = int(np.clip(round(start) + before, 0, len(offsets) - 1))
        last = int(np.clip(round(stop) + before, 0, len(offsets) - 1))
        return np.arange(first, last + 1)

    qrs = span(-QRS_WINDOW_S[0] * fs, QRS_WINDOW_S[1] * fs)
    r_amp = template[:, qrs].max(axis=1)
    qrs_min = template[:, qrs].min(axis=1)
    st_point = round(offset + ST_AFTER_J_S * fs) + before
    st = template[:, st_point] if st_point < len(offsets) else np.full(len(STANDARD_LEADS), np.nan)
    t_stop = min(T_END_S * fs, T_END_RR_FRACTION * np.median(np.diff(peaks)))
    t_window = span(offset + T_START_AFTER_J_S * fs, t_stop)
    if t_stop > offset + T_START_AFTER_J_S * fs:
        t_part = template[:, t_window]
        extreme = np.argmax(np.abs(np.nan_to_num(t_part, nan=0.0)), axis=1)
        t_amp = t_part[np.arange(len(STANDARD_LEADS)), extreme]
    else:
        t_amp = np.full(len(STANDARD_LEADS), np.nan)
    for k, lead in enumerate(STANDARD_LEADS):
        if not usable[k]:
            continue
        values[index[f"r_amp_mv_{lead}"]] = r_amp[k]
        values[index[f"qrs_min_mv_{lead}"]] = qrs_min[k]
        values[index[f"qrs_p2p_mv_{lead}"]] = r_amp[k] - qrs_min[k]
        values[index[f"st_j60_mv_{lead}"]] = st[k]
        values[index[f"t_amp_mv_{lead}"]] = t_amp[k]
    lead_i, lead_avf = STANDARD_LEADS.index("I"), STANDARD_LEADS.index("aVF")
    if usable[lead_i] and usable[lead_avf]:  # hexaxial: lead I at 0 deg, aVF at +90 deg
        net_i, net_avf = r_amp[lead_i] + qrs_min[lead_i], r_amp[lead_avf] + qrs_min[lead_avf]
        values[index["qrs_axis_deg"]] = math.degrees(math.atan2(net_avf, net_i))
    return values


# --- a whole dataset ----------------------------------------------------------------------------


def single_blas_thread():
    """One BLAS / OpenMP thread for the small matrices of this module. lbfgs on (1337 x 120) calls
    BLAS for vectors of 120; with 2 OpenBLAS threads on a busy 2-core machine every call waits for
    the other thread (measured: 153 ms vs 8 ms per logistic-regression fit, 20x)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _features_of_records(records: list[tuple]) -> np.ndarray:
    """(n, F) float32 features of ``(signal, sampling_rate, leads, masked_leads)`` tuples (a worker task)."""
    with single_blas_thread():
        return np.stack(
            [handcrafted_features(s, fs, leads, masked_leads=masked)[1] for s, fs, leads, masked in records]
        ).astype(np.float32)


def _record_chunks(dataset, chunk_size: int):
    """Lists of ``(signal, sampling_rate, leads, masked_leads)`` for consecutive records."""
    for column in ("signal", "sampling_rate", "leads"):
        if column not in dataset.column_names:
            raise ValueError(
                f"dataset: no {column!r} column; the hand-crafted baseline needs signal (mV), "
                f"sampling_rate (Hz) and leads (columns: {dataset.column_names})"
            )
    has_mask = "masked_leads" in dataset.column_names
    signals = dataset.select_columns(["signal"]).with_format("numpy")
    meta = dataset.select_columns(["sampling_rate", "leads", *(["masked_leads"] if has_mask else [])])
    for start in range(0, len(dataset), chunk_size):
        stop = min(start + chunk_size, len(dataset))
        block = signals[start:stop]["signal"]
        info = meta[start:stop]
        masked = info["masked_leads"] if has_mask else [[]] * (stop - start)
        yield [
            (
                np.asarray(block[i], dtype=np.float32),
                float(info["sampling_rate"][i]),
                list(info["leads"][i]),
                list(masked[i] or []),
            )
            for i in range(stop - start)
        ]


def default_num_workers() -> int:
    """Processes for feature extraction: the CPUs this process may use, at most 8."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def _compute_features(dataset, num_workers: int, chunk_size: int) -> np.ndarray:
    num_features = len(feature_names())
    if len(dataset) == 0:
        return np.zeros((0, num_features), dtype=np.float32)
    if num_workers <= 1 or len(dataset) <= chunk_size:
        return np.concatenate([_features_of_records(chunk) for chunk in _record_chunks(dataset, chunk_size)])
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # "fork" on Linux: "spawn" re-imports the caller's main module in every worker, which breaks a
    # plain script without an `if __name__ == "__main__":` guard. The workers only run NumPy, SciPy
    # and neurokit2 (no torch), so the parent's idle torch threads are not touched in the child.
    # Elsewhere (macOS, Windows) fork is unsafe or absent, and "spawn" is used.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    # At most 2 chunks per worker are in flight, so memory stays bounded on large datasets.
    results, pending = [], []
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context(method)) as pool:
        for chunk in _record_chunks(dataset, chunk_size):
            pending.append(pool.submit(_features_of_records, chunk))
            if len(pending) >= 2 * num_workers:
                results.append(pending.pop(0).result())
        results += [future.result() for future in pending]
    return np.concatenate(results)


def _cache_key(dataset) -> str:
    from ecg_hub.data.splits import split_fingerprint

    parts = [
        json.dumps(feature_settings(), sort_keys=True),
        str(getattr(dataset, "_fingerprint", "")),
        split_fingerprint(dataset),
        str(len(dataset)),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


@dataclass
class FeatureMatrix:
    """Features of one split: ``values`` (N, F) float32 with NaN where unmeasured, ``names`` (F,),
    ``seconds`` spent computing them (0 when read from the cache), ``cache_path`` if cached."""

    values: np.ndarray
    names: list[str]
    seconds: float = 0.0
    cache_path: str | None = None

    def missing(self) -> dict:
        """NaN counts: ``values`` in all, ``records`` with at least one, ``by_feature`` (non-zero only)."""
        nan = np.isnan(self.values)
        by_feature = nan.sum(axis=0)
        return {
            "values": int(nan.sum()),
            "records": int(nan.any(axis=1).sum()),
            "by_feature": {n: int(c) for n, c in zip(self.names, by_feature) if c},
        }


def dataset_features(
    dataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    chunk_size: int = 32,
) -> FeatureMatrix:
    """:func:`handcrafted_features` of every record of a ``datasets.Dataset`` (columns ``signal``,
    ``sampling_rate``, ``leads``, optionally ``masked_leads``), in dataset order.

    Args:
        dataset: one split (already restricted to the task's records).
        cache_dir: folder of the ``.npz`` cache (``handcrafted-features-<key>.npz``; the key hashes
            the dataset fingerprint, its record ids and :func:`feature_settings`); ``None``: no cache.
        num_workers: extraction processes (default :func:`default_num_workers`; 1: this process).
        chunk_size: records per worker task.
    """
    names = feature_names()
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"handcrafted-features-{_cache_key(dataset)}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as stored:
                if list(stored["names"]) == names and stored["values"].shape == (len(dataset), len(names)):
                    return FeatureMatrix(stored["values"], names, 0.0, str(path))
            logger.warning("handcrafted features: cache %s does not match; recomputing", path)
    start = time.perf_counter()
    values = _compute_features(dataset, num_workers or default_num_workers(), chunk_size)
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez_compressed(handle, values=values, names=np.asarray(names))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return FeatureMatrix(values, names, seconds, str(path) if path else None)


# --- classifier ---------------------------------------------------------------------------------


@dataclass
class BaselineConfig:
    """The logistic regression and its validation grid.

    Attributes:
        c_grid: inverse L2 strengths tried (on standardised features).
        class_weights: ``None`` and/or ``"balanced"``, tried with every C.
        max_iter: lbfgs iterations (enough for C = 10 on PTB-XL without a convergence warning).
        num_workers: feature-extraction processes (``None``: :func:`default_num_workers`).
    """

    c_grid: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0)
    class_weights: Sequence[str | None] = (None, "balanced")
    max_iter: int = 5000
    num_workers: int | None = None
    chunk_size: int = 32

    def __post_init__(self):
        if not self.c_grid or any(not (isinstance(c, (int, float)) and c > 0) for c in self.c_grid):
            raise ValueError(f"c_grid: expected positive numbers, got {list(self.c_grid)}")
        bad = [w for w in self.class_weights if w not in (None, "balanced")]
        if not self.class_weights or bad:
            raise ValueError(
                f"class_weights: expected None and/or 'balanced', got {list(self.class_weights)}"
            )


def make_classifier(C: float, class_weight: str | None, problem_type: str, max_iter: int = 5000):
    """``SimpleImputer(median) -> StandardScaler -> LogisticRegression`` (one-vs-rest for
    ``multi_label_classification``, multinomial for ``single_label_classification``)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ecg_hub.loading import check_problem_type

    check_problem_type(problem_type)
    regression = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter)
    head = OneVsRestClassifier(regression) if problem_type == "multi_label_classification" else regression
    return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), head)


def _fit_targets(labels: np.ndarray, problem_type: str) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.argmax(axis=1) if problem_type == "single_label_classification" else labels.astype(np.int64)


def predict_scores(classifier, features: np.ndarray, num_classes: int, problem_type: str) -> np.ndarray:
    """(N, C) probabilities: per-class sigmoids (one-vs-rest) or the softmax over the classes the
    training subset held (a class it lacked scores 0)."""
    with warnings.catch_warnings(), single_blas_thread():
        warnings.simplefilter("ignore", UserWarning)  # one-vs-rest: a constant training column
        probabilities = classifier.predict_proba(features)
    if problem_type == "multi_label_classification":
        return np.asarray(probabilities, dtype=np.float64)
    scores = np.zeros((features.shape[0], num_classes))
    scores[:, classifier.classes_] = probabilities
    return scores


def fit_baseline(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    problem_type: str = "multi_label_classification",
    config: BaselineConfig | None = None,
):
    """Fit the grid on the training records and keep the best validation macro AUROC.

    Returns:
        ``(classifier, choice)``: the fitted pipeline with the best (C, class_weight), on ties the
        first in grid order (unweighted before balanced, then the smaller C: the stronger
        regularisation), and ``choice`` =
        ``{"C", "class_weight", "val_macro_auroc", "grid": [{"C", "class_weight", "val_macro_auroc",
        "converged"}]}`` (an unconverged fit is logged and kept in the grid).
    """
    config = config or BaselineConfig()
    with single_blas_thread():
        return _fit_baseline(train_features, train_labels, val_features, val_labels, problem_type, config)


def _fit_baseline(train_features, train_labels, val_features, val_labels, problem_type, config):
    from sklearn.exceptions import ConvergenceWarning

    from .metrics import macro_auroc_fast

    y_train = _fit_targets(train_labels, problem_type)
    num_classes = np.asarray(val_labels).shape[1]
    best, grid = None, []
    for class_weight in config.class_weights:
        for C in config.c_grid:
            classifier = make_classifier(C, class_weight, problem_type, config.max_iter)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("ignore", UserWarning)  # a label constant in a 1 % subset
                warnings.simplefilter("always", ConvergenceWarning)
                classifier.fit(train_features, y_train)
            converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            if not converged:
                logger.warning(
                    "baseline: lbfgs did not converge in %d iterations at C=%g", config.max_iter, C
                )
            auroc = macro_auroc_fast(
                val_labels, predict_scores(classifier, val_features, num_classes, problem_type)
            )
            grid.append(
                {
                    "C": float(C),
                    "class_weight": class_weight,
                    "val_macro_auroc": auroc,
                    "converged": converged,
                }
            )
            if best is None or auroc > best[0]:
                best = (auroc, classifier, grid[-1])
    auroc, classifier, chosen = best
    return classifier, {
        "C": chosen["C"],
        "class_weight": chosen["class_weight"],
        "val_macro_auroc": auroc,
        "grid": grid,
    }


# --- the protocol -------------------------------------------------------------------------------


def run_feature_baseline(
    splits,
    label_column,
    class_names,
    settings=None,
    config: BaselineConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Baseline results for every label fraction of ``settings`` (features computed once per split).

    Args:
        splits: ``{"train", "validation", "test"}`` datasets restricted to the task's records
            (:func:`ecg_hub.data.splits.select_task_records`).
        label_column: the label set.
        class_names: its classes.
        settings: an :class:`ecg_hub.evaluation.protocol.EvaluationSettings` (fractions, seeds,
            problem type, bootstrap); only those fields are used.
        config: the classifier grid (:class:`BaselineConfig`).
        cache_dir: the feature cache folder (``None``: in memory only).

    Returns:
        Results entries (:func:`ecg_hub.results.aggregate_runs`), protocol ``"handcrafted-features"``,
        each with a ``handcrafted_features`` section (feature count, extraction seconds, NaN counts
        per split, which were imputed) and per-run ``C``, ``class_weight``, ``imputed_train_values``.
    """
    from ecg_hub.data.fractions import sample_label_fraction
    from ecg_hub.data.labels import multi_hot
    from ecg_hub.results import aggregate_runs, score_run

    from .protocol import EvaluationSettings, seeds_for

    settings = settings or EvaluationSettings()
    config = config or BaselineConfig()
    features, labels = {}, {}
    for name in ("train", "validation", "test"):
        features[name] = dataset_features(
            splits[name], cache_dir=cache_dir, num_workers=config.num_workers, chunk_size=config.chunk_size
        )
        labels[name] = multi_hot(splits[name], label_column)
    extraction_seconds = sum(f.seconds for f in features.values())
    missing = {name: matrix.missing() for name, matrix in features.items()}
    logger.info(
        "handcrafted features: %d per record, %.1f s; NaN (imputed) values: %s",
        len(feature_names()),
        extraction_seconds,
        ", ".join(f"{k} {v['values']} in {v['records']} records" for k, v in missing.items()),
    )
    section = {
        "num_features": len(feature_names()),
        "extraction_seconds": extraction_seconds,
        "imputed": {name: {"values": m["values"], "records": m["records"]} for name, m in missing.items()},
        "imputed_by_feature": {
            n: sum(m["by_feature"].get(n, 0) for m in missing.values())
            for n in feature_names()
            if any(n in m["by_feature"] for m in missing.values())
        },
        "classifier": "SimpleImputer(median) -> StandardScaler -> LogisticRegression(L2, lbfgs)"
        + (", one-vs-rest" if settings.problem_type == "multi_label_classification" else ", multinomial"),
        "c_grid": [float(c) for c in config.c_grid],
        "class_weight_grid": list(config.class_weights),
        "selection": "validation macro AUROC",
    }
    results = []
    x_val, x_test = features["validation"].values, features["test"].values
    for fraction in settings.fractions:
        runs = []
        for seed in seeds_for(fraction, settings.seeds):
            start = time.perf_counter()
            index = sample_label_fraction(labels["train"], fraction, seed)
            x_train = features["train"].values[index]
            classifier, choice = fit_baseline(
                x_train,
                labels["train"][index],
                x_val,
                labels["validation"],
                problem_type=settings.problem_type,
                config=config,
            )
            num_classes = len(class_names)
            runs.append(
                score_run(
                    seed,
                    len(index),
                    labels["validation"],
                    predict_scores(classifier, x_val, num_classes, settings.problem_type),
                    labels["test"],
                    predict_scores(classifier, x_test, num_classes, settings.problem_type),
                    class_names,
                    bootstrap=settings.bootstrap,
                    C=choice["C"],
                    class_weight=choice["class_weight"],
                    imputed_train_values=int(np.isnan(x_train).sum()),
                    seconds=time.perf_counter() - start,
                )
            )
        result = aggregate_runs(BASELINE_PROTOCOL, fraction, runs, class_names)
        result["handcrafted_features"] = section
        results.append(result)
    return results


def evaluate_baseline(
    dataset_path: str | os.PathLike,
    label_column: str,
    settings=None,
    *,
    output_json: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    config: BaselineConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """The hand-crafted baseline on a prepared dataset: the results document (written if asked).

    Args:
        dataset_path: a prepared dataset folder (``ecg-hub data prepare``) with train / validation / test.
        label_column: the label set (``superclass``, ``rhythm``, ...).
        settings: :class:`ecg_hub.evaluation.protocol.EvaluationSettings` (fractions, seeds,
            problem type, bootstrap; its ``cache_dir`` is the default feature cache).
        output_json: where to write the results JSON (atomically).
        dataset_name: name recorded in the JSON (default: the dataset's ``info.dataset_name`` or
            the folder name).
        config: the classifier grid.
        cache_dir: the feature cache folder (default: ``settings.cache_dir``, else the folder of
            ``output_json``, else none).

    Returns:
        The results document (:mod:`ecg_hub.results`), ``model`` = ``"baseline: handcrafted
        features"``, ``processor_config`` = :func:`feature_settings`.
    """
    from ecg_hub.data.labels import label_names
    from ecg_hub.data.splits import load_splits, select_task_records
    from ecg_hub.results import ResultsDocument, dataset_section

    from .protocol import EvaluationSettings

    settings = settings or EvaluationSettings()
    if cache_dir is None:
        cache_dir = settings.cache_dir or (Path(output_json).parent if output_json is not None else None)
    loaded = load_splits(dataset_path)
    if label_column not in loaded["train"].column_names:
        raise ValueError(
            f"label set {label_column!r}: not a column of the dataset {str(dataset_path)!r} "
            f"(columns: {loaded['train'].column_names})"
        )
    splits = {
        name: select_task_records(split, label_column, settings.problem_type)
        for name, split in loaded.items()
    }
    class_names = label_names(splits["train"], label_column)
    info_name = getattr(splits["train"].info, "dataset_name", None)
    document = ResultsDocument(
        model=BASELINE_NAME,
        dataset=dataset_section(
            splits,
            name=dataset_name or info_name or Path(str(dataset_path)).name,
            path=str(dataset_path),
            label_set=label_column,
            class_names=class_names,
            problem_type=settings.problem_type,
        ),
        processor_config={**feature_settings(), "classifier": asdict(config or BaselineConfig())},
    )
    document.results.extend(
        run_feature_baseline(splits, label_column, class_names, settings, config, cache_dir=cache_dir)
    )
    if output_json is not None:
        return document.write(output_json)
    return document.to_dict()
