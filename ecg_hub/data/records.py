"""Reading single ECG records from disk and checking that they are usable.

Every reader returns an :class:`EcgRecord`: a ``(leads, samples)`` float32 array in millivolts (mV),
the sampling rate in Hz, the canonical lead names (``ecg_hub.modeling.leads``) in standard
clinical order, the leads it masks, and a metadata dict.

Bad leads versus bad records. A single dead electrode should not cost the whole recording: every
model takes missing leads through ``lead_mask``. So a lead that is flat (disconnected electrode,
zero-filled channel), clipped at one value for too much of the record (saturated amplifier) or
absent (a required lead neither in the file nor derivable from I and II) is *masked*: its row is
set to zeros and the record lists it in ``masked_leads`` with the reason (``"flat"``,
``"clipped"``, ``"absent"``) at the same position of ``masked_lead_reasons``; the dataset writes
both as columns and the feature extractor turns them into ``lead_mask`` 0. A masked lead is never
used to derive III/aVR/aVL/aVF, so no derived lead carries a dead electrode's signal.

Records too broken to use still raise a ``ValueError`` naming the record, the field and what was
expected (truncated file, NaN/inf values, implausible amplitude = wrong units, missing or
implausible sampling rate, too short, no usable lead, fewer than ``min_usable_leads``), and so do
bad leads with ``SignalChecks(drop_records_with_bad_leads=True)`` (the behaviour before masking).
Dataset builders catch those errors, skip the record and report the reason.

Formats:
  * WFDB (``.hea`` + ``.dat``, or the PhysioNet/CinC ``.hea`` + MATLAB v4 ``.mat``) via ``wfdb``. The
    sampling frequency of the record line and the units of the signal lines are parsed here too:
    ``wfdb`` silently reads an unparseable rate (``abc``, ``-100``, ``nan``, full-width digits) as
    250 Hz and drops non-ASCII characters (``µV`` -> ``V``). Units are case-insensitive and accept
    the micro sign and Greek mu (``mV``, ``uV``/``µV``/``μV``, ``V``).
  * CODE-15 style MATLAB files (``feats`` 12 x N, ``curr_sample_rate``) via ``scipy.io``: ``feats`` must
    be real numbers (not text, cells, structs or complex values), ``curr_sample_rate`` one number.
  * SPH style HDF5 files (dataset ``ecg`` 12 x N in mV) via ``h5py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import unicodedata
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

# Physical units WFDB headers use for ECG channels (after :func:`_unit_key`: NFKC, micro sign -> u,
# lower case), as (multiplier, divisor) to millivolts; ``None`` = WFDB's "NU" (no unit), refused.
# A divisor rather than a 1e-3 factor keeps uV values bit-identical to the same counts read as mV.
_UNIT_TO_MV: dict[str, tuple[float, float] | None] = {"mv": (1.0, 1.0), "uv": (1.0, 1000.0), "v": (1000.0, 1.0), "nu": None}

# The sampling-frequency field of a WFDB record line: FS[/COUNTER[(BASE)]], ASCII digits only (wfdb
# itself drops non-ASCII bytes and falls back to 250 Hz on anything it cannot parse).
_FS_FIELD = re.compile(r"(?P<fs>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:/[0-9]*\.?[0-9]*(?:\(-?[0-9]*\.?[0-9]*\))?)?", re.ASCII)


#: Reasons a lead is masked (``masked_lead_reasons`` values), in the order they are checked.
LEAD_FLAT = "flat"
LEAD_CLIPPED = "clipped"
LEAD_ABSENT = "absent"
MASK_REASONS: tuple[str, ...] = (LEAD_FLAT, LEAD_CLIPPED, LEAD_ABSENT)


@dataclass
class SignalChecks:
    """What :func:`validate_signal` accepts. Defaults were calibrated on the real records in
    ``shared/data`` (PTB-XL 100/500 Hz, CinC 2021 sample, CODE-15 sample, SPH): none of the
    non-flat real records trips them.

    Attributes:
        required_leads: leads every record must have rows for (after deriving III, aVR, aVL, aVF
            from I and II when ``derive_limb_leads`` is set). A required lead that is neither
            recorded nor derivable is zero-filled and masked as ``"absent"`` (or, with
            ``drop_records_with_bad_leads``, the record is skipped). ``None`` accepts any
            non-empty lead set and keeps just the recorded (and derived) leads.
        derive_limb_leads: compute missing III/aVR/aVL/aVF from I and II (Einthoven/Goldberger),
            from usable (unmasked) I and II only.
        expected_sampling_rate: if set, the record's sampling rate must equal it (Hz).
        min_sampling_rate, max_sampling_rate: plausible range for an ECG sampling rate (Hz).
        min_duration_s: shortest accepted record, in seconds.
        max_abs_mv: largest plausible absolute value in mV; larger values usually mean wrong units
            (microvolts or ADC counts stored as mV), so the whole record is skipped. Real records
            here reach about 20 mV.
        flat_peak_to_peak_mv: a lead whose peak-to-peak range is below this (mV) is flat
            (disconnected electrode, zero-filled lead). Real leads here span at least 0.2 mV.
        clipped_fraction: a lead with at least this fraction of its samples exactly at its maximum
            or at its minimum is clipped beyond use (amplifier saturation). Real leads here reach 2.7 %.
        allow_flat_leads, allow_clipped_leads: turn those two checks off (the lead is kept as
            recorded, neither masked nor a reason to skip).
        drop_records_with_bad_leads: skip a record with any flat, clipped or absent lead, as before
            lead masking, instead of zeroing and masking those leads.
        min_usable_leads: fewest unmasked leads a kept record must have (recorded or derived);
            a record with no usable lead at all is always skipped.
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
    drop_records_with_bad_leads: bool = False
    min_usable_leads: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, as the prepare summary's ``options["checks"]`` records them."""
        data = dataclasses.asdict(self)
        data["required_leads"] = None if self.required_leads is None else list(self.required_leads)
        return data


