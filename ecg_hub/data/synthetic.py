"""Synthetic 12-lead ECGs with rhythm labels and short English reports (deterministic by seed).

This is the embedded default data set: the quickstart and the fast tests use it, so it must be quick
to make, physiologically consistent, and learnable by a tiny model.

Why a model of our own: the simulators available offline were measured (``ENVIRONMENT.md``):
``neurokit2.ecg_simulate(method="multileads")`` follows the requested rate but makes about 0.9 ECG/s
at 500 Hz x 10 s and rescales every lead to the same range, so I + III != II; ``ecg-augmentations``
sums Gaussian waves with random positive gains per lead (every precordial lead looks like lead I)
at about 12 ECG/s; ``deepfake-ecg`` is a GAN without rhythm or rate control or labels. None gives
labelled rhythms, and only the last meets the speed target.

Model: the heart is a single electrical dipole whose vectorcardiogram (Frank X, Y, Z in mV) is a
sum of Gaussian waves per beat (P, Q, R, S, T; the Gaussian-kernel form of McSharry et al. 2003,
IEEE TBME 50(3), extended to three dimensions by Sameni et al. 2007, EURASIP JASP). The eight
independent leads I, II, V1-V6 are the Dower transform of the dipole (Dower et al. 1980) plus
noise, and III, aVR, aVL, aVF follow from I and II by Einthoven's and Goldberger's laws, so
I + III = II and aVR = -(I + II) / 2 hold to float32 rounding. Per record: a random heart
orientation (QRS axis, transition zone), amplitude, PR interval, rate-corrected QT, baseline
wander, powerline hum and muscle noise.

Rhythms (separable by rate and regularity, so a tiny model can learn them):
  * ``SR`` sinus rhythm 62-98 bpm, ``SB`` sinus bradycardia 42-56 bpm, ``ST`` sinus tachycardia
    104-150 bpm: regular RR with respiratory sinus arrhythmia, P wave before every QRS;
  * ``AF`` atrial fibrillation 60-130 bpm: irregularly irregular RR (coefficient of variation about
    0.2), no P waves, 4-9 Hz fibrillatory waves strongest in V1 and the inferior leads.

Reports name the rhythm and the rate measured from the simulated beats (e.g. "Sinus bradycardia at
52 bpm. Normal axis."), with varied wording (synonyms, sentence order, optional axis, PR, voltage
and ST statements) so that text models must read them, not match one template.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ecg_hub.modeling.leads import STANDARD_LEADS, derive_limb_leads

from .builder import PrepareResult, build_dataset, record_features, signal_feature

#: Rhythm classes of the synthetic data set, in ``ClassLabel`` order.
RHYTHMS: tuple[str, ...] = ("SR", "SB", "ST", "AF")

RHYTHM_NAMES: dict[str, str] = {
    "SR": "sinus rhythm",
    "SB": "sinus bradycardia",
    "ST": "sinus tachycardia",
    "AF": "atrial fibrillation",
}

#: Heart-rate range of each rhythm (bpm) from which a record's target rate is drawn. The gaps between
#: sinus ranges (56-62, 98-104) keep the classes separable after beat-to-beat variability.
HEART_RATE_RANGES: dict[str, tuple[float, float]] = {
    "SR": (62.0, 98.0),
    "SB": (42.0, 56.0),
    "ST": (104.0, 150.0),
    "AF": (60.0, 130.0),
}

# Dower et al. (1980) transform from the Frank vectorcardiogram (X left, Y inferior, Z posterior; mV)
# to the eight independent leads, rows in this order.
_INDEPENDENT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
_DOWER = np.array([
    [0.632, -0.235, 0.059],
    [0.235, 1.066, -0.132],
    [-0.515, 0.157, -0.917],
    [0.044, 0.164, -1.387],
    [0.882, 0.098, -1.277],
    [1.213, 0.127, -0.601],
    [1.125, 0.127, -0.086],
    [0.831, 0.076, 0.230],
])

# Wave templates of a normal heart: dipole amplitude (X, Y, Z) in mV, width (Gaussian sigma) in s.
# P and T timing depend on the PR interval and on RR (below).
_WAVES = ("P", "Q", "R", "S", "T")
_AMPLITUDES = np.array([
    [0.12, 0.12, -0.05],   # P: left, inferior
    [-0.12, 0.05, -0.20],  # Q: septal depolarisation, right and anterior (r in V1, q in I/V6)
    [1.30, 0.70, 0.50],    # R: main left-ventricular vector, left-inferior-posterior
    [-0.30, -0.15, 0.70],  # S: late basal forces, right-superior-posterior (deep S in V1-V3)
    [0.35, 0.20, -0.25],   # T: concordant with QRS, anterior (upright in V2-V4)
]).T  # (3, 5)
_WIDTHS = np.array([0.022, 0.008, 0.011, 0.010, 0.045])
# Amplitudes were tuned so that median peak-to-peak per lead is close to PTB-XL's (0.5-40 Hz band):
# about 1 mV in the limb leads, 1.2 mV in V1, 2 mV in V2-V4, 1.4-1.8 mV in V5-V6.


def _frontal_axis_deg(vector: np.ndarray) -> float:
    """Clinical frontal-plane axis (degrees) of a dipole: the direction of (lead I, aVF) it produces."""
    lead_i, lead_ii = _DOWER[0] @ vector, _DOWER[1] @ vector
    return math.degrees(math.atan2(lead_ii - lead_i / 2, lead_i))


@dataclass
class SyntheticEcg:
    """One synthetic record.

    Attributes:
        signal: ``(12, samples)`` float32 in mV, leads in :data:`STANDARD_LEADS` order.
        sampling_rate: Hz.
        rhythm: one of :data:`RHYTHMS`.
        heart_rate: mean rate of the beats inside the record, bpm (what the report states).
        r_peaks: sample indices of the R peaks inside the record.
        qrs_axis_deg: frontal-plane QRS axis in degrees (-180, 180].
        pr_interval_ms: PR interval in ms (``None`` for AF).
        report: short English report.
    """

    signal: np.ndarray
    sampling_rate: int
    rhythm: str
    heart_rate: float
    r_peaks: np.ndarray
    qrs_axis_deg: float
    pr_interval_ms: float | None
    report: str

    @property
    def leads(self) -> list[str]:
        return list(STANDARD_LEADS)


def _rotation(axis: int, angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def _beat_times(rhythm: str, target_rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """R-peak times in seconds, from before 0 to after ``duration_s`` (edge beats are partly visible)."""
    mean_rr = 60.0 / target_rate
    count = int(duration_s / mean_rr) + 6
    if rhythm == "AF":
        # Irregularly irregular: independent RR intervals, lognormal around the mean, with a 0.28 s
        # floor for the AV node's refractory period.
        rr = mean_rr * np.exp(rng.normal(0.0, 0.22, count) - 0.5 * 0.22**2)
        rr = np.maximum(rr, 0.3)
    else:
        # Respiratory sinus arrhythmia: RR modulated at the breathing rate, plus a little jitter.
        breathing_hz = rng.uniform(0.15, 0.35)
        depth = rng.uniform(0.01, 0.04)
        phase = rng.uniform(0, 2 * math.pi)
        approx_times = np.arange(count) * mean_rr
        rr = mean_rr * (1 + depth * np.sin(2 * math.pi * breathing_hz * approx_times + phase))
        rr = rr * (1 + rng.normal(0.0, 0.008, count))
    start = -rng.uniform(0.3, 1.0) * mean_rr
    return start + np.concatenate([[0.0], np.cumsum(rr[:-1])])


def _gaussian_sum(t: np.ndarray, centers: np.ndarray, widths: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Sum over beats of Gaussians: centers/widths/amplitudes (beats,), returns (samples,).

    Each Gaussian is evaluated only within 5 sigma of its centre (the rest is below 4e-6 of its peak).
    """
    out = np.zeros_like(t)
    fs = 1.0 / (t[1] - t[0])
    for center, width, amplitude in zip(centers, widths, amplitudes):
        lo = max(0, int((center - 5 * width - t[0]) * fs))
        hi = min(len(t), int((center + 5 * width - t[0]) * fs) + 2)
        if hi <= lo:
            continue
        segment = t[lo:hi] - center
        out[lo:hi] += amplitude * np.exp(-0.5 * (segment / width) ** 2)
    return out


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _report(
    rhythm: str,
    heart_rate: float,
    axis_deg: float,
    pr_ms: float | None,
    low_voltage: bool,
    rng: np.random.Generator,
) -> str:
    """Short English report naming the rhythm and the rate, with varied wording."""
    rate = int(round(heart_rate))
    if rhythm == "SR":
        name = _pick(rng, ["Sinus rhythm", "Normal sinus rhythm", "Regular sinus rhythm", "Sinus rhythm, normal rate"])
    elif rhythm == "SB":
        name = _pick(rng, ["Sinus bradycardia", "Sinus bradycardia", "Sinus rhythm with bradycardia", "Slow sinus rhythm (sinus bradycardia)"])
        if rate < 50 and rng.random() < 0.5:
            name = "Marked sinus bradycardia"
    elif rhythm == "ST":
        name = _pick(rng, ["Sinus tachycardia", "Sinus tachycardia", "Sinus rhythm with tachycardia", "Fast sinus rhythm (sinus tachycardia)"])
    else:
        name = _pick(rng, ["Atrial fibrillation", "Atrial fibrillation", "AF", "Atrial fibrillation (AFib)"])
        if rate > 100:
            name += _pick(rng, [" with rapid ventricular response", "", " with fast ventricular rate"])
        elif rate < 60:
            name += _pick(rng, [" with slow ventricular response", ""])
        else:
            name += _pick(rng, [" with controlled ventricular rate", ""])
    form = int(rng.integers(4))
    if form == 0:
        first = f"{name} at {rate} bpm."
    elif form == 1:
        first = f"{name}, rate {rate}/min."
    elif form == 2:
        first = f"{name}; heart rate {rate} beats per minute."
    else:
        first = f"Heart rate {rate} bpm. {name}."
    extra = []
    if rng.random() < 0.75:
        if axis_deg < -30:
            extra.append(_pick(rng, ["Left axis deviation.", f"Left axis deviation ({axis_deg:.0f} degrees)."]))
        elif axis_deg > 90:
            extra.append(_pick(rng, ["Right axis deviation.", f"Right axis deviation ({axis_deg:.0f} degrees)."]))
        else:
            extra.append(_pick(rng, ["Normal axis.", "Normal QRS axis.", f"QRS axis {axis_deg:.0f} degrees."]))
    if rhythm == "AF" and rng.random() < 0.6:
        extra.append(_pick(rng, ["No P waves.", "Irregularly irregular rhythm.", "Fibrillatory baseline, P waves absent."]))
    if pr_ms is not None and rng.random() < 0.3:
        extra.append(f"PR interval {pr_ms:.0f} ms.")
    if low_voltage:
        extra.append("Low QRS voltage in the limb leads.")
    if rng.random() < 0.3:
        extra.append(_pick(rng, ["No acute ST-T changes.", "No ST elevation.", "Normal repolarisation."]))
    rng.shuffle(extra)
    return " ".join([first, *extra])


