"""Reading single ECG records from disk and checking that they are usable.

Every reader returns an :class:`EcgRecord`: a ``(leads, samples)`` float32 array in millivolts (mV),
the sampling rate in Hz, the canonical lead names (``ecg_hub.modeling.leads``) in standard
clinical order, and a metadata dict. Every reader runs :func:`validate_signal`, which raises a
``ValueError`` naming the record, the field and what was expected when the record is unusable
(truncated file, NaNs, flat or clipped leads, missing or implausible sampling rate, missing leads).
Dataset builders catch those errors, skip the record and report the reason.

Formats:
  * WFDB (``.hea`` + ``.dat``, or the PhysioNet/CinC ``.hea`` + MATLAB v4 ``.mat``) via ``wfdb``.
  * CODE-15 style MATLAB files (``feats`` 12 x N, ``curr_sample_rate``) via ``scipy.io``.
  * SPH style HDF5 files (dataset ``ecg`` 12 x N in mV) via ``h5py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecg_hub.modeling.leads import STANDARD_LEADS, canonical_lead_name, derive_limb_leads

# Bytes per sample of each WFDB signal format (FLAC formats 508/516/524 are compressed: no size check).
_WFDB_BYTES_PER_SAMPLE = {
    "8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
    "212": 1.5, "310": 4.0 / 3.0, "311": 4.0 / 3.0,
}

# Physical units WFDB headers use for ECG channels, as factors to millivolts.
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nu": None}


@dataclass
class SignalChecks:
    """What :func:`validate_signal` accepts. Defaults were calibrated on the real records in
    ``shared/data`` (PTB-XL 100/500 Hz, CinC 2021 sample, CODE-15 sample, SPH): none of the
    non-flat real records trips them.

    Attributes:
        required_leads: leads that must be present (after deriving III, aVR, aVL, aVF from I and II
            when ``derive_limb_leads`` is set). ``None`` accepts any non-empty lead set.
        derive_limb_leads: compute missing III/aVR/aVL/aVF from I and II (Einthoven/Goldberger).
        expected_sampling_rate: if set, the record's sampling rate must equal it (Hz).
        min_sampling_rate, max_sampling_rate: plausible range for an ECG sampling rate (Hz).
        min_duration_s: shortest accepted record, in seconds.
        max_abs_mv: largest plausible absolute value in mV; larger values usually mean wrong units
            (microvolts or ADC counts stored as mV). Real records here reach about 20 mV.
        flat_peak_to_peak_mv: a lead whose peak-to-peak range is below this (mV) is flat
            (disconnected electrode, zero-filled lead). Real leads here span at least 0.2 mV.
        clipped_fraction: a lead with at least this fraction of its samples exactly at its maximum
            or at its minimum is clipped (amplifier saturation). Real leads here reach 2.7 %.
        allow_flat_leads, allow_clipped_leads: turn those two checks off.
    """

    required_leads: Sequence[str] | None = STANDARD_LEADS
    derive_limb_leads: bool = True
    expected_sampling_rate: float | None = None
    min_sampling_rate: float = 50.0
    max_sampling_rate: float = 20_000.0
    min_duration_s: float = 1.0
    max_abs_mv: float = 50.0
    flat_peak_to_peak_mv: float = 0.01
    clipped_fraction: float = 0.05
    allow_flat_leads: bool = False
    allow_clipped_leads: bool = False


@dataclass
class EcgRecord:
    """One ECG record in memory.

    Attributes:
        signal: ``(leads, samples)`` float32 array in mV.
        sampling_rate: samples per second (Hz), an integer.
        leads: canonical lead names, one per row of ``signal``, in standard clinical order.
        record_id: the record's name (file stem) or database id.
        metadata: source-specific fields (``age``, ``sex``, ``dx`` codes, header ``comments`` ...).
    """

    signal: np.ndarray
    sampling_rate: int
    leads: list[str]
    record_id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sampling_rate


def _fail(record_id: str, field_name: str, problem: str) -> ValueError:
    return ValueError(f"record {record_id!r}: field {field_name!r} {problem}")


def check_sampling_rate(sampling_rate: Any, record_id: str, checks: SignalChecks | None = None) -> int:
    """Return ``sampling_rate`` as an int after checking it is present, integral and plausible (Hz)."""
    checks = checks or SignalChecks()
    if sampling_rate is None or (isinstance(sampling_rate, float) and math.isnan(sampling_rate)):
        raise _fail(record_id, "sampling_rate", "is missing; expected the sampling frequency in Hz (e.g. 500)")
    try:
        rate = float(sampling_rate)
    except (TypeError, ValueError):
        raise _fail(record_id, "sampling_rate", f"is {sampling_rate!r}; expected a number in Hz") from None
    if not (checks.min_sampling_rate <= rate <= checks.max_sampling_rate):
        raise _fail(
            record_id, "sampling_rate",
            f"is {rate:g} Hz; expected between {checks.min_sampling_rate:g} and {checks.max_sampling_rate:g} Hz",
        )
    if abs(rate - round(rate)) > 1e-6:
        raise _fail(record_id, "sampling_rate", f"is {rate:g} Hz; expected a whole number of Hz")
    if checks.expected_sampling_rate is not None and round(rate) != round(checks.expected_sampling_rate):
        raise _fail(
            record_id, "sampling_rate", f"is {rate:g} Hz; expected {checks.expected_sampling_rate:g} Hz"
        )
    return int(round(rate))


def standardize_leads(
    signal: np.ndarray,
    lead_names: Sequence[str],
    record_id: str,
    checks: SignalChecks | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Canonicalize lead names, drop non-ECG channels, derive missing limb leads, order leads.

    Args:
        signal: ``(channels, samples)`` array.
        lead_names: one name per channel as written in the file (``AVR``, ``avr``, ``DII``, ``vx`` ...).

    Returns:
        ``(signal, leads, dropped)``: rows in standard clinical order, their canonical names, and the
        names of channels that are not one of the 12 standard leads (e.g. Frank ``vx``), dropped.

    Raises:
        ValueError: a lead appears twice, or a required lead is missing.
    """
    checks = checks or SignalChecks()
    if signal.ndim != 2 or signal.shape[0] != len(lead_names):
        raise _fail(
            record_id, "signal",
            f"has shape {tuple(signal.shape)}; expected (channels, samples) with {len(lead_names)} channels "
            f"for leads {list(lead_names)}",
        )
    kept_rows, kept_names, dropped = [], [], []
    for row, name in enumerate(lead_names):
        try:
            canonical = canonical_lead_name(str(name))
        except ValueError:
            dropped.append(str(name))
            continue
        if canonical in kept_names:
            raise _fail(record_id, "leads", f"lists lead {canonical} twice ({list(lead_names)}); expected each lead once")
        kept_rows.append(row)
        kept_names.append(canonical)
    signal = signal[kept_rows]
    if checks.derive_limb_leads:
        signal, kept_names = derive_limb_leads(signal, kept_names)
    if not kept_names:
        raise _fail(record_id, "leads", f"has no standard ECG lead among {list(lead_names)}; expected e.g. {list(STANDARD_LEADS)}")
    if checks.required_leads is not None:
        missing = [lead for lead in checks.required_leads if lead not in kept_names]
        if missing:
            raise _fail(
                record_id, "leads",
                f"is missing {', '.join(missing)} (has {', '.join(kept_names)}); expected {', '.join(checks.required_leads)}",
            )
    order = sorted(range(len(kept_names)), key=lambda i: STANDARD_LEADS.index(kept_names[i]))
    return signal[order], [kept_names[i] for i in order], dropped


