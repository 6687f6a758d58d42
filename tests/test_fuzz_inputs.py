"""A fuzz pass over the input surface (issue 18 part 5), driven by hypothesis.

1. ``EcgFeatureExtractor``: every preset and a few custom configs, against records of every
   documented form (array, tensor, nested lists, batch, dataset rows and columns), dtype, sampling
   rate, length (1 sample to 60 s), lead naming and unit, each with at most one fault injected.
2. The readers behind ``read_record``: real PTB-XL WFDB records (header fields, encodings, lead
   names, truncated signal files) and real CODE-15 MATLAB files, copied and mutated under tmp_path.
3. ``prepare_folder``'s labels CSV: columns, encodings, BOMs, odd cell values, over real records.

Property everywhere: an input gives an output that meets the documented contract (shapes exactly
as documented, finite values, masks consistent with the leads and the length given) or raises a
``ValueError`` naming the problem (the readers: the record and the field); never another exception
type, never a hang (hypothesis ``deadline``), never a silently wrong shape. Where the fault is
known in advance the test also says which outcome is right (an oracle), so a fault that is
silently accepted fails as surely as a crash.

Every run is deterministic (``derandomize=True``, no example database). Bugs these tests found
have a regression test each at the end of the file (``test_known_bug_*``), with the minimal
reproduction. While a bug is open its test is marked strict-xfail and the fuzz strategies steer
around it (a ``Known bug:`` comment); when it is fixed the xfail test XPASSes and fails, and the
marker and the steering go, so that the fuzz strategies cover the input again. All 16 found so
far are fixed.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import wfdb
from ecg_hub.modeling import EcgFeatureExtractor
from ecg_hub.modeling.leads import (
    DERIVABLE_LIMB_LEADS,
    INDEPENDENT_LEADS,
    STANDARD_LEADS,
    canonical_lead_name,
)
from ecg_hub.modeling.registry import input_preset, input_presets
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import ecg_hub  # noqa: F401  (registers the Auto classes)
from ecg_hub.data import label_names, prepare_folder
from ecg_hub.data.records import read_code15_mat, read_record, read_wfdb_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Deterministic, database-less settings shared by every fuzz test (each sets its max_examples).
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=5000,  # ms per example: generous on a shared 2-core machine, still catches a hang
    print_blob=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _fresh_dir(parent: Path) -> Path:
    """A new empty folder under ``parent`` for one hypothesis example (tmp_path is shared by all)."""
    return Path(tempfile.mkdtemp(dir=parent))


def _error_mentions(error: BaseException, keywords) -> bool:
    message = str(error).lower()
    return any(keyword.lower() in message for keyword in keywords)


# =============================================================================================
# 1. EcgFeatureExtractor
# =============================================================================================

#: Spellings of each lead that the documented contract accepts (case, DI/DII/DIII, MLII, "lead X").
SPELLINGS: dict[str, list[str]] = {
    lead: [lead, lead.upper(), lead.lower(), f" {lead} "] for lead in STANDARD_LEADS
}
SPELLINGS["I"] += ["DI", "lead I", "L1"]
SPELLINGS["II"] += ["DII", "MLII", "Lead_II"]
SPELLINGS["III"] += ["DIII", "lead iii"]
for _n in range(1, 7):
    SPELLINGS[f"V{_n}"] += [f"lead V{_n}", f"LEAD_V{_n}"]
assert all(canonical_lead_name(s) == lead for lead, names in SPELLINGS.items() for s in names)

UNKNOWN_LEAD_NAMES = ["X", "V7", "aVX", "", "lead 13", "ECG", "Vx", "I I", "1", "avrr", "MLIII", "Pleth"]


def _is_unknown(name: str) -> bool:
    try:
        canonical_lead_name(name)
    except ValueError:
        return True
    return False


assert all(_is_unknown(name) for name in UNKNOWN_LEAD_NAMES)

#: Extractors under test: every registered preset (through ``from_preset``) plus custom configs that
#: cover what the presets do not (keep-length batches, fft, centre crop, z-score, a 3-lead target).
CUSTOM_CONFIGS: dict[str, dict] = {
    "custom_keep_length_250": {"sampling_rate": 250, "leads": list(INDEPENDENT_LEADS), "num_samples": None},
    "custom_fft_center_zscore_100": {
        "sampling_rate": 100,
        "leads": list(STANDARD_LEADS),
        "num_samples": 1000,
        "crop": "center",
        "resample_method": "fft",
        "normalization": "zscore_lead",
    },
    "custom_three_leads_bandpass_200": {
        "sampling_rate": 200,
        "leads": ["V1", "I", "aVF"],
        "num_samples": 600,
        "bandpass": [0.5, 40.0],
        "min_samples": 100,
    },
    "custom_strict_12_leads_500": {
        "sampling_rate": 500,
        "leads": list(STANDARD_LEADS),
        "num_samples": 5000,
        "missing_leads": "error",
    },
}
CONFIG_NAMES = sorted(input_presets()) + sorted(CUSTOM_CONFIGS)


def _config(name: str) -> dict:
    return dict(CUSTOM_CONFIGS[name]) if name in CUSTOM_CONFIGS else input_preset(name)


def _extractor(name: str) -> EcgFeatureExtractor:
    return (
        EcgFeatureExtractor(**CUSTOM_CONFIGS[name])
        if name in CUSTOM_CONFIGS
        else EcgFeatureExtractor.from_preset(name)
    )


# Odd and common rates (Hz), including ratios to the target with large terms (1009, 1999, 2048 Hz:
# test_known_bug_polyphase_ratio_is_approximated) and the ends of the plausible range.
ODD_RATES = [10, 50, 100, 128, 250, 257, 257.3, 360, 400, 499.5, 500, 1000, 1009, 1999, 2048, 4000]
FLOAT_DTYPES = [np.float16, np.float32, np.float64]
INT_DTYPES = [np.int16, np.int32, np.int64]
#: (amplitude scale of the generated values, units= passed): mV, uV, V, and uV-scale values declared mV.
AMPLITUDES = [(1.0, "mV"), (1000.0, "uV"), (0.001, "V"), (1000.0, "mV")]
UNIT_SCALE = {"mV": 1.0, "uV": 1e-3, "V": 1e3}
CONTAINERS = ["numpy", "torch", "nested_list", "batch3d", "list_of_records", "row", "rows", "columns"]

#: Fault -> keywords one of which the ValueError message must contain.
FAULTS: dict[str, tuple[str, ...]] = {
    "nan": ("nan", "non-finite"),
    "inf": ("inf", "non-finite"),
    "transpose": ("rows", "(leads, samples)"),
    "duplicate_lead": ("twice", "duplicate", "repeated"),
    "unknown_lead": ("unknown lead",),
    "lead_count": ("rows", "names"),
    "bad_rate": ("sampling_rate",),
    "bad_dtype": ("numeric", "dtype"),
    "bad_rank": ("rank",),
    "bad_units": ("units",),
    "no_leads": ("lead",),
    "bad_masked_lead": ("masked_leads", "unknown lead"),
}
SHORT_KEYWORDS = ("samples",)
MISSING_KEYWORDS = ("missing",)
UNITS_KEYWORDS = ("units", "amplitude", "mv")
#: Implausible rates too (test_known_bug_implausible_sampling_rate): below 10 Hz, above 20 kHz, booleans.
BAD_RATES = [0, -250, float("nan"), float("inf"), None, "abc", -0.0, 0.01, 9.99, True, np.True_, 20_001, 1e9]
BAD_UNITS = ["mv", "microvolt", "", "µV", "millivolts"]


def _signal(seed: int, num_leads: int, num_samples: int, rate: float, scale: float) -> np.ndarray:
    """ECG-like float64 ``(leads, samples)``: a slow sine per lead plus noise, times ``scale``."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / rate
    freq = rng.uniform(0.8, 3.0, size=(num_leads, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(num_leads, 1))
    noise = 0.05 * rng.standard_normal((num_leads, num_samples))
    return scale * (np.sin(2 * np.pi * freq * t + phase) + noise)


@dataclass
class ExtractorCase:
    config: str
    rate: object  # what is passed as sampling_rate (a bad value for the bad_rate fault)
    true_rate: float  # the rate the values were generated at
    leads: list[str] | None  # names as passed
    canonical: list[str]  # canonical names of the rows (before faults)
    array: np.ndarray  # (leads, samples) as generated, before container/faults
    units: str
    container: str
    fault: str | None
    record_id: str = "fuzz-rec"
    values: object = None  # the (possibly faulted) signal as passed
    masked: list[str] | None = None  # masked_leads as passed (any spelling)
    masked_canonical: frozenset = frozenset()  # their canonical names

    @property
    def usable(self) -> list[str]:
        """Canonical leads whose rows reach the output: the recorded ones that are not masked."""
        return [lead for lead in self.canonical if lead not in self.masked_canonical]


@st.composite
def extractor_cases(
    draw, fault: str | None = None, containers=CONTAINERS, config=None, units=None
) -> ExtractorCase:
    """A record in a documented form, valid except for ``fault`` (one of :data:`FAULTS`, or None)."""
    config_name = config or draw(st.sampled_from(CONFIG_NAMES))
    cfg = _config(config_name)
    target = cfg["sampling_rate"]
    # "target": no resampling, so the output values are checked exactly.
    rate_kind = draw(st.sampled_from(["target", "odd", "any"]))
    rate = (
        target
        if rate_kind == "target"
        else draw(st.sampled_from(ODD_RATES) if rate_kind == "odd" else st.integers(10, 4000))
    )
    order = draw(st.permutations(STANDARD_LEADS))
    canonical = list(order[: draw(st.integers(2 if fault == "duplicate_lead" else 1, 12))])
    names = [draw(st.sampled_from(SPELLINGS[lead])) for lead in canonical]
    # Records may be 1 sample long, also those that resample to 0 samples with the fft method
    # (test_known_bug_fft_resample_to_zero_samples): a ValueError saying it is too short.
    min_len = 1
    # Lengths: a few samples, right around the minimum the config needs (both sides), 1-10 s, 10-60 s.
    at_min = math.ceil(cfg.get("min_samples") or target) * rate / target
    span = draw(st.sampled_from(["tiny", "at_minimum", "normal", "normal", "long"]))
    low, high = {
        "tiny": (min_len, 20),
        "at_minimum": (int(at_min) - 2, int(at_min) + 3),
        "normal": (int(rate), int(10 * rate)),
        "long": (int(10 * rate), int(60 * rate)),
    }[span]
    length = draw(st.integers(max(low, min_len), max(high, min_len)))
    container = draw(st.sampled_from(containers))
    if fault in ("bad_rank", "bad_dtype"):
        container = draw(st.sampled_from(["numpy", "torch"] if fault == "bad_rank" else ["numpy", "columns"]))
    if container == "nested_list" and length * len(canonical) > 30_000:
        container = "numpy"  # tolist() of a 60 s 12-lead record is slow and adds nothing
    if fault == "transpose" and length == len(canonical):
        length += 1  # a square array is a valid (leads, samples) array
    amplitudes = [a for a in AMPLITUDES if units is None or a[1] == units]
    counts = [a for a in amplitudes if a[0] == 1000.0]  # integer dtypes hold ADC-like counts
    if fault in ("nan", "inf") or not counts:
        dtype = draw(st.sampled_from(FLOAT_DTYPES))
    else:
        dtype = draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES))
    scale, units = draw(st.sampled_from(counts if np.issubdtype(dtype, np.integer) else amplitudes))
    raw = _signal(draw(st.integers(0, 2**16)), len(canonical), length, rate, scale)
    array = np.round(raw).astype(dtype) if np.issubdtype(dtype, np.integer) else raw.astype(dtype)

    values, passed_rate, passed_names, passed_units = array, rate, list(names), units
    faulty_lead = None  # the lead holding the NaN/inf of those faults: never masked
    if fault in ("nan", "inf"):
        values = array.copy()
        row, col = draw(st.integers(0, len(canonical) - 1)), draw(st.integers(0, length - 1))
        values[row, col] = np.nan if fault == "nan" else draw(st.sampled_from([np.inf, -np.inf]))
        faulty_lead = canonical[row]
    elif fault == "transpose":
        values = array.T
    elif fault == "duplicate_lead":
        i, j = draw(st.lists(st.integers(0, len(canonical) - 1), min_size=2, max_size=2, unique=True))
        passed_names[j] = draw(st.sampled_from(SPELLINGS[canonical[i]]))
    elif fault == "unknown_lead":
        passed_names[draw(st.integers(0, len(canonical) - 1))] = draw(st.sampled_from(UNKNOWN_LEAD_NAMES))
    elif fault == "lead_count":
        spare = [lead for lead in STANDARD_LEADS if lead not in canonical]
        if spare and draw(st.booleans()):
            passed_names.append(draw(st.sampled_from(spare)))
        else:
            passed_names.pop(draw(st.integers(0, len(passed_names) - 1)))
    elif fault == "bad_rate":
        passed_rate = draw(st.sampled_from(BAD_RATES))
    elif fault == "bad_dtype":
        kind = draw(st.sampled_from(["bool", "complex", "str", "object"]))
        short = array[:, : min(length, 600)]  # the dtype is checked before anything looks at the length
        values = {
            "bool": short > 0,
            "complex": short + 1j,
            "str": short.astype(str),
            "object": short.astype(object),
        }[kind]
    elif fault == "bad_rank":
        values = array.ravel() if draw(st.booleans()) else array[None, None]
    elif fault == "bad_units":
        passed_units = draw(st.sampled_from(BAD_UNITS))
    elif fault == "no_leads":
        passed_names = None

    if fault != "bad_rate" and draw(st.integers(0, 5)) == 0:
        # One number in another form: a numpy scalar or a 0-d array (test_known_bug_zero_d_array_sampling_rate).
        forms = [np.array(rate), np.float64(rate)]
        if float(np.float32(rate)) == rate:  # float32 is exact for whole rates, not for 257.3
            forms.append(np.array(rate, dtype=np.float32))
        passed_rate = draw(st.sampled_from(forms))
    # masked_leads (a dataset row's field, or the argument): recorded leads the model must not see,
    # possibly holding NaN (their rows are never read); a masked lead the record lacks is harmless.
    masked, masked_canonical = None, frozenset()
    if fault == "bad_masked_lead" or draw(st.booleans()):
        candidates = [lead for lead in canonical + ["V6", "aVF"] if lead != faulty_lead]
        chosen = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=len(canonical) + 1))
        masked = [draw(st.sampled_from(SPELLINGS[lead])).strip() for lead in chosen]
        masked_canonical = frozenset(chosen)
        if fault == "bad_masked_lead":
            masked.insert(draw(st.integers(0, len(masked))), draw(st.sampled_from(UNKNOWN_LEAD_NAMES)))
        elif (
            fault is None
            and masked_canonical & set(canonical)
            and np.issubdtype(dtype, np.floating)
            and draw(st.booleans())
        ):
            values = array.copy()
            values[
                canonical.index(min(masked_canonical & set(canonical))), draw(st.integers(0, length - 1))
            ] = np.nan
    case = ExtractorCase(
        config=config_name,
        rate=passed_rate,
        true_rate=rate,
        leads=passed_names,
        canonical=canonical,
        array=array,
        units=passed_units,
        container=container,
        fault=fault,
        masked=masked,
        masked_canonical=masked_canonical,
    )
    case.values = values
    return case