def synthesize_ecg(
    rhythm: str,
    seed: int | Sequence[int] | np.random.Generator = 0,
    sampling_rate: int = 500,
    duration_s: float = 10.0,
    heart_rate: float | None = None,
    noise: bool = True,
) -> SyntheticEcg:
    """Simulate one 12-lead ECG (see the module docstring for the model).

    Args:
        rhythm: one of :data:`RHYTHMS`.
        seed: an int, a sequence of ints (e.g. ``[dataset_seed, index]``) or a numpy Generator.
        sampling_rate: Hz; the waves are evaluated analytically at this rate (no resampling).
        duration_s: record length in seconds.
        heart_rate: target mean rate in bpm (default: drawn from :data:`HEART_RATE_RANGES`).
        noise: add baseline wander, powerline hum and muscle noise.

    Returns:
        :class:`SyntheticEcg` with ``signal`` ``(12, round(duration_s * sampling_rate))`` float32 mV.
    """
    if rhythm not in RHYTHMS:
        raise ValueError(f"rhythm {rhythm!r}: expected one of {', '.join(RHYTHMS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    num_samples = int(round(duration_s * sampling_rate))
    t = np.arange(num_samples) / sampling_rate
    low, high = HEART_RATE_RANGES[rhythm]
    target_rate = float(heart_rate) if heart_rate is not None else rng.uniform(low, high)

    # Heart orientation: rotate the dipole about Z (frontal plane: the template's clinical axis is
    # about +43 degrees; most hearts stay in the normal range, some get left or right axis deviation)
    # and about Y (moves the precordial transition zone).
    category = rng.random()
    if category < 0.85:
        frontal_turn = float(np.clip(rng.normal(0.0, 18.0), -45.0, 40.0))
    elif category < 0.925:
        frontal_turn = rng.uniform(-80.0, -55.0)
    else:
        frontal_turn = rng.uniform(55.0, 85.0)
    rotation = _rotation(2, math.radians(frontal_turn)) @ _rotation(1, math.radians(rng.normal(0, 10)))
    scale = float(np.exp(rng.normal(0.0, 0.2)))
    wave_scale = np.array([rng.uniform(0.7, 1.3), rng.uniform(0.6, 1.4), 1.0, rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.3)])
    amplitudes = scale * (rotation @ _AMPLITUDES) * wave_scale  # (3, waves)
    widths = _WIDTHS * np.array([rng.uniform(0.85, 1.15), 1.0, rng.uniform(0.9, 1.2), 1.0, rng.uniform(0.85, 1.2)])

    beats = _beat_times(rhythm, target_rate, duration_s, rng)
    rr = np.diff(beats, append=beats[-1] + (beats[-1] - beats[-2]))
    rr_prev = np.concatenate([[rr[0]], rr[:-1]])
    pr_s = None if rhythm == "AF" else rng.uniform(0.13, 0.19) - 0.02 * max(0.0, target_rate - 100.0) / 50.0
    # Timing relative to the R peak (s). The T peak follows Bazett-like rate dependence (sqrt of RR).
    offsets = {
        "P": None if pr_s is None else -pr_s,
        "Q": -0.022,
        "R": 0.0,
        "S": 0.024,
    }
    beat_jitter = 1.0 + rng.normal(0.0, 0.02 if rhythm != "AF" else 0.04, len(beats))
    vcg = np.zeros((3, num_samples))
    for index, wave in enumerate(_WAVES):
        if wave == "P" and offsets["P"] is None:
            continue
        if wave == "T":
            centers = beats + 0.27 * np.sqrt(rr_prev) * rng.uniform(0.95, 1.05)
            wave_widths = widths[index] * np.sqrt(rr_prev)
        else:
            centers = beats + offsets[wave]
            wave_widths = np.full(len(beats), widths[index])
        kernel = _gaussian_sum(t, centers, wave_widths, beat_jitter)
        vcg += amplitudes[:, index : index + 1] * kernel[None, :]
    if rhythm == "AF":
        # Fibrillatory waves: 2-3 components at 4-9 Hz with slowly wandering frequency and amplitude,
        # along an atrial direction that projects mostly onto V1 and the inferior leads.
        direction = np.array([0.1, 0.5, -0.6]) + rng.normal(0, 0.1, 3)
        direction /= np.linalg.norm(direction)
        atrial = np.zeros(num_samples)
        for _ in range(int(rng.integers(2, 4))):
            base_hz = rng.uniform(4.0, 9.0)
            wander = 0.5 * np.cumsum(rng.normal(0, 1, num_samples)) / math.sqrt(sampling_rate)
            phase = 2 * math.pi * np.cumsum(base_hz + 0.3 * np.tanh(wander)) / sampling_rate
            envelope = 1 + 0.3 * np.sin(2 * math.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 6.3))
            atrial += envelope * np.sin(phase + rng.uniform(0, 2 * math.pi))
        atrial *= rng.uniform(0.03, 0.08) / max(1e-9, atrial.std())
        vcg += direction[:, None] * atrial[None, :]

    independent = _DOWER @ vcg  # (8, samples) mV
    clean_limb = independent[:2]
    if noise:
        # Electrode noise added per independent lead, before deriving III/aVR/aVL/aVF, so that the
        # derived leads carry it exactly as a real recorder's would.
        # Baseline wander (two slow components, e.g. breathing) and powerline hum: sine/cosine pairs
        # mixed with random weights per lead, which gives each lead its own amplitude and phase.
        slow_hz = rng.uniform(0.05, 0.4, 2)
        mains_hz = 50.0 if rng.random() < 0.5 else 60.0
        angles = 2 * math.pi * np.concatenate([slow_hz, [mains_hz]])[:, None] * t[None, :]
        basis = np.concatenate([np.sin(angles), np.cos(angles)])  # (6, samples): sin x3, cos x3
        weights = np.zeros((8, 6))
        weights[:, [0, 1, 3, 4]] = rng.uniform(-0.06, 0.06, (8, 4))  # wander, mV
        weights[:, [2, 5]] = rng.uniform(-0.007, 0.007, (8, 2)) * rng.uniform(0.0, 1.0)  # mains, mV
        muscle = rng.standard_normal(independent.shape) * rng.uniform(0.003, 0.015)
        independent = independent + weights @ basis + muscle
    leads = list(_INDEPENDENT)
    signal, leads = derive_limb_leads(independent, leads)
    order = [leads.index(name) for name in STANDARD_LEADS]
    signal = np.ascontiguousarray(signal[order], dtype=np.float32)

    inside = beats[(beats >= 0) & (beats < duration_s)]
    measured_rate = 60.0 / float(np.mean(np.diff(inside))) if len(inside) > 1 else target_rate
    axis_deg = _frontal_axis_deg(amplitudes[:, 2])
    # Low limb-lead voltage: every limb lead's clean QRS below 0.5 mV peak to peak.
    derived_clean, _ = derive_limb_leads(clean_limb, ["I", "II"])
    low_voltage = bool(np.all(np.ptp(derived_clean, axis=1) < 0.5))
    report = _report(rhythm, measured_rate, axis_deg, None if pr_s is None else pr_s * 1000, low_voltage, rng)
    return SyntheticEcg(
        signal=signal,
        sampling_rate=int(sampling_rate),
        rhythm=rhythm,
        heart_rate=measured_rate,
        r_peaks=np.round(inside * sampling_rate).astype(np.int64),
        qrs_axis_deg=axis_deg,
        pr_interval_ms=None if pr_s is None else pr_s * 1000,
        report=report,
    )