def validate_signal(
    signal: np.ndarray,
    sampling_rate: int,
    leads: Sequence[str],
    record_id: str,
    checks: SignalChecks | None = None,
) -> None:
    """Check a ``(leads, samples)`` signal in mV; raise ``ValueError`` naming record, field and expectation.

    Checks, in order: shape, duration (``min_duration_s``), finite values (no NaN/inf), plausible
    amplitude (``max_abs_mv``), flat leads, clipped leads. See :class:`SignalChecks`.
    """
    checks = checks or SignalChecks()
    if signal.ndim != 2 or signal.shape[0] != len(leads):
        raise _fail(record_id, "signal", f"has shape {tuple(signal.shape)}; expected ({len(leads)} leads, samples)")
    num_samples = signal.shape[1]
    if num_samples < checks.min_duration_s * sampling_rate:
        raise _fail(
            record_id, "signal",
            f"has {num_samples} samples ({num_samples / sampling_rate:.2f} s at {sampling_rate} Hz); "
            f"expected at least {checks.min_duration_s:g} s",
        )
    finite = np.isfinite(signal)
    if not finite.all():
        bad_counts = (~finite).sum(axis=1)
        bad = [f"{lead} ({count} samples)" for lead, count in zip(leads, bad_counts) if count]
        raise _fail(record_id, "signal", f"has NaN or infinite values in lead {', '.join(bad)}; expected finite values in mV")
    peak = float(np.abs(signal).max())
    if peak > checks.max_abs_mv:
        lead = leads[int(np.abs(signal).max(axis=1).argmax())]
        raise _fail(
            record_id, "signal",
            f"reaches {peak:.4g} mV in lead {lead}; expected |values| <= {checks.max_abs_mv:g} mV "
            "(wrong units? signals must be in millivolts)",
        )
    high = signal.max(axis=1)
    low = signal.min(axis=1)
    if not checks.allow_flat_leads:
        flat = [lead for lead, span in zip(leads, high - low) if span < checks.flat_peak_to_peak_mv]
        if flat:
            raise _fail(
                record_id, "signal",
                f"has flat lead {', '.join(flat)} (peak-to-peak < {checks.flat_peak_to_peak_mv:g} mV); "
                "expected a recorded ECG in every lead",
            )
    if not checks.allow_clipped_leads:
        # A saturated amplifier pins the signal at one value: count samples sitting exactly (to 0.1 uV)
        # at the lead's extreme values.
        tolerance = 1e-4
        at_high = (signal >= high[:, None] - tolerance).sum(axis=1) / num_samples
        at_low = (signal <= low[:, None] + tolerance).sum(axis=1) / num_samples
        fraction = np.maximum(at_high, at_low)
        spans = high - low
        clipped = [
            f"{lead} ({frac:.0%} of samples)" for lead, frac, span in zip(leads, fraction, spans)
            if frac >= checks.clipped_fraction and span >= checks.flat_peak_to_peak_mv  # flat is not clipped
        ]
        if clipped:
            raise _fail(
                record_id, "signal",
                f"has clipped lead {', '.join(clipped)} at its extreme value; expected fewer than "
                f"{checks.clipped_fraction:.0%} of samples at the lead's maximum or minimum",
            )