def _as_container(values, container: str):
    if container == "torch":
        return torch.from_numpy(np.ascontiguousarray(values))
    if container == "nested_list":
        return values.tolist()
    if container == "batch3d":
        return values[None]
    if container == "list_of_records":
        return [values]
    return values


def _call(fe: EcgFeatureExtractor, case: ExtractorCase, return_tensors=None):
    values = case.values
    if case.container in ("row", "rows", "columns"):
        row = {"signal": values, "sampling_rate": case.rate, "record_id": case.record_id}
        if case.leads is not None:
            row["leads"] = case.leads
        if case.masked is not None:
            row["masked_leads"] = case.masked
        if case.container == "row":
            ecg = row
        elif case.container == "rows":
            ecg = [row]
        else:
            ecg = {key: [value] for key, value in row.items()}
        return fe(ecg, units=case.units, return_tensors=return_tensors)
    return fe(
        _as_container(values, case.container),
        sampling_rate=case.rate,
        leads=case.leads,
        units=case.units,
        record_ids=[case.record_id],
        return_tensors=return_tensors,
        **({} if case.masked is None else {"masked_leads": case.masked}),
    )


def _expected_length(num_samples: int, rate: float, target: float, method: str) -> int:
    """Samples at the target rate: ``resample_poly`` gives ceil(n * up / down), ``resample``
    round(n * target / rate)."""
    if rate == target:
        return num_samples
    ratio = Fraction(target) / Fraction(rate)
    return math.ceil(num_samples * ratio) if method == "polyphase" else round(num_samples * ratio)


def _expected_lead_mask(target_leads, case: ExtractorCase, derive: bool) -> list[int]:
    """1 for a lead recorded and not masked, or derivable from unmasked I and II and not masked itself."""
    usable = set(case.usable)
    can_derive = derive and {"I", "II"} <= usable
    return [
        int(
            lead in usable
            or (can_derive and lead in DERIVABLE_LIMB_LEADS and lead not in case.masked_canonical)
        )
        for lead in target_leads
    ]


def _check_extractor_output(
    fe: EcgFeatureExtractor, out, cases: list[ExtractorCase], lengths: list[int]
) -> None:
    """The documented contract of one successful call, for records of expected ``lengths``."""
    cfg = fe.to_dict()
    target_leads = list(fe.leads)
    batch = len(cases)
    x, attention, lead_mask = (
        np.asarray(out[key]) for key in ("input_values", "attention_mask", "lead_mask")
    )
    num_samples = cfg["num_samples"]
    real = [int(a.sum()) for a in attention]
    width = num_samples if num_samples is not None else max(real)
    assert x.shape == (batch, len(target_leads), width), x.shape
    assert x.dtype == np.dtype(cfg.get("return_dtype", "float32"))
    assert attention.shape == (batch, width) and lead_mask.shape == (batch, len(target_leads))
    assert np.isfinite(x).all(), "non-finite input_values from finite input"
    assert set(np.unique(attention)) <= {0, 1} and set(np.unique(lead_mask)) <= {0, 1}
    if num_samples is None:
        assert abs(width - max(lengths)) <= 1
    for i, (case, length) in enumerate(zip(cases, lengths)):
        k = real[i]
        expected_k = length if num_samples is None else min(length, num_samples)
        assert abs(k - expected_k) <= 1, (k, expected_k)
        assert attention[i, :k].all() and not attention[i, k:].any(), "attention_mask must be 1s then 0s"
        assert np.all(x[i, :, k:] == cfg["padding_value"]), "padding must hold padding_value"
        expected_mask = _expected_lead_mask(target_leads, case, cfg["derive_limb_leads"])
        assert lead_mask[i].tolist() == expected_mask, (lead_mask[i].tolist(), expected_mask)
        absent = lead_mask[i] == 0
        assert np.all(x[i, absent, :k] == 0), "zero-filled leads must be zeros"
        if cfg["normalization"] == "minmax_record" and k:
            assert x[i, :, :k].min() >= -1e-5 and x[i, :, :k].max() <= 1 + 1e-5
        exact_path = (
            case.true_rate == cfg["sampling_rate"]
            and cfg["bandpass"] is None
            and cfg["normalization"] == "none"
            and cfg["crop"] == "start"
        )
        if cfg["normalization"] == "none" and cfg["bandpass"] is None and k >= 10:
            # Resampled or not, a lead keeps its amplitude in mV (units converted, nothing rescaled).
            mv = case.array.astype(np.float64) * UNIT_SCALE[case.units]
            for j, lead in enumerate(target_leads):
                if lead in case.usable:
                    rms_in = np.sqrt(np.mean(mv[case.canonical.index(lead)] ** 2))
                    rms_out = np.sqrt(np.mean(x[i, j, :k].astype(np.float64) ** 2))
                    assert 0.1 * rms_in <= rms_out <= 10 * rms_in, (lead, rms_in, rms_out)
        if exact_path:  # no resampling, filtering or scaling: the output is the input, reordered, in mV
            mv = case.array.astype(np.float64) * UNIT_SCALE[case.units]
            rows = {lead: mv[case.canonical.index(lead)] for lead in case.usable}
            if {"I", "II"} <= set(rows):
                lead_i, lead_ii = rows["I"], rows["II"]
                derived = {
                    "III": lead_ii - lead_i,
                    "aVR": -(lead_i + lead_ii) / 2,
                    "aVL": lead_i - lead_ii / 2,
                    "aVF": lead_ii - lead_i / 2,
                }
                rows = {**{k: v for k, v in derived.items() if k not in case.masked_canonical}, **rows}
            for j, lead in enumerate(target_leads):
                if lead in rows:
                    expected = rows[lead][:k]
                    np.testing.assert_allclose(
                        x[i, j, :k], expected, rtol=1e-6, atol=1e-6 * (1 + np.abs(expected).max())
                    )