def _split_of(rng: np.random.Generator, fractions: Sequence[float]) -> str:
    draw = rng.random()
    bounds = np.cumsum(fractions)
    return ("train", "validation", "test")[min(2, int(np.searchsorted(bounds, draw, side="right")))]


def _synthetic_row(
    task: dict[str, Any],
    seed: int,
    sampling_rate: int,
    duration_s: float,
    rhythms: Sequence[str],
    split_fractions: Sequence[float],
    noise: bool,
) -> dict[str, Any]:
    index = task["index"]
    # One generator per record: record i is the same whatever num_records is.
    rng = np.random.default_rng([seed, index])
    rhythm = rhythms[index % len(rhythms)]
    split = _split_of(rng, split_fractions)
    ecg = synthesize_ecg(rhythm, rng, sampling_rate=sampling_rate, duration_s=duration_s, noise=noise)
    return {
        "signal": ecg.signal,
        "sampling_rate": ecg.sampling_rate,
        "leads": list(STANDARD_LEADS),
        "record_id": task["record_id"],
        "patient_id": task["record_id"],
        "rhythm": [RHYTHMS.index(rhythm)],
        "report": ecg.report,
        "heart_rate": float(ecg.heart_rate),
        "qrs_axis": float(ecg.qrs_axis_deg),
        "split": split,
    }