@dataclass
class EcgRecord:
    """One ECG record in memory.

    Attributes:
        signal: ``(leads, samples)`` float32 array in mV; rows of masked leads are zeros.
        sampling_rate: samples per second (Hz), an integer.
        leads: canonical lead names, one per row of ``signal``, in standard clinical order
            (masked leads included: they have a row).
        record_id: the record's name (file stem) or database id.
        metadata: source-specific fields (``age``, ``sex``, ``dx`` codes, header ``comments`` ...).
        masked_leads: leads of ``leads`` whose rows are zeroed because they are unusable, in
            ``leads`` order; models must see them as missing (``lead_mask`` 0).
        masked_lead_reasons: why, one of :data:`MASK_REASONS` per entry of ``masked_leads``.
    """

    signal: np.ndarray
    sampling_rate: int
    leads: list[str]
    record_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    masked_leads: list[str] = field(default_factory=list)
    masked_lead_reasons: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sampling_rate

    @property
    def usable_leads(self) -> list[str]:
        """The leads that carry a recorded (or derived) signal: ``leads`` minus ``masked_leads``."""
        masked = set(self.masked_leads)
        return [lead for lead in self.leads if lead not in masked]


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


def _canonical_channels(
    signal: np.ndarray, lead_names: Sequence[str], record_id: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """Rows of the standard leads under their canonical names, and the names of dropped channels."""
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
    if not kept_names:
        raise _fail(record_id, "leads", f"has no standard ECG lead among {list(lead_names)}; expected e.g. {list(STANDARD_LEADS)}")
    return signal[kept_rows], kept_names, dropped


def _complete_leads(
    signal: np.ndarray,
    leads: Sequence[str],
    record_id: str,
    checks: SignalChecks,
    unusable: Sequence[str] = (),
) -> tuple[np.ndarray, list[str], list[str]]:
    """Derive missing limb leads (from usable I and II only), zero-fill absent required leads,
    and put the rows in standard clinical order.

    Returns ``(signal, leads, absent)``: ``absent`` are the required leads that were zero-filled.
    With ``checks.drop_records_with_bad_leads`` an absent required lead raises instead.
    """
    leads = list(leads)
    if checks.derive_limb_leads:
        blocked = set(unusable)
        sources = [lead for lead in leads if lead not in blocked]
        if "I" in sources and "II" in sources:
            rows = [leads.index("I"), leads.index("II")]
            derived, names = derive_limb_leads(signal[rows], ["I", "II"])
            new = [i for i, name in enumerate(names) if name not in leads]
            if new:
                signal = np.concatenate([signal, derived[new]], axis=0)
                leads = leads + [names[i] for i in new]
    absent: list[str] = []
    if checks.required_leads is not None:
        absent = [lead for lead in checks.required_leads if lead not in leads]
        if absent and checks.drop_records_with_bad_leads:
            raise _fail(
                record_id, "leads",
                f"is missing {', '.join(absent)} (has {', '.join(leads)}); expected {', '.join(checks.required_leads)}",
            )
        if absent:
            signal = np.concatenate([signal, np.zeros((len(absent), signal.shape[1]), dtype=signal.dtype)], axis=0)
            leads = leads + absent
    order = sorted(range(len(leads)), key=lambda i: STANDARD_LEADS.index(leads[i]))
    return signal[order], [leads[i] for i in order], absent


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
        ValueError: a lead appears twice, or a required lead is missing. (This helper looks at names
            only; :func:`make_record` zero-fills and masks absent leads instead.)
    """
    checks = checks or SignalChecks()
    signal, leads, dropped = _canonical_channels(signal, lead_names, record_id)
    strict = dataclasses.replace(checks, drop_records_with_bad_leads=True)
    signal, leads, _ = _complete_leads(signal, leads, record_id, strict)
    return signal, leads, dropped


def find_bad_leads(signal: np.ndarray, leads: Sequence[str], checks: SignalChecks | None = None) -> dict[str, str]:
    """``{lead: "flat" | "clipped"}`` for the leads of a ``(leads, samples)`` mV signal that are
    unusable, in row order (a flat lead is not also clipped). ``allow_*`` checks are skipped.

    Flat: peak-to-peak below ``flat_peak_to_peak_mv``. Clipped: at least ``clipped_fraction`` of the
    samples sit exactly (to 0.1 uV) at the lead's maximum or at its minimum, as a saturated amplifier
    pins the signal at one value.
    """
    checks = checks or SignalChecks()
    if signal.shape[1] == 0:
        return {}
    high = signal.max(axis=1)
    low = signal.min(axis=1)
    spans = high - low
    flat = spans < checks.flat_peak_to_peak_mv
    bad: dict[str, str] = {}
    if not checks.allow_flat_leads:
        bad.update({lead: LEAD_FLAT for lead, is_flat in zip(leads, flat) if is_flat})
    if not checks.allow_clipped_leads:
        tolerance = 1e-4
        at_high = (signal >= high[:, None] - tolerance).sum(axis=1) / signal.shape[1]
        at_low = (signal <= low[:, None] + tolerance).sum(axis=1) / signal.shape[1]
        fraction = np.maximum(at_high, at_low)
        for lead, frac, is_flat in zip(leads, fraction, flat):
            if frac >= checks.clipped_fraction and not is_flat:  # flat is not clipped
                bad[lead] = LEAD_CLIPPED
    return {lead: bad[lead] for lead in leads if lead in bad}


def _describe(bad: dict[str, str]) -> str:
    """``{"V1": "flat", "V2": "flat", "II": "clipped"}`` -> ``"flat: V1, V2; clipped: II"``."""
    return "; ".join(
        f"{reason}: {', '.join(lead for lead, why in bad.items() if why == reason)}"
        for reason in MASK_REASONS if reason in bad.values()
    )


def validate_signal(
    signal: np.ndarray,
    sampling_rate: int,
    leads: Sequence[str],
    record_id: str,
    checks: SignalChecks | None = None,
) -> dict[str, str]:
    """Check a ``(leads, samples)`` signal in mV; raise ``ValueError`` naming record, field and
    expectation when the record is unusable, and return the leads to mask.

    Record-level checks, in order: shape, duration (``min_duration_s``), finite values (no
    NaN/inf), plausible amplitude (``max_abs_mv``); then lead-level checks (:func:`find_bad_leads`:
    flat, clipped). Bad leads raise with ``drop_records_with_bad_leads`` and when no lead is left
    usable; otherwise they come back as ``{lead: reason}`` (empty when all leads are fine) for the
    caller to zero and mask. See :class:`SignalChecks`.
    """
    checks = checks or SignalChecks()
    if signal.ndim != 2 or signal.shape[0] != len(leads):
        raise _fail(record_id, "signal", f"has shape {tuple(signal.shape)}; expected ({len(leads)} leads, samples)")
    num_samples = signal.shape[1]
    if num_samples < checks.min_duration_s * sampling_rate or num_samples == 0:
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
    bad_leads = find_bad_leads(signal, leads, checks)
    if not bad_leads:
        return {}
    if checks.drop_records_with_bad_leads:
        # The messages records were skipped with before lead masking (summaries group by them).
        flat = [lead for lead, why in bad_leads.items() if why == LEAD_FLAT]
        if flat:
            raise _fail(
                record_id, "signal",
                f"has flat lead {', '.join(flat)} (peak-to-peak < {checks.flat_peak_to_peak_mv:g} mV); "
                "expected a recorded ECG in every lead",
            )
        high, low = signal.max(axis=1), signal.min(axis=1)
        details = []
        for lead in (lead for lead, why in bad_leads.items() if why == LEAD_CLIPPED):
            row = list(leads).index(lead)
            frac = max(
                float((signal[row] >= high[row] - 1e-4).mean()), float((signal[row] <= low[row] + 1e-4).mean())
            )
            details.append(f"{lead} ({frac:.0%} of samples)")
        raise _fail(
            record_id, "signal",
            f"has clipped lead {', '.join(details)} at its extreme value; expected fewer than "
            f"{checks.clipped_fraction:.0%} of samples at the lead's maximum or minimum",
        )
    if len(bad_leads) == len(leads):
        raise _fail(
            record_id, "signal",
            f"has no usable lead ({_describe(bad_leads)}); expected at least one lead that is neither flat "
            f"(peak-to-peak >= {checks.flat_peak_to_peak_mv:g} mV) nor clipped",
        )
    return bad_leads


def make_record(
    signal: np.ndarray,
    sampling_rate: Any,
    lead_names: Sequence[str],
    record_id: str,
    metadata: dict[str, Any] | None = None,
    checks: SignalChecks | None = None,
) -> EcgRecord:
    """Build a validated :class:`EcgRecord` from a ``(channels, samples)`` array in mV.

    Canonicalizes lead names (dropping non-ECG channels), casts to float32, runs
    :func:`validate_signal` on the recorded leads, zeroes the flat and clipped ones, derives missing
    limb leads from usable I and II, zero-fills absent required leads, orders the leads and records
    the masked ones (``masked_leads`` / ``masked_lead_reasons``).

    Raises:
        ValueError: for an unusable record (see the module docstring), naming record, field and expectation.
    """
    checks = checks or SignalChecks()
    rate = check_sampling_rate(sampling_rate, record_id, checks)
    try:
        signal = np.asarray(signal)
    except (TypeError, ValueError) as error:
        raise _fail(record_id, "signal", f"could not be read as an array ({error}); expected (channels, samples) in mV") from None
    if signal.dtype.kind not in "iuf":  # booleans, complex numbers, strings, objects are not voltages
        raise _fail(record_id, "signal", f"has dtype {signal.dtype}; expected real numbers in mV")
    signal, leads, dropped = _canonical_channels(signal, lead_names, record_id)
    # Checks run on the float32 values the dataset will hold; limb leads are derived from the
    # file's own precision (float64 from wfdb) and cast once, as the stored leads are.
    bad = validate_signal(np.ascontiguousarray(signal, dtype=np.float32), rate, leads, record_id, checks)
    signal = np.array(signal, dtype=np.float64)  # a copy: masked rows are zeroed in place
    for lead in bad:
        signal[leads.index(lead)] = 0.0
    signal, leads, absent = _complete_leads(signal, leads, record_id, checks, unusable=list(bad))
    signal = signal.astype(np.float32)
    reasons = {**bad, **{lead: LEAD_ABSENT for lead in absent}}
    masked = [lead for lead in leads if lead in reasons]
    usable = len(leads) - len(masked)
    if usable < checks.min_usable_leads:
        raise _fail(
            record_id, "leads",
            f"has {usable} usable leads ({_describe({lead: reasons[lead] for lead in masked})}); "
            f"expected at least {checks.min_usable_leads}",
        )
    metadata = dict(metadata or {})
    if dropped:
        metadata["dropped_channels"] = dropped
    return EcgRecord(
        signal=np.ascontiguousarray(signal), sampling_rate=rate, leads=leads, record_id=record_id, metadata=metadata,
        masked_leads=masked, masked_lead_reasons=[reasons[lead] for lead in masked],
    )


# ---------------------------------------------------------------------------------------------
# WFDB


def _header_path(record_path: str) -> str:
    return record_path if record_path.endswith(".hea") else record_path + ".hea"


@dataclass
class _HeaderFields:
    """What :func:`_parse_header` reads from a WFDB header itself, rather than trusting ``wfdb``."""

    sampling_rate: float
    fs_token: str
    units: list[str | None] | None  # per signal line, as written (None: no units); None if unparsed


def _header_lines(header_file: str) -> list[str]:
    """The header's lines, each decoded as UTF-8 or else Latin-1 (so a micro sign survives), BOM removed."""
    with open(header_file, "rb") as handle:
        raw = handle.read()
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    lines = []
    for line in raw.splitlines():
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("latin-1")
        lines.extend(text.splitlines())  # str line breaks (\v, \f ...) too, as wfdb splits its text
    return lines


def _parse_header(header_file: str, record_id: str) -> _HeaderFields:
    """The sampling frequency (Hz) of a WFDB header's record line and the units of its signal lines.

    ``wfdb`` silently substitutes 250 Hz when the field is absent or unparseable (``abc``, ``-100``,
    ``nan``, ``+100``, full-width digits: it drops non-ASCII bytes), which would mislabel a 500 Hz
    ECG, and it reads ``µV`` as ``V``; so both are parsed here. An ECG record must state its rate
    as ASCII digits (``500``, ``500.0``, ``500/1000``, ``500/1000(0)``).
    """
    lines = [line.strip() for line in _header_lines(header_file)]
    content = [line for line in lines if line and not line.startswith("#")]
    if not content:
        raise _fail(record_id, "header", f"{header_file} has no record line; expected 'NAME NSIG FS NSAMP'")
    tokens = content[0].split()
    if len(tokens) < 2:
        raise _fail(record_id, "header", f"record line {content[0]!r} has no signal count; expected 'NAME NSIG FS NSAMP'")
    if len(tokens) < 3:
        raise _fail(record_id, "sampling_rate", f"is missing from the header record line of {header_file}; "
                    "expected e.g. 'NAME 12 500 5000' (12 signals at 500 Hz, 5000 samples)")
    token = tokens[2]
    match = _FS_FIELD.fullmatch(token)
    if match is None:
        raise _fail(
            record_id, "sampling_rate",
            f"is {token!r} in the header record line of {header_file}; expected a positive number of Hz in "
            "ASCII digits, e.g. 'NAME 12 500 5000' (12 signals at 500 Hz, 5000 samples)",
        )
    units: list[str | None] | None = None
    n_sig = int(tokens[1]) if tokens[1].isascii() and tokens[1].isdigit() else None
    if n_sig is not None and "/" not in tokens[0] and len(content) >= 1 + n_sig:  # single-segment record
        units = []
        for line in content[1 : 1 + n_sig]:
            fields = line.split()
            gain = fields[2] if len(fields) >= 3 else ""
            units.append(gain.partition("/")[2] or None if "/" in gain else None)
    return _HeaderFields(sampling_rate=float(match["fs"]), fs_token=token, units=units)


def _unit_key(unit: str) -> str:
    """``"µV"``/``"μV"`` (micro sign or Greek mu, any case, full-width) -> ``"uv"``; ``"mV"`` -> ``"mv"``."""
    text = unicodedata.normalize("NFKC", unit).strip()  # NFKC maps the micro sign to Greek mu
    return text.replace("\u03bc", "u").lower()


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
        comments (``age``, ``sex``, ``dx`` ...) and the raw ``comments`` list. Flat, clipped and
        absent leads are zeroed and listed in ``masked_leads`` (module docstring).

    Raises:
        ValueError: naming the record, the field and the expectation, for missing/truncated files,
            missing sampling rate, unknown units and every record-level check of
            :func:`validate_signal` (and bad or absent leads with ``drop_records_with_bad_leads``).
    """
    import wfdb

    record_path = os.fspath(record_path)
    record_path = record_path.removesuffix(".hea")
    record_id = record_id or os.path.basename(record_path)
    header_file = _header_path(record_path)
    if not os.path.exists(header_file):
        raise _fail(record_id, "header", f"file {header_file} does not exist; expected a WFDB .hea header")
    fields = _parse_header(header_file, record_id)
    check_sampling_rate(fields.sampling_rate, record_id, checks)
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
    if record.fs is None or abs(float(record.fs) - fields.sampling_rate) > 1e-9 * fields.sampling_rate:
        raise _fail(
            record_id, "sampling_rate",
            f"is {fields.fs_token!r} in the header record line of {header_file} but wfdb read {record.fs!r} Hz; "
            "expected a well-formed record line 'NAME NSIG FS NSAMP'",
        )
    signal = record.p_signal.T  # wfdb gives (samples, channels)
    wfdb_units = list(record.units or ["mV"] * record.n_sig)
    units = wfdb_units
    if fields.units is not None and len(fields.units) == len(wfdb_units):
        units = []
        for lead, mine, theirs in zip(record.sig_name, fields.units, wfdb_units):
            # wfdb drops non-ASCII characters ("µV" -> "V"); anything else means the two parsers
            # read different lines, and neither can be trusted.
            if ("".join(c for c in (mine or "") if c.isascii()) or "mV") != (theirs or "mV"):
                raise _fail(
                    record_id, "units",
                    f"of channel {lead} is {mine!r} in the header but {theirs!r} through wfdb; expected a "
                    "signal line 'FILE FMT GAIN(BASELINE)/UNITS ...' with units mV, uV or V",
                )
            units.append(mine)
    conversions = []
    for lead, unit in zip(record.sig_name, units):
        conversion = _UNIT_TO_MV.get(_unit_key(unit or "mV"), "unknown")
        if conversion == "unknown" or conversion is None:
            raise _fail(record_id, "units", f"of channel {lead} is {unit!r}; expected mV, uV (µV) or V")
        conversions.append(conversion)
    if any(conversion != (1.0, 1.0) for conversion in conversions):
        signal = np.array(signal, dtype=np.float64)
        for conversion in set(conversions) - {(1.0, 1.0)}:
            rows = [i for i, c in enumerate(conversions) if c == conversion]
            multiplier, divisor = conversion
            signal[rows] = signal[rows] * multiplier / divisor
    metadata: dict[str, Any] = parse_header_comments(record.comments or [])
    metadata["comments"] = list(record.comments or [])
    return make_record(signal, fields.sampling_rate, record.sig_name, record_id, metadata, checks)


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
    feats = content["feats"]
    if not isinstance(feats, np.ndarray) or feats.dtype.kind not in "iuf":
        kind = {"U": "text", "S": "text", "O": "a cell array", "V": "a struct", "c": "complex numbers", "b": "booleans"}
        dtype = getattr(feats, "dtype", None)
        what = kind.get(getattr(dtype, "kind", ""), f"a {type(feats).__name__}")
        raise _fail(
            record_id, "feats",
            f"in {path} holds {what} (dtype {dtype}); expected a real-valued (leads, samples) array in mV",
        )
    rate = content.get("curr_sample_rate")
    if rate is not None:
        values = np.asarray(rate)
        if values.size != 1:
            raise _fail(
                record_id, "sampling_rate",
                f"(curr_sample_rate in {path}) has {values.size} values (shape {values.shape}); "
                "expected one number in Hz (e.g. 400)",
            )
        rate = values.reshape(-1)[0]
        if isinstance(rate, np.ndarray):  # a cell holding an array
            rate = rate.reshape(-1)[0] if rate.size == 1 else rate
        if isinstance(rate, (bool, np.bool_, complex, np.complexfloating)):
            raise _fail(record_id, "sampling_rate", f"(curr_sample_rate in {path}) is {rate!r}; expected a real number in Hz")
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