def _strict_missing(fe: EcgFeatureExtractor, cases: list[ExtractorCase]) -> bool:
    """Whether a ``missing_leads="error"`` extractor must refuse these records (a target lead is
    neither usable nor derivable)."""
    return fe.missing_leads == "error" and any(
        0 in _expected_lead_mask(list(fe.leads), case, fe.derive_limb_leads) for case in cases
    )


def _run_single_record(case: ExtractorCase) -> None:
    fe = _extractor(case.config)
    note(
        f"config={case.config} rate={case.rate!r} leads={case.leads} masked={case.masked} units={case.units} "
        f"container={case.container} fault={case.fault} shape={getattr(case.values, 'shape', None)} "
        f"dtype={getattr(case.values, 'dtype', None)}"
    )
    cfg = fe.to_dict()
    length = _expected_length(
        case.array.shape[1], case.true_rate, cfg["sampling_rate"], cfg["resample_method"]
    )
    min_samples = fe.effective_min_samples
    event(f"fault={case.fault}")
    event(f"container={case.container}")
    event(f"config={case.config}")
    seconds = case.array.shape[1] / case.true_rate
    event(f"seconds={'<1' if seconds < 1 else '1-10' if seconds <= 10 else '>10'}")
    strict_missing = _strict_missing(fe, [case])
    try:
        out = _call(fe, case, return_tensors="pt" if case.container == "torch" else None)
    except ValueError as error:
        event("outcome=ValueError")
        if case.fault is not None:
            assert _error_mentions(error, FAULTS[case.fault]), f"{case.fault}: {error}"
            return
        if strict_missing:
            assert _error_mentions(error, MISSING_KEYWORDS), str(error)
            return
        if (
            case.units == "mV"
            and np.abs(case.array.astype(np.float64)).max() > 100
            and _error_mentions(error, UNITS_KEYWORDS)
        ):
            return  # uV-scale values declared mV: an amplitude check may reject them (none is documented yet)
        assert length <= min_samples, f"valid record rejected: {error}"
        assert _error_mentions(error, SHORT_KEYWORDS), str(error)
        return
    event("outcome=output")
    assert case.fault is None, f"fault {case.fault} was accepted silently"
    assert not strict_missing, "missing_leads='error' accepted a record without every target lead"
    assert length >= min_samples - 1, f"{length} samples at the target rate accepted, {min_samples} needed"
    if case.container == "torch":
        assert all(
            isinstance(out[key], torch.Tensor) for key in ("input_values", "attention_mask", "lead_mask")
        )
    _check_extractor_output(fe, out, [case], [length])


@settings(FUZZ, max_examples=250)
@given(data=st.data())
def test_fuzz_feature_extractor_valid_records(data):
    """A valid record in any documented form, dtype, rate, length, lead naming and unit: the documented
    output (shapes, masks, finite values, the input's values where nothing resamples), or a ValueError
    saying it is too short."""
    _run_single_record(data.draw(extractor_cases()))


@settings(FUZZ, max_examples=25)
@pytest.mark.parametrize("fault", sorted(FAULTS))
@given(data=st.data())
def test_fuzz_feature_extractor_records_with_one_fault(fault, data):
    """The same records with exactly one fault: a ValueError whose message names it, never another
    exception or a silently accepted record."""
    _run_single_record(data.draw(extractor_cases(fault=fault)))


@settings(FUZZ, max_examples=60)
@given(
    data=st.data(),
    config=st.sampled_from(CONFIG_NAMES),
    size=st.integers(2, 4),
    units=st.sampled_from(sorted(UNIT_SCALE)),
)
def test_fuzz_feature_extractor_batch_of_mixed_records(data, config, size, units):
    """A list of records with their own rates, lengths and leads: one batch, padded/cropped per record."""
    fe = _extractor(config)
    cases = [
        data.draw(extractor_cases(containers=["numpy"], config=config, units=units)) for _ in range(size)
    ]
    cfg = fe.to_dict()
    lengths = [
        _expected_length(c.array.shape[1], c.true_rate, cfg["sampling_rate"], cfg["resample_method"])
        for c in cases
    ]
    min_samples = fe.effective_min_samples
    records = [c.values for c in cases]
    kwargs = {
        "sampling_rate": [c.rate for c in cases],
        "leads": [c.leads for c in cases],
        "units": units,
        "record_ids": [f"r{i}" for i in range(size)],
        "masked_leads": [c.masked or [] for c in cases],
    }
    strict_missing = _strict_missing(fe, cases)
    try:
        out = fe(records, **kwargs)
    except ValueError as error:
        if strict_missing and _error_mentions(error, MISSING_KEYWORDS):
            return
        assert min(lengths) <= min_samples, f"valid batch rejected: {error}"
        assert _error_mentions(error, SHORT_KEYWORDS), str(error)
        return
    assert min(lengths) >= min_samples - 1
    assert not strict_missing, "missing_leads='error' accepted a record without every target lead"
    _check_extractor_output(fe, out, cases, lengths)


# =============================================================================================
# 2. Readers: WFDB (real PTB-XL records, mutated) and CODE-15 MATLAB files, through read_record
# =============================================================================================

PTBXL_RECORDS = ("records100/00000/00001_lr", "records100/00000/00002_lr", "records500/00000/00001_hr")


@dataclass(repr=False)
class WfdbSource:
    name: str
    header: str
    dat: bytes
    signal: np.ndarray  # (12, samples) float64 mV, standard lead order (as in the file)
    digital: np.ndarray  # (samples, 12) ADC counts
    fs: int

    def __repr__(self) -> str:  # hypothesis prints the fixture with a failing example
        return f"WfdbSource({self.name!r}, {self.signal.shape[1]} samples at {self.fs} Hz)"


@pytest.fixture(scope="module")
def ptbxl_sources(shared_data) -> list[WfdbSource]:
    sources = []
    for rel in PTBXL_RECORDS:
        base = shared_data / "ptbxl" / rel
        raw = wfdb.rdrecord(str(base))
        digital = wfdb.rdrecord(str(base), physical=False).d_signal
        assert [canonical_lead_name(n) for n in raw.sig_name] == list(STANDARD_LEADS)
        sources.append(
            WfdbSource(
                name=base.name,
                header=Path(f"{base}.hea").read_text(encoding="ascii"),
                dat=Path(f"{base}.dat").read_bytes(),
                signal=raw.p_signal.T.astype(np.float64),
                digital=digital,
                fs=int(raw.fs),
            )
        )
    return sources


@dataclass
class Header:
    """A WFDB header as tokens, so that mutations edit fields rather than bytes."""

    record: list[str]
    signals: list[list[str]]
    comments: list[str] = field(default_factory=list)
    leading: list[str] = field(default_factory=list)  # comment/blank lines before the record line
    line_end: str = "\n"
    separator: str = " "
    encoding: str = "ascii"
    bom: bool = False

    @classmethod
    def parse(cls, text: str) -> Header:
        lines = [line for line in text.splitlines() if line.strip()]
        return cls(
            record=lines[0].split(),
            signals=[line.split() for line in lines[1:] if not line.startswith("#")],
            comments=[line for line in lines[1:] if line.startswith("#")],
        )

    def render(self) -> bytes:
        lines = (
            self.leading
            + [self.separator.join(self.record)]
            + [self.separator.join(s) for s in self.signals]
            + self.comments
        )
        text = self.line_end.join(lines) + self.line_end
        try:
            data = text.encode(self.encoding)
        except UnicodeEncodeError:  # a Greek mu (units) in a Latin-1/ASCII header of a mutation chain
            data = text.encode("utf-8")
        return (b"\xef\xbb\xbf" + data) if self.bom else data


_GAIN = re.compile(r"^(?P<gain>[^(/]+)(?:\((?P<baseline>[^)]*)\))?(?:/(?P<units>.*))?$")


def _gain_fields(token: str) -> dict:
    match = _GAIN.match(token)
    assert match, token
    return {"gain": match["gain"], "baseline": match["baseline"], "units": match["units"]}


def _gain_token(gain, baseline, units) -> str:
    text = str(gain)
    if baseline is not None:
        text += f"({baseline})"
    if units is not None:
        text += f"/{units}"
    return text


def _write_record(directory: Path, name: str, header: bytes, dat: bytes, dat_name: str | None = None) -> Path:
    (directory / f"{name}.hea").write_bytes(header)
    (directory / (dat_name or f"{name}.dat")).write_bytes(dat)
    return directory / name


def _check_record_contract(record, record_id: str) -> None:
    """What read_wfdb_record / read_record promise for a record they return (default SignalChecks)."""
    signal = record.signal
    assert record.record_id == record_id
    assert isinstance(signal, np.ndarray) and signal.dtype == np.float32 and signal.ndim == 2
    assert signal.shape[0] == len(record.leads)
    # Default checks require the 12 standard leads: present, derived, or zero-filled and masked.
    assert list(record.leads) == list(STANDARD_LEADS), record.leads
    assert isinstance(record.sampling_rate, int) and 50 <= record.sampling_rate <= 20_000
    assert signal.shape[1] >= record.sampling_rate, "shorter than the 1 s minimum"
    assert np.isfinite(signal).all() and np.abs(signal).max() <= 50
    masked = list(getattr(record, "masked_leads", []))
    assert set(masked) <= set(record.leads) and len(masked) < len(record.leads)
    for lead in masked:
        assert not signal[record.leads.index(lead)].any(), f"masked lead {lead} must be zeros"


def _check_record_error(error: ValueError, record_id: str, fields=None) -> None:
    message = str(error)
    assert f"record {record_id!r}" in message, message
    match = re.search(r"field '([^']+)'", message)
    assert match, f"no field named: {message}"
    if fields is not None:
        assert match.group(1) in fields, f"field {match.group(1)!r} not in {fields}: {message}"


def _masked(record) -> set[str]:
    return set(getattr(record, "masked_leads", []))