def _synthetic_features(num_samples: int):
    import datasets

    return record_features(
        signal_feature(12, num_samples),
        {"rhythm": RHYTHMS},
        {
            "report": datasets.Value("string"),
            "heart_rate": datasets.Value("float32"),
            "qrs_axis": datasets.Value("float32"),
            "split": datasets.Value("string"),
        },
    )


def _check_args(num_records: int, rhythms: Sequence[str], split_fractions: Sequence[float]) -> None:
    if num_records < 1:
        raise ValueError(f"num_records {num_records}: expected at least 1")
    unknown = [r for r in rhythms if r not in RHYTHMS]
    if unknown or not rhythms:
        raise ValueError(f"rhythms {list(rhythms)}: expected a non-empty subset of {', '.join(RHYTHMS)}")
    if len(split_fractions) != 3 or not np.isclose(sum(split_fractions), 1.0) or min(split_fractions) < 0:
        raise ValueError(f"split_fractions {list(split_fractions)}: expected three non-negative numbers summing to 1")


def make_synthetic_dataset(
    num_records: int = 400,
    seed: int = 0,
    sampling_rate: int = 500,
    duration_s: float = 10.0,
    rhythms: Sequence[str] = RHYTHMS,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    noise: bool = True,
):
    """An in-memory ``datasets.Dataset`` of synthetic 12-lead ECGs (deterministic by ``seed``).

    Record ``i`` has rhythm ``rhythms[i % len(rhythms)]`` (balanced classes) and its own generator
    ``default_rng([seed, i])``, so the first records are the same for any ``num_records``.

    Columns: ``signal`` Array2D (12, samples) float32 mV, ``sampling_rate``, ``leads``, ``record_id``,
    ``patient_id``, ``rhythm`` (``Sequence(ClassLabel(RHYTHMS))``: one index per record), ``report``,
    ``heart_rate`` (bpm), ``qrs_axis`` (degrees), ``split`` (train/validation/test by
    ``split_fractions``, drawn per record).

    For an on-disk copy use :func:`prepare_synthetic` (or ``ecg-hub data prepare synthetic``).
    """
    import datasets

    _check_args(num_records, rhythms, split_fractions)
    num_samples = int(round(duration_s * sampling_rate))
    features = _synthetic_features(num_samples)
    make_row = partial(
        _synthetic_row, seed=seed, sampling_rate=sampling_rate, duration_s=duration_s,
        rhythms=tuple(rhythms), split_fractions=tuple(split_fractions), noise=noise,
    )
    rows = [make_row({"index": i, "record_id": f"synthetic-{seed}-{i:06d}"}) for i in range(num_records)]
    columns = {name: [row[name] for row in rows] for name in features}
    info = datasets.DatasetInfo(
        description=f"ecg-hub synthetic 12-lead ECGs (seed {seed}, {sampling_rate} Hz, {duration_s:g} s): "
        f"rhythms {', '.join(rhythms)} with short English reports.",
        license="Apache-2.0",
        features=features,
    )
    return datasets.Dataset.from_dict(columns, features=features, info=info)