def make_record(
    signal: np.ndarray,
    sampling_rate: Any,
    lead_names: Sequence[str],
    record_id: str,
    metadata: dict[str, Any] | None = None,
    checks: SignalChecks | None = None,
) -> EcgRecord:
    """Build a validated :class:`EcgRecord` from a ``(channels, samples)`` array in mV.

    Canonicalizes and orders leads (dropping non-ECG channels), derives missing limb leads, casts to
    float32 and runs :func:`validate_signal`.
    """
    checks = checks or SignalChecks()
    rate = check_sampling_rate(sampling_rate, record_id, checks)
    signal = np.asarray(signal)
    signal, leads, dropped = standardize_leads(signal, lead_names, record_id, checks)
    signal = np.ascontiguousarray(signal, dtype=np.float32)
    validate_signal(signal, rate, leads, record_id, checks)
    metadata = dict(metadata or {})
    if dropped:
        metadata["dropped_channels"] = dropped
    return EcgRecord(signal=signal, sampling_rate=rate, leads=leads, record_id=record_id, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# WFDB


def _header_path(record_path: str) -> str:
    return record_path if record_path.endswith(".hea") else record_path + ".hea"


def _header_sampling_rate_token(header_file: str, record_id: str) -> str | None:
    """The sampling-frequency token of a WFDB header's record line, or ``None`` when absent.

    ``wfdb`` silently substitutes 250 Hz when the field is absent (the WFDB default), which would
    mislabel a 500 Hz ECG; an ECG record must state its rate.
    """
    with open(header_file, encoding="latin-1") as handle:
        for line in handle:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            tokens = stripped.split()
            if len(tokens) < 2:
                raise _fail(record_id, "header", f"record line {stripped!r} has no signal count; expected 'NAME NSIG FS NSAMP'")
            return tokens[2] if len(tokens) >= 3 else None
    raise _fail(record_id, "header", f"{header_file} has no record line; expected 'NAME NSIG FS NSAMP'")


def parse_header_comments(comments: Sequence[str]) -> dict[str, str]:
    """``["Age: 74", "Sex: Male", "Dx: 164889003,59118001"]`` -> ``{"age": "74", "sex": "Male", "dx": "..."}``.

    Keys are lower-cased; lines without ``:`` are kept under ``comment_<i>``.
    """
    parsed: dict[str, str] = {}
    for index, line in enumerate(comments):
        key, sep, value = line.partition(":")
        if sep and key.strip():
            parsed[key.strip().lower()] = value.strip()
        elif line.strip():
            parsed[f"comment_{index}"] = line.strip()
    return parsed


def _check_signal_files(header: Any, directory: str, record_id: str) -> None:
    """Raise if a WFDB signal file is missing or shorter than the header says (truncated download)."""
    if not header.file_name:
        return
    by_file: dict[str, list[int]] = {}
    for channel, name in enumerate(header.file_name):
        by_file.setdefault(name, []).append(channel)
    sig_len = header.sig_len
    for name, channels in by_file.items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise _fail(record_id, "signal file", f"{name} does not exist next to the header; expected {path}")
        fmt = str(header.fmt[channels[0]])
        bytes_per_sample = _WFDB_BYTES_PER_SAMPLE.get(fmt)
        if bytes_per_sample is None or sig_len is None:
            continue
        samples_per_frame = sum(int((header.samps_per_frame or [1] * header.n_sig)[c] or 1) for c in channels)
        offset = int((header.byte_offset or [0] * header.n_sig)[channels[0]] or 0)
        expected = offset + math.ceil(sig_len * samples_per_frame * bytes_per_sample)
        actual = os.path.getsize(path)
        if actual < expected:
            raise _fail(
                record_id, "signal file",
                f"{name} has {actual} bytes; expected at least {expected} bytes for {sig_len} samples x "
                f"{samples_per_frame} channels in WFDB format {fmt} (truncated file?)",
            )


def _diagnose_wfdb_failure(record_path: str, record_id: str) -> None:
    """Raise a specific ``ValueError`` for a WFDB record that ``wfdb.rdrecord`` could not read."""
    import wfdb

    try:
        header = wfdb.rdheader(record_path)
    except Exception as error:
        raise _fail(record_id, "header", f"could not be parsed by wfdb ({error}); expected a WFDB header") from error
    _check_signal_files(header, os.path.dirname(record_path) or ".", record_id)


def read_wfdb_record(
    record_path: str | os.PathLike,
    record_id: str | None = None,
    checks: SignalChecks | None = None,
) -> EcgRecord:
    """Read a WFDB record (``.hea`` + ``.dat`` or the PhysioNet/CinC ``.hea`` + ``.mat``) with ``wfdb``.

    Args:
        record_path: path without extension (or to the ``.hea`` file).
        record_id: name used in errors and in the dataset; defaults to the file stem.
        checks: validation settings (:class:`SignalChecks`).

    Returns:
        An :class:`EcgRecord` in mV with standard lead order. ``metadata`` holds the parsed header
        comments (``age``, ``sex``, ``dx`` ...) and the raw ``comments`` list.

    Raises:
        ValueError: naming the record, the field and the expectation, for missing/truncated files,
            missing sampling rate, unknown units, missing leads and every check of :func:`validate_signal`.
    """
    import wfdb

    record_path = os.fspath(record_path)
    record_path = record_path.removesuffix(".hea")
    record_id = record_id or os.path.basename(record_path)
    header_file = _header_path(record_path)
    if not os.path.exists(header_file):
        raise _fail(record_id, "header", f"file {header_file} does not exist; expected a WFDB .hea header")
    if _header_sampling_rate_token(header_file, record_id) is None:
        raise _fail(record_id, "sampling_rate", f"is missing from the header record line of {header_file}; "
                    "expected e.g. 'NAME 12 500 5000' (12 signals at 500 Hz, 5000 samples)")
    try:
        record = wfdb.rdrecord(record_path, physical=True)
    except Exception as error:
        # wfdb's own messages ("cannot reshape array of size 5000 into shape (12)") do not say what is
        # wrong; look at the header and signal files to say it. Done only on failure: parsing a
        # header costs as much as reading a short record.
        _diagnose_wfdb_failure(record_path, record_id)
        raise _fail(record_id, "signal file", f"could not be read by wfdb ({type(error).__name__}: {error})") from error
    if record.p_signal is None or record.p_signal.shape[0] == 0:
        raise _fail(record_id, "signal", "is empty; expected samples")
    if record.sig_len is not None and record.p_signal.shape[0] != record.sig_len:
        raise _fail(record_id, "signal", f"has {record.p_signal.shape[0]} samples; expected {record.sig_len} as the header says (truncated file?)")
    signal = record.p_signal.T  # wfdb gives (samples, channels)
    units = record.units or ["mV"] * record.n_sig
    scales = []
    for lead, unit in zip(record.sig_name, units):
        factor = _UNIT_TO_MV.get((unit or "mV").strip().lower(), "unknown")
        if factor == "unknown" or factor is None:
            raise _fail(record_id, "units", f"of channel {lead} is {unit!r}; expected mV, uV or V")
        scales.append(factor)
    scales_array = np.asarray(scales, dtype=np.float64)[:, None]
    if not np.all(scales_array == 1.0):
        signal = signal * scales_array
    metadata: dict[str, Any] = parse_header_comments(record.comments or [])
    metadata["comments"] = list(record.comments or [])
    return make_record(signal, record.fs, record.sig_name, record_id, metadata, checks)


# ---------------------------------------------------------------------------------------------
# MATLAB (CODE-15 style) and HDF5 (SPH style)


def read_code15_mat(
    path: str | os.PathLike,
    record_id: str | None = None,
    lead_names: Sequence[str] = STANDARD_LEADS,
    checks: SignalChecks | None = None,
) -> EcgRecord:
    """Read a CODE-15 style MATLAB file: ``feats`` ``(12, samples)`` in mV and ``curr_sample_rate`` (Hz).

    Trailing/leading all-zero columns (CODE-15 pads exams to 4096 samples with zeros) are removed.
    """
    import scipy.io

    path = os.fspath(path)
    record_id = record_id or os.path.splitext(os.path.basename(path))[0]
    try:
        content = scipy.io.loadmat(path)
    except Exception as error:
        raise _fail(record_id, "file", f"{path} could not be read as a MATLAB file ({error})") from error
    if "feats" not in content:
        raise _fail(record_id, "feats", f"is missing from {path}; expected a (leads, samples) array in mV")
    feats = np.asarray(content["feats"])
    rate = content.get("curr_sample_rate")
    rate = None if rate is None else np.asarray(rate).reshape(-1)[0]
    if feats.ndim == 2 and feats.shape[0] != len(lead_names) and feats.shape[1] == len(lead_names):
        feats = feats.T
    if feats.ndim == 2 and feats.shape[1] and np.isfinite(feats).all():
        active = np.flatnonzero(np.abs(feats).sum(axis=0) > 0)
        if active.size:
            feats = feats[:, active[0] : active[-1] + 1]
    return make_record(feats, rate, lead_names, record_id, {}, checks)


def read_hdf5_record(
    path: str | os.PathLike,
    sampling_rate: Any,
    record_id: str | None = None,
    dataset: str = "ecg",
    lead_names: Sequence[str] = STANDARD_LEADS,
    checks: SignalChecks | None = None,
) -> EcgRecord:
    """Read an SPH style HDF5 file: dataset ``ecg`` ``(12, samples)`` in mV; rate comes from metadata (Hz)."""
    import h5py

    path = os.fspath(path)
    record_id = record_id or os.path.splitext(os.path.basename(path))[0]
    try:
        with h5py.File(path, "r") as handle:
            if dataset not in handle:
                raise _fail(record_id, dataset, f"is missing from {path} (has {list(handle.keys())}); expected (leads, samples) in mV")
            signal = np.asarray(handle[dataset][()], dtype=np.float32)
    except OSError as error:
        raise _fail(record_id, "file", f"{path} could not be read as HDF5 ({error})") from error
    return make_record(signal, sampling_rate, lead_names, record_id, {}, checks)


def read_record(path: str | os.PathLike, record_id: str | None = None, checks: SignalChecks | None = None, **kwargs: Any) -> EcgRecord:
    """Read one record, choosing the reader by extension: WFDB (``.hea`` present), ``.mat`` (CODE-15
    style without header), ``.h5``/``.hdf5`` (pass ``sampling_rate=``)."""
    path = os.fspath(path)
    stem, ext = os.path.splitext(path)
    if ext == ".hea" or os.path.exists(path + ".hea") or (ext in ("", ".dat", ".mat") and os.path.exists(stem + ".hea")):
        return read_wfdb_record(stem if ext in (".hea", ".dat", ".mat") else path, record_id, checks)
    if ext == ".mat":
        return read_code15_mat(path, record_id, checks=checks, **kwargs)
    if ext in (".h5", ".hdf5"):
        return read_hdf5_record(path, kwargs.pop("sampling_rate", None), record_id, checks=checks, **kwargs)
    raise ValueError(f"record {record_id or path!r}: field 'path' {path!r} has no known ECG format; expected a WFDB header (.hea), .mat or .h5")