def _assert_rows(record, expected: dict[str, np.ndarray], atol: float = 0.0) -> None:
    """Rows of ``record`` equal ``expected`` (float64 mV) as float32, except masked leads, which are zeros."""
    for lead, row in expected.items():
        got = record.signal[record.leads.index(lead)]
        if lead in _masked(record):
            assert not got.any()
        elif atol:
            np.testing.assert_allclose(got, row, rtol=0, atol=atol, err_msg=lead)
        else:
            np.testing.assert_array_equal(got, row.astype(np.float32), err_msg=lead)


def _flat(row: np.ndarray) -> bool:
    return float(row.max() - row.min()) < 0.01


@dataclass
class Expect:
    """The right outcome of one mutation: ``ok`` (with a check), ``error`` (in one of ``fields``), or
    ``either`` (threshold cases, or a behaviour the issue leaves open such as masking versus skipping)."""

    outcome: str
    fields: tuple[str, ...] | None = None
    check: object = None


# Each WFDB mutation takes (draw, source, header) and may change header in place; it returns
# (new_dat_bytes or None, Expect). The oracle test applies exactly one.


def _mut_lead_spelling(draw, src, header):
    for tokens in header.signals:
        if _is_unknown(tokens[8]):
            continue  # renamed by an earlier mutation of a chain
        tokens[8] = draw(
            st.sampled_from(
                [s.strip() or s for s in SPELLINGS[canonical_lead_name(tokens[8])] if " " not in s.strip()]
            )
        )
    return None, Expect("ok", check=lambda r: _assert_rows(r, dict(zip(STANDARD_LEADS, src.signal))))


def _mut_lead_permutation(draw, src, header):
    perm = draw(st.permutations(STANDARD_LEADS))
    for tokens, lead in zip(header.signals, perm):
        tokens[8] = draw(st.sampled_from([lead, lead.upper()]))
    return None, Expect(
        "ok", check=lambda r: _assert_rows(r, {lead: src.signal[j] for j, lead in enumerate(perm)})
    )


def _mut_sampling_frequency(draw, src, header):
    kind = draw(st.sampled_from(["integer", "integral_float", "counter", "fractional", "out_of_range"]))
    n = src.signal.shape[1]
    if kind == "out_of_range":
        header.record[2] = str(draw(st.sampled_from([0, 1, 49, 20_001, 100_000])))
        return None, Expect("error", ("sampling_rate",))
    if kind == "fractional":
        header.record[2] = f"{draw(st.integers(50, 5000)) + draw(st.sampled_from([0.5, 0.25, 0.1])):g}"
        return None, Expect("error", ("sampling_rate",))
    fs = draw(st.integers(50, 20_000))
    header.record[2] = {
        "integer": str(fs),
        "integral_float": f"{fs}.0",
        "counter": f"{fs}/{draw(st.integers(1, 1000))}",
    }[kind]
    if n < fs:
        return None, Expect("error", ("signal",))

    def check(record):
        assert record.sampling_rate == fs
        _assert_rows(record, dict(zip(STANDARD_LEADS, src.signal)))

    return None, Expect("ok", check=check)


def _mut_gain(draw, src, header):
    channels = draw(st.lists(st.integers(0, 11), min_size=1, max_size=12, unique=True))
    factor = draw(st.sampled_from([1e-3, 0.01, 0.1, 0.5, 2.0, 10.0, 100.0, 1000.0, 1e4, -1.0]))
    expected = src.signal.copy()
    for c in channels:
        f = _gain_fields(header.signals[c][2])
        header.signals[c][2] = _gain_token(f"{1000.0 * factor:g}", f["baseline"], f["units"])
        expected[c] = src.signal[c] / factor
    return None, _amplitude_expectation(expected)


def _amplitude_expectation(expected: np.ndarray) -> Expect:
    peak = float(np.abs(expected).max())
    if peak > 50 * 1.01:
        return Expect("error", ("signal",))
    flats = [_flat(row) for row in expected]
    rows = dict(zip(STANDARD_LEADS, expected))
    if 49.5 <= peak <= 50.5 or all(flats):
        return Expect(
            "either", ("signal", "leads"), check=lambda r: _assert_rows(r, rows, atol=2e-6 * max(peak, 1))
        )
    if any(flats):  # flat leads: masked (lead masking) or the record skipped (before it)
        return Expect(
            "either", ("signal", "leads"), check=lambda r: _assert_rows(r, rows, atol=2e-6 * max(peak, 1))
        )
    return Expect("ok", check=lambda r: _assert_rows(r, rows, atol=2e-6 * max(peak, 1)))


def _mut_baseline(draw, src, header):
    channel = draw(st.integers(0, 11))
    baseline = draw(st.integers(-100_000, 100_000))
    f = _gain_fields(header.signals[channel][2])
    header.signals[channel][2] = _gain_token(f["gain"], baseline, f["units"])
    expected = src.signal.copy()
    expected[channel] = src.signal[channel] - baseline / 1000.0
    return None, _amplitude_expectation(expected)


def _mut_units(draw, src, header):
    channels = draw(st.lists(st.integers(0, 11), min_size=1, max_size=12, unique=True))
    kind = draw(
        st.sampled_from(
            [
                "uV_same_values",
                "V_same_values",
                "lower_mv",
                "no_units",
                "uV_keep_gain",
                "micro_same_values",
                "micro_keep_gain",
                "unknown",
            ]
        )
    )
    # Micro-volts as written by other tools: micro sign, Greek mu, any case (test_known_bug_micro_sign_units),
    # in a UTF-8 or Latin-1 header.
    micro = draw(st.sampled_from(["µV", "μV", "µv", "UV", "uv"]))
    if "micro" in kind and header.encoding == "ascii":
        header.encoding = draw(st.sampled_from(["utf-8", "latin-1"] if micro.startswith("µ") else ["utf-8"]))
    expected = src.signal.copy()
    for c in channels:
        f = _gain_fields(header.signals[c][2])
        gain, units = {
            "uV_same_values": ("1", "uV"),
            "V_same_values": ("1e+06", "V"),
            "lower_mv": (f["gain"], "mv"),
            "no_units": (f["gain"], None),
            "uV_keep_gain": (f["gain"], "uV"),
            "micro_same_values": ("1", micro),
            "micro_keep_gain": (f["gain"], micro),
            "unknown": (f["gain"], draw(st.sampled_from(["degC", "mmHg", "NU", "bpm", "%"]))),
        }[kind]
        header.signals[c][2] = _gain_token(gain, f["baseline"], units)
        if kind in ("uV_keep_gain", "micro_keep_gain"):
            expected[c] = src.signal[c] / 1000.0
    if kind == "unknown":
        return None, Expect("error", ("units", "header"))
    return None, _amplitude_expectation(expected)


def _mut_signal_count(draw, src, header):
    header.record[1] = str(12 + draw(st.sampled_from([-11, -6, -1, 1, 2, 12])))
    return None, Expect("error")


def _set_record_field(header: Header, index: int, value: str) -> None:
    if len(header.record) > index:
        header.record[index] = value
    else:
        header.record.append(value)  # only the last field (signal length) is ever absent


def _mut_signal_length(draw, src, header):
    n = src.signal.shape[1]
    kind = draw(st.sampled_from(["shorter", "longer", "zero", "omitted"]))
    if kind == "omitted":
        del header.record[3:]
        return None, Expect("ok", check=lambda r: _assert_rows(r, dict(zip(STANDARD_LEADS, src.signal))))
    if kind == "zero":
        _set_record_field(header, 3, "0")
        return None, Expect("error", ("signal", "signal file"))
    if kind == "longer":
        _set_record_field(header, 3, str(draw(st.integers(n + 1, 10 * n))))
        return None, Expect("error", ("signal file", "signal"))
    m = draw(st.integers(1, n - 1))
    _set_record_field(header, 3, str(m))
    if m < src.fs:
        return None, Expect("error", ("signal",))

    def check(record):
        assert record.signal.shape == (12, m)
        _assert_rows(record, dict(zip(STANDARD_LEADS, src.signal[:, :m])))

    # A short window can leave a lead flat or clipped: masked, or (before masking) skipped.
    return None, Expect("either", ("signal", "leads"), check=check)


def _mut_dat_size(draw, src, header):
    if draw(st.booleans()):
        return src.dat[: draw(st.integers(0, len(src.dat) - 1))], Expect("error", ("signal file", "signal"))
    extra = draw(st.binary(min_size=1, max_size=64))
    return src.dat + extra, Expect(
        "ok", check=lambda r: _assert_rows(r, dict(zip(STANDARD_LEADS, src.signal)))
    )


def _mut_duplicate_lead(draw, src, header):
    i, j = draw(st.lists(st.integers(0, 11), min_size=2, max_size=2, unique=True))
    header.signals[j][8] = draw(st.sampled_from([header.signals[i][8], header.signals[i][8].lower()]))
    return None, Expect("error", ("leads",))


def _mut_unknown_lead(draw, src, header):
    channel = draw(st.integers(0, 11))
    lead = STANDARD_LEADS[channel]
    header.signals[channel][8] = draw(st.sampled_from(["Vx", "ECG", "Pleth", "RESP", "V7", "aVX"]))
    rows = {name: src.signal[c] for c, name in enumerate(STANDARD_LEADS) if c != channel}
    if lead in DERIVABLE_LIMB_LEADS:  # III, aVR, aVL, aVF come back, derived from I and II
        lead_i, lead_ii = src.signal[0], src.signal[1]
        rows[lead] = {
            "III": lead_ii - lead_i,
            "aVR": -(lead_i + lead_ii) / 2,
            "aVL": lead_i - lead_ii / 2,
            "aVF": lead_ii - lead_i / 2,
        }[lead]

        def check(record):
            assert lead not in _masked(record)
            _assert_rows(record, rows, atol=1e-5)

        return None, Expect("ok", check=check)

    def check_absent(record):
        assert lead in _masked(record), f"absent {lead} must be masked"
        _assert_rows(record, rows)

    return None, Expect("either", ("leads",), check=check_absent)