def prepare_synthetic(
    out_dir: str | os.PathLike,
    num_records: int = 1000,
    seed: int = 0,
    sampling_rate: int = 500,
    duration_s: float = 10.0,
    rhythms: Sequence[str] = RHYTHMS,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    noise: bool = True,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Write the :func:`make_synthetic_dataset` records to ``out_dir`` (same rows for the same seed)."""
    _check_args(num_records, rhythms, split_fractions)
    num_samples = int(round(duration_s * sampling_rate))
    tasks = [{"index": i, "record_id": f"synthetic-{seed}-{i:06d}"} for i in range(num_records)]
    return build_dataset(
        tasks,
        partial(
            _synthetic_row, seed=seed, sampling_rate=sampling_rate, duration_s=duration_s,
            rhythms=tuple(rhythms), split_fractions=tuple(split_fractions), noise=noise,
        ),
        _synthetic_features(num_samples),
        out_dir,
        source=f"synthetic (seed {seed})",
        description=f"ecg-hub synthetic 12-lead ECGs (seed {seed}, {sampling_rate} Hz, {duration_s:g} s): "
        f"rhythms {', '.join(rhythms)} with short English reports.",
        license="Apache-2.0",
        options={"num_records": num_records, "seed": seed, "sampling_rate": sampling_rate,
                 "duration_s": duration_s, "rhythms": list(rhythms), "split_fractions": list(split_fractions),
                 "noise": noise},
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
    )