def _mut_encoding(draw, src, header):
    kind = draw(
        st.sampled_from(
            [
                "bom",
                "crlf",
                "cr",
                "tabs",
                "leading_comments",
                "latin1_comment",
                "utf8_comment",
                "utf16",
                "utf16_no_bom",
            ]
        )
    )
    same = Expect("ok", check=lambda r: _assert_rows(r, dict(zip(STANDARD_LEADS, src.signal))))
    if kind == "bom":
        header.bom = True
    elif kind == "crlf":
        header.line_end = "\r\n"
    elif kind == "cr":
        header.line_end = "\r"
    elif kind == "tabs":
        header.separator = "\t"
    elif kind == "leading_comments":
        header.leading = ["# exported by a vendor tool", "#", "# Age: 56"]
    elif kind == "latin1_comment":
        header.comments.append("# Ärztin: Müller, Straße 5")
        header.encoding = "latin-1"
    elif kind == "utf8_comment":
        header.comments.append("# Arzt: Müller — Ωμέγα 心电图")
        header.encoding = "utf-8"
    else:
        header.encoding = "utf-16" if kind == "utf16" else "utf-16-le"
        return None, Expect("error", ("header", "sampling_rate", "signal file"))
    return None, same


WFDB_MUTATIONS = {
    "lead_spelling": _mut_lead_spelling,
    "lead_permutation": _mut_lead_permutation,
    "sampling_frequency": _mut_sampling_frequency,
    "gain": _mut_gain,
    "baseline": _mut_baseline,
    "units": _mut_units,
    "signal_count": _mut_signal_count,
    "signal_length": _mut_signal_length,
    "dat_size": _mut_dat_size,
    "duplicate_lead": _mut_duplicate_lead,
    "unknown_lead": _mut_unknown_lead,
    "encoding": _mut_encoding,
}


def _read_and_judge(path: Path, record_id: str, expect: Expect, reader=read_wfdb_record) -> None:
    try:
        record = reader(path)
    except ValueError as error:
        fields = re.findall(r"field '([^']+)'", str(error)) or ["?"]
        event(f"outcome=ValueError field {fields[0]}")
        assert expect.outcome in ("error", "either"), f"valid record rejected: {error}"
        _check_record_error(error, record_id, expect.fields)
        return
    event(f"outcome=record masked={len(_masked(record))}")
    assert expect.outcome in ("ok", "either"), f"expected a ValueError in {expect.fields}, got a record"
    _check_record_contract(record, record_id)
    if expect.check is not None:
        expect.check(record)


@settings(FUZZ, max_examples=20)
@pytest.mark.parametrize("mutation", sorted(WFDB_MUTATIONS))
@given(data=st.data(), which=st.integers(0, len(PTBXL_RECORDS) - 1))
def test_fuzz_wfdb_header_and_signal_file_mutations(ptbxl_sources, tmp_path, mutation, data, which):
    """One mutation of a real PTB-XL record, with the outcome it must have (values checked too)."""
    src = ptbxl_sources[which]
    header = Header.parse(src.header)
    new_dat, expect = WFDB_MUTATIONS[mutation](data.draw, src, header)
    event(f"expect={expect.outcome}")
    directory = _fresh_dir(tmp_path)
    try:
        path = _write_record(directory, src.name, header.render(), src.dat if new_dat is None else new_dat)
        note(header.render()[:400].decode("latin-1"))
        reader = data.draw(
            st.sampled_from(["read_wfdb_record", "read_record_stem", "read_record_hea", "read_record_dat"])
        )
        call = {
            "read_wfdb_record": lambda p: read_wfdb_record(p),
            "read_record_stem": lambda p: read_record(p),
            "read_record_hea": lambda p: read_record(f"{p}.hea"),
            "read_record_dat": lambda p: read_record(Path(f"{p}.dat")),
        }[reader]
        _read_and_judge(path, src.name, expect, reader=call)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@st.composite
def _byte_edits(draw, data: bytes) -> bytes:
    """Random byte-level damage: flip, delete or insert a few bytes, or cut the file."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            break
        kind = draw(st.sampled_from(["flip", "delete", "insert", "cut"]))
        i = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[i] = draw(st.sampled_from(list(b"0123456789 .-+/()#\t\n\r\x00") + [0xFF, 0xE9, 0xB5]))
        elif kind == "delete":
            del out[i : i + draw(st.integers(1, 8))]
        elif kind == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[i:]
    return bytes(out)


@settings(FUZZ, max_examples=150)
@given(data=st.data(), which=st.integers(0, len(PTBXL_RECORDS) - 1))
def test_fuzz_wfdb_mutation_chains_keep_the_contract(ptbxl_sources, tmp_path, data, which):
    """Several mutations at once plus byte-level damage: a record meeting the contract, or a ValueError
    naming the record and a field. Never another exception type."""
    src = ptbxl_sources[which]
    header = Header.parse(src.header)
    dat = src.dat
    for name in data.draw(st.lists(st.sampled_from(sorted(WFDB_MUTATIONS)), min_size=1, max_size=4)):
        new_dat, _ = WFDB_MUTATIONS[name](data.draw, src, header)
        dat = dat if new_dat is None else new_dat
    raw_header = header.render()
    if data.draw(st.booleans()):
        raw_header = data.draw(_byte_edits(raw_header))
    if data.draw(st.booleans()):
        dat = data.draw(_byte_edits(dat))
    directory = _fresh_dir(tmp_path)
    try:
        path = _write_record(directory, src.name, raw_header, dat)
        note(raw_header[:400].decode("latin-1"))
        _read_and_judge(path, src.name, Expect("either"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@settings(FUZZ, max_examples=60)
@given(
    data=st.data(),
    which=st.integers(0, 2),
    subset=st.lists(st.sampled_from(STANDARD_LEADS), min_size=1, max_size=12, unique=True),
)
def test_fuzz_wfdb_lead_subsets_rewritten_from_real_records(ptbxl_sources, tmp_path, data, which, subset):
    """Real records rewritten with wfdb.wrsamp keeping a subset of leads in any order: recorded
    leads unchanged, III/aVR/aVL/aVF derived from I and II, the rest masked (or the record skipped)."""
    src = ptbxl_sources[which]
    columns = [STANDARD_LEADS.index(lead) for lead in subset]
    names = [data.draw(st.sampled_from([lead, lead.upper(), lead.lower()])) for lead in subset]
    directory = _fresh_dir(tmp_path)
    try:
        wfdb.wrsamp(
            "sub",
            fs=src.fs,
            units=["mV"] * len(subset),
            sig_name=names,
            d_signal=src.digital[:, columns],
            fmt=["16"] * len(subset),
            adc_gain=[1000.0] * len(subset),
            baseline=[0] * len(subset),
            write_dir=str(directory),
        )
        rows = {lead: src.signal[STANDARD_LEADS.index(lead)] for lead in subset}
        if {"I", "II"} <= set(subset):
            lead_i, lead_ii = rows["I"], rows["II"]
            derived = {
                "III": lead_ii - lead_i,
                "aVR": -(lead_i + lead_ii) / 2,
                "aVL": lead_i - lead_ii / 2,
                "aVF": lead_ii - lead_i / 2,
            }
            rows = {**derived, **rows}
        absent = [lead for lead in STANDARD_LEADS if lead not in rows]

        def check(record):
            assert set(absent) <= _masked(record), (absent, _masked(record))
            _assert_rows(record, rows, atol=1e-5)

        expect = Expect("either", ("leads", "signal"), check=check) if absent else Expect("ok", check=check)
        _read_and_judge(directory / "sub", "sub", expect)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def code15_feats(shared_data) -> list[tuple[str, np.ndarray, int]]:
    out = []
    for path in sorted((shared_data / "code15_sample" / "records").glob("*.mat"))[:2]:
        content = scipy.io.loadmat(path)
        out.append(
            (
                path.stem,
                np.asarray(content["feats"]),
                int(np.asarray(content["curr_sample_rate"]).reshape(-1)[0]),
            )
        )
    return out


# Including string/cell/struct/complex feats and an empty or repeated curr_sample_rate
# (test_known_bug_code15_mat_*): a ValueError naming field 'feats' or 'sampling_rate'.
CODE15_MUTATIONS = [
    "as_is",
    "transposed",
    "float64",
    "int16_uV",
    "rate_float",
    "rate_fractional",
    "rate_low",
    "rate_nan",
    "rate_string",
    "rate_missing",
    "feats_missing",
    "nan",
    "inf",
    "uV_as_mV",
    "rank3",
    "rank1",
    "empty",
    "zero_padded",
    "flat_lead",
    "bool",
    "feats_str",
    "feats_cell",
    "feats_struct",
    "feats_complex",
    "rate_empty",
    "rate_two_values",
]


@settings(FUZZ, max_examples=4)
@pytest.mark.parametrize("kind", CODE15_MUTATIONS)
@given(data=st.data(), which=st.integers(0, 1))
def test_fuzz_code15_mat_through_read_record(code15_feats, tmp_path, kind, data, which):
    """Real CODE-15 MATLAB files, mutated (dtype, orientation, rate field, NaN, units, shape) and read
    through read_record's dispatch: a contract-meeting record or a ValueError naming record and field."""
    name, feats, rate = code15_feats[which]
    content = {"feats": feats, "curr_sample_rate": np.array([[rate]])}
    expect = Expect("ok", check=lambda r: np.testing.assert_array_equal(r.signal, feats.astype(np.float32)))
    if kind == "transposed":
        content["feats"] = feats.T
    elif kind == "float64":
        content["feats"] = feats.astype(np.float64)
    elif kind == "int16_uV":
        content["feats"] = np.round(feats * 1000).astype(np.int16)
        expect = Expect("error", ("signal",))  # counts stored as mV: the amplitude check says wrong units
    elif kind == "rate_float":
        content["curr_sample_rate"] = np.array([[float(rate)]])
    elif kind in ("rate_fractional", "rate_low", "rate_nan", "rate_string", "rate_missing"):
        content["curr_sample_rate"] = {
            "rate_fractional": 400.5,
            "rate_low": 10,
            "rate_nan": np.nan,
            "rate_string": "400 Hz",
            "rate_missing": None,
        }[kind]
        if content["curr_sample_rate"] is None:
            del content["curr_sample_rate"]
        expect = Expect("error", ("sampling_rate",))
    elif kind == "feats_missing":
        content = {"signal": feats, "curr_sample_rate": rate}
        expect = Expect("error", ("feats",))
    elif kind in ("nan", "inf"):
        bad = feats.astype(np.float64)
        bad[data.draw(st.integers(0, 11)), data.draw(st.integers(0, feats.shape[1] - 1))] = (
            np.nan if kind == "nan" else -np.inf
        )
        content["feats"] = bad
        expect = Expect("error", ("signal",))
    elif kind == "uV_as_mV":
        content["feats"] = feats * 1000
        expect = Expect("error", ("signal",))
    elif kind == "rank3":
        content["feats"] = feats[None]
        expect = Expect("error", ("signal", "feats"))
    elif kind == "rank1":
        content["feats"] = feats[0]
        expect = Expect("error", ("signal", "feats"))
    elif kind == "empty":
        content["feats"] = np.zeros((12, 0), dtype=np.float32)
        expect = Expect("error", ("signal", "feats"))
    elif kind == "zero_padded":  # CODE-15 pads exams with zero columns; they are removed
        pad = data.draw(st.integers(1, 500))
        content["feats"] = np.concatenate(
            [np.zeros((12, pad), np.float32), feats, np.zeros((12, pad), np.float32)], axis=1
        )
    elif kind == "flat_lead":
        flat = feats.copy()
        lead = data.draw(st.integers(0, 11))
        flat[lead] = 0.0
        content["feats"] = flat

        def check(record):
            assert STANDARD_LEADS[lead] in _masked(record)

        expect = Expect("either", ("signal", "leads"), check=check)
    elif kind == "bool":
        content["feats"] = feats > 0
        expect = Expect("either", ("signal", "feats", "leads"))
    elif kind in ("feats_str", "feats_cell", "feats_struct", "feats_complex"):
        if kind == "feats_str":
            content["feats"] = np.array([["abcde"] * 3] * 12)
        elif kind == "feats_cell":
            cell = np.empty(data.draw(st.integers(1, 12)), dtype=object)
            for i in range(cell.size):
                cell[i] = feats[:, : data.draw(st.integers(1, feats.shape[1]))]
            content["feats"] = cell
        elif kind == "feats_struct":
            content["feats"] = {"data": feats, "fs": rate}
        else:
            content["feats"] = feats + 1j * data.draw(st.sampled_from([feats, np.ones_like(feats)]))
        expect = Expect("error", ("feats",))
    elif kind == "rate_empty":
        content["curr_sample_rate"] = np.zeros(data.draw(st.sampled_from([(0,), (0, 0), (1, 0)])))
        expect = Expect("error", ("sampling_rate",))
    elif kind == "rate_two_values":
        content["curr_sample_rate"] = np.array([[rate, rate]])
        expect = Expect("error", ("sampling_rate",))
    directory = _fresh_dir(tmp_path)
    try:
        path = directory / f"{name}.mat"
        scipy.io.savemat(path, content)
        note(f"{kind}: feats {np.asarray(content.get('feats', content.get('signal'))).shape}")
        _read_and_judge(path, name, expect, reader=read_record)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# =============================================================================================
# 3. prepare_folder and its labels CSV
# =============================================================================================

FOLDER_RECORDS = ("00001_lr", "00002_lr", "00003_lr")


@pytest.fixture(scope="module")
def record_folder(shared_data, tmp_path_factory) -> Path:
    """Three real PTB-XL records in a user folder (one in a subfolder), copied from shared/data."""
    root = tmp_path_factory.mktemp("fuzz_folder") / "ecgs"
    (root / "ward").mkdir(parents=True)
    for i, stem in enumerate(FOLDER_RECORDS):
        target = root / "ward" if i == 2 else root
        for ext in (".hea", ".dat"):
            shutil.copyfile(
                shared_data / "ptbxl" / "records100" / "00000" / f"{stem}{ext}", target / f"{stem}{ext}"
            )
    return root


SPLIT_VALUES = {
    "train": "train",
    "TRAIN": "train",
    " val ": "validation",
    "valid": "validation",
    "Validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
BAD_SPLITS = ["holdout", "x", "trn"]
CLASS_TRUE = ["1", "1.0", "true", "True", "yes", "Y"]
CLASS_FALSE = ["0", "0.0", "false", "FALSE", "no", "n", ""]
#: Text that a CSV must carry through unchanged: commas, quotes, newlines and non-ASCII get quoted.
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=20
)


@dataclass
class CsvRow:
    record_id: str
    cells: dict[str, str]
    valid: bool  # the row itself is well-formed (its record may still be missing)
    bad_field: str | None = None


@st.composite
def labels_csvs(draw):
    """A labels CSV as (header, rows, expectations), covering both label layouts and every optional column."""
    layout = draw(st.sampled_from(["labels_column", "class_columns", "class_columns_listed"]))
    optional = draw(
        st.lists(
            st.sampled_from(["patient_id", "split", "fold", "report", "age", "sex"]), unique=True, max_size=6
        )
    )
    class_names = draw(
        st.lists(
            st.sampled_from(["AF", "NORM", "RBBB", "SB", "ST", "Über", "class,with,commas"]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    id_choices = [
        "00001_lr",
        "00002_lr",
        "ward/00003_lr",
        "00003_lr",
        "ghost",
        "ward\\00003_lr",
        " 00001_lr ",
    ]
    ids = draw(
        st.lists(
            st.sampled_from(id_choices),
            min_size=1,
            max_size=5,
            unique_by=lambda s: s.strip().replace("\\", "/").rsplit("/", 1)[-1],
        )
    )
    resolvable = [i for i in ids if _resolve(i) is not None]
    if resolvable and draw(st.integers(0, 3)) == 1:  # about 1 CSV in 4
        # A record listed twice, possibly spelled differently (test_known_bug_duplicate_csv_rows): the
        # CSV is refused, naming the record.
        again = _resolve(draw(st.sampled_from(resolvable)))
        spellings = [c for c in id_choices if _resolve(c) == again]
        ids.insert(draw(st.integers(0, len(ids))), draw(st.sampled_from(spellings)))
    rows = []
    for record_id in ids:
        cells, valid, bad = {"record_id": record_id}, True, None
        if layout == "labels_column":
            chosen = draw(st.lists(st.sampled_from(class_names), unique=True, max_size=len(class_names)))
            cells["labels"] = draw(st.sampled_from([";", " ; "])).join(chosen)
        else:
            for name in class_names:
                if draw(st.integers(0, 20)) == 0:
                    cells[name] = draw(st.sampled_from(["2", "maybe", "-1"]))
                    valid, bad = False, bad or name
                else:
                    cells[name] = draw(st.sampled_from(CLASS_TRUE + CLASS_FALSE))
        for column in optional:
            broken = draw(st.integers(0, 10)) == 0
            if column == "split":
                cells[column] = draw(st.sampled_from(BAD_SPLITS if broken else sorted(SPLIT_VALUES)))
            elif column == "fold":
                # Not an int32 (test_known_bug_fold_out_of_range, test_known_bug_bad_fold_or_age_*): skipped.
                bad_folds = ["abc", "inf", "-inf", "nan", "1e12", "2147483648", "2.5"]
                good_folds = ["", "0", "3", "10", "2.0", "-1", " 4 ", "2147483647"]
                cells[column] = draw(st.sampled_from(bad_folds if broken else good_folds))
            elif column == "age":
                bad_ages = ["old", "inf", "nan", "-1", "1e39"]
                cells[column] = draw(st.sampled_from(bad_ages if broken else ["", "56", "56.5", "0", "101"]))
            else:
                cells[column] = draw(TEXT)
                broken = False
            if broken:
                valid, bad = False, bad or column
        rows.append(CsvRow(record_id, cells, valid, bad))
    columns = ["record_id"] + (["labels"] if layout == "labels_column" else class_names) + optional
    columns = draw(st.permutations(columns))
    return layout, list(columns), class_names, rows


def _render_csv(columns, rows: list[CsvRow], line_end: str, trailing_comma: str = "none") -> str:
    """The CSV text; ``trailing_comma``: ``"data"`` ends every data line with a comma (a common export
    artefact, read with pandas ``index_col=False``), ``"all"`` the header line too."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(list(columns) + ([""] if trailing_comma == "all" else []))
    for row in rows:
        writer.writerow([row.cells.get(c, "") for c in columns] + ([""] if trailing_comma != "none" else []))
    return buffer.getvalue()


def _resolve(record_id: str) -> str | None:
    key = record_id.strip().replace("\\", "/")
    return {
        "00001_lr": "00001_lr",
        "00002_lr": "00002_lr",
        "ward/00003_lr": "ward/00003_lr",
        "00003_lr": "ward/00003_lr",
    }.get(key)


@settings(FUZZ, max_examples=140)
@given(
    spec=labels_csvs(),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]),
    line_end=st.sampled_from(["\n", "\r\n"]),
    trailing_comma=st.sampled_from(["none", "none", "data", "all"]),
)
def test_fuzz_prepare_folder_labels_csv(record_folder, tmp_path, spec, encoding, line_end, trailing_comma):
    """Labels CSVs in both layouts with every optional column, odd cells, BOMs, encodings and trailing
    commas: the dataset has exactly the well-formed rows whose record exists, with their labels;
    every other row is reported by record; a record listed twice, or a CSV that is not UTF-8, is a
    ValueError naming the CSV."""
    layout, columns, class_names, rows = spec
    text = _render_csv(columns, rows, line_end, trailing_comma)
    work = _fresh_dir(tmp_path)
    try:
        csv_path = work / "labels.csv"
        try:
            raw = text.encode(encoding)
        except UnicodeEncodeError:  # not representable in latin-1/cp1252: write UTF-8 instead
            raw, encoding = text.encode("utf-8"), "utf-8"
        csv_path.write_bytes(raw)
        try:  # the module docstring says UTF-8; pandas also strips a UTF-8 BOM
            utf8_ok, faithful = True, raw.decode("utf-8-sig") == text
        except UnicodeDecodeError:
            utf8_ok, faithful = False, False
        kwargs = {"label_columns": class_names} if layout == "class_columns_listed" else {}
        note(f"{encoding!r} {layout}\n{text}")
        expected = {}
        for row in rows:
            target = _resolve(row.record_id)
            if row.valid and target is not None:
                expected[row.record_id.strip()] = row
        targets = [_resolve(row.record_id) for row in rows]
        listed_twice = sorted({t for t in targets if t is not None and targets.count(t) > 1})
        event(f"layout={layout} encoding={encoding} utf8={utf8_ok} listed_twice={bool(listed_twice)}")
        try:
            result = prepare_folder(record_folder, csv_path, work / "ds", progress=False, **kwargs)
        except ValueError as error:
            event("outcome=ValueError")
            message = str(error)
            assert not utf8_ok or not expected or listed_twice, f"usable CSV rejected: {message}"
            assert "labels.csv" in message or "no usable record" in message, message
            if utf8_ok and listed_twice:
                assert "twice" in message and "field 'record_id'" in message, message
                assert listed_twice[0].rsplit("/", 1)[-1] in message, message
            assert not (work / "ds").exists()
            return
        assert utf8_ok, f"a {encoding} CSV that is not UTF-8 was read without complaint"
        assert not listed_twice, f"records {listed_twice} listed twice were accepted"
        if not faithful:
            return  # latin-1 bytes that happen to be valid UTF-8: read as UTF-8, nothing to compare
        ds = result.dataset
        event(f"outcome=dataset of {len(ds)}, {len(result.summary.skipped)} skipped")
        got_ids = list(ds["record_id"])
        assert sorted(got_ids) == sorted(expected), (got_ids, sorted(expected))
        assert len(set(got_ids)) == len(got_ids)
        feature_names = label_names(ds, "labels")
        if layout == "labels_column":
            assert feature_names == sorted(feature_names)
        elif layout == "class_columns":  # discovered: CSV column order
            assert feature_names == [c for c in columns if c in class_names]
        else:
            assert feature_names == class_names
        for record in ds:
            row = expected[record["record_id"]]
            assert np.asarray(record["signal"]).shape == (12, 1000)
            assert record["sampling_rate"] == 100
            if layout == "labels_column":
                want = {n.strip() for n in row.cells["labels"].split(";") if n.strip()}
            else:
                want = {n for n in class_names if row.cells[n] in CLASS_TRUE}
            assert {feature_names[i] for i in record["labels"]} == want
            if "split" in columns:
                assert record["split"] == SPLIT_VALUES[row.cells["split"]]
            else:
                assert record["split"] in ("train", "validation", "test")
            if "patient_id" in columns and row.cells["patient_id"].strip():
                assert record["patient_id"] == row.cells["patient_id"].strip()
            if "fold" in columns:
                assert record["fold"] == (int(float(row.cells["fold"])) if row.cells["fold"] else None)
            if "age" in columns:
                assert record["age"] == (pytest.approx(float(row.cells["age"])) if row.cells["age"] else None)
            if "report" in columns:
                assert record["report"] == row.cells["report"]
        skipped = {item.record_id: item.reason for item in result.summary.skipped}
        for row in rows:
            rid = row.record_id.strip()
            if rid not in expected:
                assert rid in skipped, f"row {rid!r} neither written nor reported"
                assert f"record {rid!r}" in skipped[rid], skipped[rid]
        for reason in skipped.values():
            assert reason.startswith("record '"), reason
    finally:
        shutil.rmtree(work, ignore_errors=True)


@settings(FUZZ, max_examples=25)
@given(
    case=st.sampled_from(
        [
            "no_id_column",
            "renamed_id_column",
            "only_id_column",
            "empty_rows",
            "unbalanced_quote",
            "semicolon_separated",
            "double_bom",
            "utf16_le_no_bom",
            "binary_garbage",
        ]
    ),
    garbage=st.binary(min_size=1, max_size=200),
)
def test_fuzz_prepare_folder_broken_csvs_raise_valueerror(record_folder, tmp_path, case, garbage):
    """CSVs that cannot be used at all: a ValueError naming the CSV (or saying no record is usable)."""
    contents = {
        "no_id_column": b"labels,patient_id\nNORM,p1\n",
        "renamed_id_column": b"Record_ID,labels\n00001_lr,NORM\n",
        "only_id_column": b"record_id\n00001_lr\n",
        "empty_rows": b"record_id,labels\n",
        "unbalanced_quote": b'record_id,labels\n"00001_lr,NORM\n00002_lr,AF\n',
        "semicolon_separated": b"record_id;labels\n00001_lr;NORM\n",
        "double_bom": b"\xef\xbb\xbf\xef\xbb\xbfrecord_id,labels\n00001_lr,NORM\n",
        "utf16_le_no_bom": "record_id,labels\n00001_lr,NORM\n".encode("utf-16-le"),
        "binary_garbage": b"\xff\xfe\x00" + garbage,
    }
    work = _fresh_dir(tmp_path)
    try:
        csv_path = work / "labels.csv"
        csv_path.write_bytes(contents[case])
        with pytest.raises(ValueError) as error:
            prepare_folder(record_folder, csv_path, work / "ds", progress=False)
        message = str(error.value)
        assert "labels.csv" in message or "no usable record" in message, message
        assert not (work / "ds").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# =============================================================================================
# Bugs found by this fuzz pass: minimal reproductions, one regression test each (all fixed)
# =============================================================================================

_X12 = np.sin(np.linspace(0, 60, 5000))[None].repeat(12, axis=0) * np.linspace(0.5, 1.5, 12)[:, None]


def test_known_bug_bfloat16_tensor():
    """Was: a bfloat16 torch tensor raised TypeError (tensor.numpy() has no bfloat16). Now widened
    to float32 first, so the output equals the float32 tensor's."""
    fe = EcgFeatureExtractor.from_preset("ecg_jepa")
    x = torch.from_numpy(_X12).to(torch.bfloat16)
    out = fe(x, sampling_rate=500, leads=STANDARD_LEADS)
    assert out["input_values"].shape == (1, 8, 2500)
    reference = fe(x.float(), sampling_rate=500, leads=STANDARD_LEADS)
    np.testing.assert_array_equal(out["input_values"], reference["input_values"])
    rows = fe([{"signal": x, "sampling_rate": 500, "leads": STANDARD_LEADS}])  # inside a dataset row too
    np.testing.assert_array_equal(rows["input_values"], reference["input_values"])


@pytest.mark.parametrize(
    ("columns", "field_name"),
    [
        ({"signal": np.stack([_X12, _X12]), "sampling_rate": 500, "leads": list(STANDARD_LEADS)}, "sampling_rate"),
        (
            {
                "signal": [_X12, _X12],
                "sampling_rate": [500, 500],
                "leads": [list(STANDARD_LEADS)] * 2,
                "label": [1],
            },
            "label",
        ),
    ],
    ids=["scalar_rate", "short_extra_column"],
)
def test_known_bug_column_batch_with_scalar_or_short_fields(columns, field_name):
    """Was: a column batch (datasets.map(batched=True)) with a scalar field or a short extra column
    raised TypeError/IndexError. Now a ValueError naming the field and the expected length."""
    with pytest.raises(ValueError, match=rf"field '{field_name}' .*expected one value per record \(2 values"):
        EcgFeatureExtractor.from_preset("ecg_jepa")(columns)


@pytest.mark.parametrize("leads", [[None] * 12, list(range(12)), 12], ids=["none", "ints", "int"])
def test_known_bug_non_string_lead_names(leads):
    """Was: lead names that are not strings raised TypeError (_unpack took them for per-record lists)."""
    with pytest.raises(ValueError, match="lead"):
        EcgFeatureExtractor.from_preset("ecg_jepa")(_X12, sampling_rate=500, leads=leads)


@pytest.mark.parametrize(
    "rate", [np.array(500), np.array([500]), np.int64(500), torch.tensor(500)], ids=["0d", "1d", "np_int", "tensor"]
)
def test_known_bug_zero_d_array_sampling_rate(rate):
    """Was: a 0-d numpy array as sampling_rate raised TypeError (iteration over a 0-d array). Now one
    number, as are a one-element array, a numpy scalar and a 0-d tensor."""
    fe = EcgFeatureExtractor.from_preset("ecg_jepa")
    out = fe(_X12, sampling_rate=rate, leads=STANDARD_LEADS)
    reference = fe(_X12, sampling_rate=500, leads=STANDARD_LEADS)
    np.testing.assert_array_equal(out["input_values"], reference["input_values"])


@pytest.mark.parametrize("num_samples", [0, 1])
def test_known_bug_fft_resample_to_zero_samples(num_samples):
    """Was: resample_method='fft' raised ZeroDivisionError when a record resampled to 0 samples.
    Now the length is checked before resampling."""
    fe = EcgFeatureExtractor(resample_method="fft", min_samples=1)
    with pytest.raises(ValueError, match="has 0 samples at 500 Hz"):
        fe(_X12[:, :num_samples], sampling_rate=5000, leads=STANDARD_LEADS)
    from ecg_hub.modeling.feature_extraction_ecg import resample

    with pytest.raises(ValueError, match="resample to 0 samples"):
        resample(_X12[:, :num_samples], 5000, 500, "fft")


@pytest.mark.parametrize(
    ("scale", "return_dtype", "units"),
    [(1e39, "float32", "mV"), (1e5, "float16", "mV"), (1e306, "float32", "V"), (5e4, "float16", "mV")],
)
def test_known_bug_finite_input_gives_non_finite_output(scale, return_dtype, units):
    """Was: finite values beyond the return dtype's range came out as inf (float64 1e39 -> float32,
    1e5 -> float16). Now a ValueError about the amplitude, naming the record."""
    fe = EcgFeatureExtractor(return_dtype=return_dtype)
    with pytest.raises(ValueError, match=r"record big: signal amplitude reaches"):
        fe(_X12 * scale, sampling_rate=500, leads=STANDARD_LEADS, units=units, record_ids=["big"])
    out = fe(_X12 * 100, sampling_rate=500, leads=STANDARD_LEADS, units=units)  # in range: fine
    assert np.isfinite(out["input_values"]).all()


@pytest.mark.parametrize(
    "rate", [0.01, 9.99, True, np.True_, 20_000.5, 1e9], ids=["0.01Hz", "9.99Hz", "True", "np.True_", "20kHz+", "1GHz"]
)
def test_known_bug_implausible_sampling_rate(rate):
    """Was: implausible rates were accepted (0.01 Hz upsampled 25000x, True was 1 Hz) or failed inside
    scipy. Now the plausible range is 10 Hz to 20 kHz, booleans refused."""
    with pytest.raises(ValueError, match=r"record #0 in the batch: sampling_rate"):
        EcgFeatureExtractor.from_preset("ecg_jepa")(_X12[:, :10], sampling_rate=rate, leads=STANDARD_LEADS)
    with pytest.raises(ValueError, match="sampling_rate"):
        EcgFeatureExtractor(sampling_rate=rate)


@pytest.mark.parametrize("rate", [10, 20_000])
def test_plausible_sampling_rate_bounds_are_accepted(rate):
    fe = EcgFeatureExtractor(sampling_rate=250, leads=["I"], num_samples=None, min_samples=1)
    out = fe(np.sin(np.arange(2 * rate) / rate)[None], sampling_rate=rate, leads=["I"])
    assert int(out["attention_mask"].sum()) == 500


@pytest.mark.parametrize("rate", [1009, 1999, 2048, 257.3, 1234.5678])
def test_known_bug_polyphase_ratio_is_approximated(rate):
    """Was: polyphase resampling approximated the rate ratio (limit_denominator(1000)): 60 s at
    1999 Hz gave 14993 samples at 250 Hz. Now the exact ratio and the documented length."""
    from ecg_hub.modeling.feature_extraction_ecg import resampled_length

    fe = EcgFeatureExtractor(sampling_rate=250, leads=["I"], num_samples=None)
    num = round(60 * rate)
    out = fe(np.sin(np.arange(num) / rate)[None], sampling_rate=rate, leads=["I"])
    expected = math.ceil(num * Fraction(str(rate)) ** -1 * 250)
    assert int(out["attention_mask"].sum()) == resampled_length(num, rate, 250) == expected
    if isinstance(rate, int):
        assert expected == 15000


@pytest.mark.parametrize("num_samples", [5000, None])
def test_known_bug_empty_batch_message(num_samples):
    """Was: an empty batch array (0, leads, samples) failed in np.stack/max with a meaningless message."""
    with pytest.raises(ValueError, match=r"(?i)empty batch|batch is empty|0 records|no records"):
        EcgFeatureExtractor(num_samples=num_samples)(
            np.zeros((0, 12, 5000)), sampling_rate=500, leads=STANDARD_LEADS
        )


def _ptbxl_copy(shared_data: Path, directory: Path, header_edit) -> Path:
    base = shared_data / "ptbxl" / "records100" / "00000" / "00001_lr"
    text = Path(f"{base}.hea").read_text(encoding="ascii")
    raw = header_edit(text)
    (directory / "00001_lr.hea").write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8"))
    shutil.copyfile(f"{base}.dat", directory / "00001_lr.dat")
    return directory / "00001_lr"


@pytest.mark.parametrize("token", ["abc", "-100", "nan", "inf", "+100", "１００", "1e2", "100x", "1\u00e900"])
def test_known_bug_unparseable_header_sampling_frequency(shared_data, tmp_path, token):
    """Was: an unparseable sampling frequency in the .hea record line was read as wfdb's default
    250 Hz (or a shifted field), silently. Now the record line is parsed here: field 'sampling_rate'."""
    path = _ptbxl_copy(
        shared_data,
        tmp_path,
        lambda text: text.replace("00001_lr 12 100 1000", f"00001_lr 12 {token} 1000", 1),
    )
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path)
    _check_record_error(error.value, "00001_lr", ("sampling_rate",))
    assert repr(token) in str(error.value)


@pytest.mark.parametrize("token", ["100", "100.0", "100/1000", "100/1000(0)"])
def test_wfdb_header_sampling_frequency_forms(shared_data, tmp_path, token):
    path = _ptbxl_copy(
        shared_data, tmp_path, lambda text: text.replace("00001_lr 12 100 1000", f"00001_lr 12 {token} 1000", 1)
    )
    assert read_wfdb_record(path).sampling_rate == 100


@pytest.mark.parametrize(
    ("units", "encoding"),
    [("µV", "utf-8"), ("µV", "latin-1"), ("μV", "utf-8"), ("µv", "utf-8"), ("UV", "ascii"), ("ｕＶ", "utf-8")],
)
def test_known_bug_micro_sign_units(shared_data, tmp_path, units, encoding):
    """Was: wfdb parsed units 'µV'/'μV' as 'V', so a micro-volt record was scaled 1e6 too high and
    rejected as 'wrong units'. Now the units are parsed from the header, micro-sign- and case-aware."""
    path = _ptbxl_copy(
        shared_data, tmp_path, lambda text: text.replace("1000.0(0)/mV", f"1(0)/{units}").encode(encoding)
    )
    reference = read_wfdb_record(shared_data / "ptbxl" / "records100" / "00000" / "00001_lr")
    np.testing.assert_array_equal(read_wfdb_record(path).signal, reference.signal)


@pytest.mark.parametrize("kind", ["str", "cell", "struct"])
def test_known_bug_code15_mat_non_numeric_feats(tmp_path, kind):
    """Was: CODE-15 .mat feats of strings, cells or structs raised TypeError (np.isfinite)."""
    cell = np.empty(2, dtype=object)
    cell[0], cell[1] = _X12, _X12[:, :10]
    feats = {"str": np.array([["abcde"] * 3] * 12), "cell": cell, "struct": {"a": 1}}[kind]
    scipy.io.savemat(tmp_path / "rec.mat", {"feats": feats, "curr_sample_rate": 400})
    with pytest.raises(ValueError) as error:
        read_record(tmp_path / "rec.mat")
    _check_record_error(error.value, "rec", ("feats",))
    assert str(tmp_path / "rec.mat") in str(error.value)


@pytest.mark.parametrize("rate", [np.zeros((0,)), np.zeros((1, 0)), np.array([[400, 400]])], ids=["empty", "1x0", "two"])
def test_known_bug_code15_mat_empty_sample_rate(tmp_path, rate):
    """Was: an empty curr_sample_rate in a CODE-15 .mat raised IndexError (two values: the first was used)."""
    scipy.io.savemat(tmp_path / "rec.mat", {"feats": _X12, "curr_sample_rate": rate})
    with pytest.raises(ValueError) as error:
        read_code15_mat(tmp_path / "rec.mat")
    _check_record_error(error.value, "rec", ("sampling_rate",))
    assert str(tmp_path / "rec.mat") in str(error.value)


def test_known_bug_code15_mat_complex_feats(tmp_path):
    """Was: complex CODE-15 feats were accepted, the imaginary part dropped silently."""
    scipy.io.savemat(tmp_path / "rec.mat", {"feats": _X12 + 1j * _X12, "curr_sample_rate": 500})
    with pytest.raises(ValueError) as error:
        read_record(tmp_path / "rec.mat")
    _check_record_error(error.value, "rec", ("feats",))
    assert "complex" in str(error.value)


def _csv_case(record_folder: Path, tmp_path: Path, text: bytes, **kwargs):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(text)
    return prepare_folder(record_folder, csv_path, tmp_path / "ds", progress=False, **kwargs)


@pytest.mark.parametrize(
    ("second", "spelled"), [("00001_lr", ""), ("ward/00003_lr", " (as '00003_lr' and 'ward/00003_lr')")]
)
def test_known_bug_duplicate_csv_rows(record_folder, tmp_path, second, spelled):
    """Was: a record listed twice in the labels CSV was written twice, possibly with conflicting labels
    and in two splits. Now (documented in ecg_hub.data.folder) a ValueError naming the CSV, the
    record_id and both rows, and nothing is written: which row is right cannot be told."""
    first = "00003_lr" if spelled else "00001_lr"
    text = f"record_id,labels,split\n{first},NORM,train\n00002_lr,AF,train\n{second},AF,test\n".encode()
    with pytest.raises(ValueError) as error:
        _csv_case(record_folder, tmp_path, text)
    message = str(error.value)
    assert "labels.csv" in message and "field 'record_id'" in message, message
    assert f"lists record {second!r} twice, in data rows 1 and 3{spelled}" in message, message
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("fold", ["inf", "1e12", "-inf", "nan", "2.5", "2147483648"])
def test_known_bug_fold_out_of_range(record_folder, tmp_path, fold):
    """Was: fold 'inf' raised OverflowError, a fold beyond int32 aborted the whole build with pyarrow's
    'Integer value ... not in range'. Now that record is skipped, its reason naming the field."""
    text = f"record_id,labels,fold\n00001_lr,NORM,{fold}\n00002_lr,AF,2.0\n".encode()
    result = _csv_case(record_folder, tmp_path, text)
    assert list(result.dataset["record_id"]) == ["00002_lr"] and list(result.dataset["fold"]) == [2]
    reasons = {item.record_id: item.reason for item in result.summary.skipped}
    assert "field 'fold'" in reasons["00001_lr"], reasons


@pytest.mark.parametrize(("column", "value"), [("fold", "abc"), ("age", "abc"), ("age", "inf"), ("age", "-1")])
def test_known_bug_bad_fold_or_age_reason_names_field(record_folder, tmp_path, column, value):
    """Was: a bad fold/age cell skipped the record with Python's 'could not convert string to float'.
    Now the reason names the record, the field, the data row and the CSV."""
    text = f"record_id,labels,{column}\n00002_lr,AF,1\n00001_lr,NORM,{value}\n".encode()
    result = _csv_case(record_folder, tmp_path, text)
    reasons = {item.record_id: item.reason for item in result.summary.skipped}
    reason = reasons["00001_lr"]
    assert reason.startswith(f"record '00001_lr': field {column!r} is {value!r} in data row 2 of labels CSV"), reason
    assert "labels.csv" in reason, reason


def test_known_bug_empty_csv_message(record_folder, tmp_path):
    """Was: an empty (0-byte) labels CSV raised pandas' 'No columns to parse from file'."""
    with pytest.raises(ValueError, match=r"labels CSV '.*labels\.csv' is empty"):
        _csv_case(record_folder, tmp_path, b"")


@pytest.mark.parametrize("header_comma", [False, True])
def test_trailing_commas_do_not_shift_columns(record_folder, tmp_path, header_comma):
    """A trailing comma on every line (index_col=False): the columns stay where the header puts them."""
    header = "record_id,labels,age" + ("," if header_comma else "")
    text = f"{header}\n00001_lr,NORM,56,\n00002_lr,AF,,\n".encode()
    ds = _csv_case(record_folder, tmp_path, text).dataset
    assert sorted(ds["record_id"]) == ["00001_lr", "00002_lr"]
    assert {r: a for r, a in zip(ds["record_id"], ds["age"])} == {"00001_lr": 56.0, "00002_lr": None}


def test_extra_non_empty_field_is_refused(record_folder, tmp_path):
    """More values than the header names: pandas would drop them silently with index_col=False."""
    with pytest.raises(ValueError, match=r"labels CSV '.*labels\.csv': data row 1 has 4 fields"):
        _csv_case(record_folder, tmp_path, b"record_id,labels,age\n00001_lr,NORM,56,AF\n")
