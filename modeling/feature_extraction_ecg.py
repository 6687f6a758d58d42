"""``EcgFeatureExtractor``: turns any ECG recording into exactly the tensor a model expects.

Every ECG foundation model was trained on one precise input: a lead set in a given order, a
sampling rate, a length, a filter and an amplitude scaling. The extractor carries those choices in
``preprocessor_config.json`` next to the weights, so that a checkpoint and its preprocessing travel
together. The steps are pure numpy/scipy functions (also usable inside ``datasets.map``):

1. validate (rank, dtype, NaN/inf, sampling rate, lead names against the array); a sampling rate
   must lie in the plausible ECG range :data:`MIN_SAMPLING_RATE_HZ` to :data:`MAX_SAMPLING_RATE_HZ`
   (10 Hz to 20 kHz; booleans are refused);
2. convert units to millivolts (mV);
3. derive the limb leads III, aVR, aVL, aVF from I and II when the target needs them;
4. select and reorder leads; zero-fill leads the record lacks, and leads it masks (a dataset's
   ``masked_leads`` column: flat, clipped or absent leads), and flag them in ``lead_mask``;
5. resample to the target rate (polyphase by default), to exactly :func:`resampled_length` samples;
6. band-pass (Butterworth, second-order sections, zero-phase), if configured;
7. crop (start / center / random for training) or pad to ``num_samples``, with ``attention_mask``;
   or, with ``window_stride=``, cut the whole record into sliding windows of ``num_samples``;
8. normalise each window (none, per-lead z-score, or whole-record min-max).

Nothing is reduced without a word: outside training, a call that crops a record or zero-fills more
than half of the model's leads issues one :class:`EcgInputReducedWarning` naming the records.

Every input either gives the documented output or raises a ``ValueError`` naming the record, the
field and what was expected (issue 18); values that cannot be represented in ``return_dtype``
after conversion (finite input overflowing float32/float16) are refused, never returned as inf.

This module imports numpy, scipy and transformers only: it is part of the Hub remote-code bundle.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

from .leads import DERIVABLE_LIMB_LEADS, STANDARD_LEADS, canonicalize_leads
from .leads import derive_limb_leads as _derive_limb_leads
from .registry import input_preset

CROP_POLICIES = ("start", "center", "random")
NORMALIZATIONS = ("none", "zscore_lead", "minmax_record")
RESAMPLE_METHODS = ("polyphase", "fft")
UNITS_TO_MV = {"mV": 1.0, "uV": 1e-3, "V": 1e3}

#: Plausible ECG sampling rates (Hz), inclusive: records (and the target rate) outside this range are
#: refused with a ``ValueError`` naming ``sampling_rate``. Clinical ECGs are recorded at 100 Hz to
#: 10 kHz; 10 Hz is far below any diagnostic use, 20 kHz above any ECG amplifier.
MIN_SAMPLING_RATE_HZ = 10.0
MAX_SAMPLING_RATE_HZ = 20_000.0

#: Largest polyphase up/down factor used as is (a FIR of about 20 x factor taps, at most ~0.5 s to
#: design). Every pair of whole or half rates in the plausible range stays below it (at most 40 000);
#: a ratio beyond it (two arbitrary floats) is approximated to within about 1e-10, and the output
#: trimmed or edge-padded to the exact documented length.
_MAX_POLYPHASE_FACTOR = 100_000

#: How far preprocessing may grow a record's peak before the output must be checked against the
#: range of ``return_dtype`` (limb-lead derivation doubles it at most; filter overshoot is a few times).
_OUTPUT_HEADROOM = 1024.0


# ----------------------------------------------------------------------------------------------
# Pure signal functions. Each takes and returns (leads, samples) arrays.
# ----------------------------------------------------------------------------------------------


def _scipy_signal():
    """``scipy.signal``, imported on first use: it costs about half a second, and ``import ecg_hub``
    (which imports this module to register the extractor) should not pay it."""
    from scipy import signal

    return signal


def exact_rate(rate: float) -> Fraction:
    """A sampling rate as an exact fraction: ints exactly, floats as the simplest fraction (denominator
    at most 1000) equal to them (``499.5`` -> 999/2, ``257.3`` -> 2573/10), else their exact binary value."""
    if isinstance(rate, Fraction):
        return rate
    if isinstance(rate, (int, np.integer)) and not isinstance(rate, (bool, np.bool_)):
        return Fraction(int(rate))
    value = float(rate)
    exact = Fraction(value)
    simple = exact.limit_denominator(1000)
    return simple if float(simple) == value else exact


def resampled_length(num_samples: int, source_rate: float, target_rate: float, method: str = "polyphase") -> int:
    """Samples that :func:`resample` returns for ``num_samples`` at ``source_rate``: with the exact
    ratio ``r = target / source`` (:func:`exact_rate`), ``ceil(num_samples * r)`` for ``polyphase`` (as
    ``scipy.signal.resample_poly``) and ``round(num_samples * r)`` for ``fft``. E.g. 60 s at 1999 Hz
    gives exactly 15000 samples at 250 Hz."""
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"resample_method must be one of {RESAMPLE_METHODS}, got {method!r}")
    if source_rate == target_rate:
        return int(num_samples)
    ratio = exact_rate(target_rate) / exact_rate(source_rate)
    return math.ceil(num_samples * ratio) if method == "polyphase" else round(num_samples * ratio)


def _bounded_ratio(ratio: Fraction, limit: int) -> Fraction:
    """The fraction nearest ``ratio`` whose numerator and denominator are both at most ``limit``."""
    if ratio <= 1:
        return ratio.limit_denominator(limit)
    return 1 / (1 / ratio).limit_denominator(limit)


def resample(signal: np.ndarray, source_rate: float, target_rate: float, method: str = "polyphase") -> np.ndarray:
    """Resample ``(leads, samples)`` from ``source_rate`` to ``target_rate`` (both in Hz).

    ``polyphase`` uses ``scipy.signal.resample_poly`` with the exact rational ratio of the two rates
    (250/500 -> 1/2, 500/400 -> 5/4, 250/1999 -> 250/1999); ``fft`` uses ``scipy.signal.resample`` as
    the official ECG-JEPA code does. The output has exactly :func:`resampled_length` samples.

    Raises:
        ValueError: if the record would resample to no sample at all.
    """
    if source_rate == target_rate:
        return signal
    num = resampled_length(signal.shape[-1], source_rate, target_rate, method)
    if num < 1:
        raise ValueError(
            f"{signal.shape[-1]} samples at {float(source_rate):g} Hz resample to {num} samples at "
            f"{float(target_rate):g} Hz; expected at least 1 sample (the record is too short)"
        )
    if method == "fft":
        return _scipy_signal().resample(signal, num, axis=-1)
    ratio = exact_rate(target_rate) / exact_rate(source_rate)
    if max(ratio.numerator, ratio.denominator) > _MAX_POLYPHASE_FACTOR:
        ratio = _bounded_ratio(ratio, _MAX_POLYPHASE_FACTOR)
    out = _scipy_signal().resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    if out.shape[-1] > num:  # only with an approximated ratio (a length error of ~1e-10 relative)
        out = out[..., :num]
    elif out.shape[-1] < num:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, num - out.shape[-1])], mode="edge")
    return out


@lru_cache(maxsize=32)
def _butter_sos(low_hz: float, high_hz: float, order: int, sampling_rate: float) -> np.ndarray:
    return _scipy_signal().butter(order, [low_hz, high_hz], btype="bandpass", fs=sampling_rate, output="sos")


def bandpass(signal: np.ndarray, low_hz: float, high_hz: float, order: int, sampling_rate: float) -> np.ndarray:
    """Zero-phase Butterworth band-pass (second-order sections, forward and backward) along time."""
    if not 0 < low_hz < high_hz < sampling_rate / 2:
        raise ValueError(
            f"bandpass cut-offs must satisfy 0 < low < high < Nyquist ({sampling_rate / 2} Hz), "
            f"got ({low_hz}, {high_hz}) Hz"
        )
    sos = _butter_sos(float(low_hz), float(high_hz), int(order), float(sampling_rate))
    # sosfiltfilt needs more samples than its padding (3 x the filter length); shorter records
    # are padded less rather than rejected.
    padlen = min(3 * (2 * len(sos) + 1), signal.shape[-1] - 1)
    return _scipy_signal().sosfiltfilt(sos, signal, axis=-1, padlen=padlen)


def normalize(signal: np.ndarray, method: str, lead_present: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """Scale amplitudes. ``lead_present`` (leads,) bool excludes zero-filled leads from the statistics.

    - ``none``: keep millivolts.
    - ``zscore_lead``: each lead to zero mean and unit variance.
    - ``minmax_record``: one min and one max over all present leads, mapped to [0, 1] (MERL/MELP).
    """
    if method == "none":
        return signal
    present = np.ones(signal.shape[0], dtype=bool) if lead_present is None else lead_present.astype(bool)
    out = np.zeros_like(signal)
    if not present.any():
        return out
    values = signal[present]
    if method == "zscore_lead":
        mean = values.mean(axis=-1, keepdims=True)
        std = values.std(axis=-1, keepdims=True)
        out[present] = (values - mean) / (std + eps)
    elif method == "minmax_record":
        low, high = values.min(), values.max()
        out[present] = (values - low) / (high - low + eps)
    else:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")
    return out


def crop_window_start(num_available: int, num_samples: int, policy: str, rng: np.random.Generator | None) -> int:
    """First sample of a ``num_samples`` window inside ``num_available`` samples."""
    excess = num_available - num_samples
    if excess <= 0:
        return 0
    if policy == "start":
        return 0
    if policy == "center":
        return excess // 2
    if policy == "random":
        return int((rng or np.random.default_rng()).integers(0, excess + 1))
    raise ValueError(f"crop must be one of {CROP_POLICIES}, got {policy!r}")


def sliding_window_starts(num_available: int, num_samples: int, stride: int) -> list[int]:
    """First samples of the ``num_samples`` windows that cover ``num_available`` samples, every
    ``stride`` samples. The last window ends at the record's end (it may overlap its neighbour more
    than ``stride`` asks), so no sample is left out; a record no longer than a window is one window."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride <= 0:
        raise ValueError(f"window_stride must be a positive number of samples, got {stride!r}")
    if num_available <= num_samples:
        return [0]
    last = num_available - num_samples
    starts = list(range(0, last + 1, int(stride)))
    if starts[-1] != last:
        starts.append(last)
    return starts


class EcgInputReducedWarning(UserWarning):
    """A record lost information on its way to the model: it was cropped to the model's window
    (``kind="cropped"``), or more than half of the model's leads had to be zero-filled
    (``kind="zero_filled"``). ``record_ids`` names the records of the call. Silence it with
    ``warnings.simplefilter("ignore", EcgInputReducedWarning)``."""

    def __init__(
        self, message: str, kind: str = "", record_ids: Sequence[str] = (), num_records: int = 0, detail: str = ""
    ):
        super().__init__(message)
        self.kind = kind
        self.record_ids = list(record_ids)
        self.num_records = num_records
        #: what was reduced and what to do, without the counts (a caller re-counting over calls reuses it)
        self.detail = detail


def _reduction_warnings(cropped: list, sparse: list, num_records: int, extractor) -> list[EcgInputReducedWarning]:
    """The warnings of one call: ``cropped`` holds ``(record_id, available, kept)`` samples,
    ``sparse`` ``(record_id, present_leads)``."""
    found = []
    rate = float(extractor.sampling_rate)
    if cropped:
        record_id, available, kept = cropped[0]
        detail = (
            f"The model's window is {extractor.num_samples} samples ({extractor.num_samples / rate:g} s at "
            f"{rate:g} Hz; crop={extractor.crop!r}), e.g. record {record_id}: {available / rate:g} s -> "
            f"{kept / rate:g} s. Pass window_stride=<samples> (pipelines: window_stride=) to cover whole records "
            "with sliding windows."
        )
        found.append(EcgInputReducedWarning(
            f"EcgFeatureExtractor: {len(cropped)} of {num_records} record(s) were cropped to the model's window. {detail}",
            "cropped", [c[0] for c in cropped], num_records, detail,
        ))
    if sparse:
        record_id, present = sparse[0]
        detail = (
            f"Their missing leads are zero-filled (lead_mask 0), e.g. record {record_id} has {present}; the model "
            f"was trained on {list(extractor.leads)}."
        )
        found.append(EcgInputReducedWarning(
            f"EcgFeatureExtractor: {len(sparse)} of {num_records} record(s) lack more than half of the model's "
            f"{extractor.num_leads} leads. {detail}",
            "zero_filled", [z[0] for z in sparse], num_records, detail,
        ))
    return found


# ----------------------------------------------------------------------------------------------
# The feature extractor.
# ----------------------------------------------------------------------------------------------


class EcgFeatureExtractor(SequenceFeatureExtractor):
    r"""Preprocesses ECG recordings into ``input_values`` of shape ``(batch, leads, num_samples)``.

    Args:
        sampling_rate (`int`, defaults to 500): target sampling rate in Hz.
        leads (`list[str]`, defaults to the standard 12 leads): target lead names, in model order.
        num_samples (`int` or `None`, defaults to 5000): samples per record at the target rate;
            longer records are cropped, shorter ones padded (``attention_mask`` marks real samples).
            ``None`` keeps each record's length and pads the batch to its longest record.
        min_samples (`int`, optional): records shorter than this at the target rate raise a
            ``ValueError``. Defaults to one second (``sampling_rate`` samples).
        crop (`str`, defaults to ``"start"``): ``"start"``, ``"center"`` or ``"random"``. Calls with
            ``training=True`` always crop at random.
        bandpass (`list[float]`, optional): ``[low_hz, high_hz]`` Butterworth band-pass, or ``None``.
        filter_order (`int`, defaults to 4): Butterworth order of the band-pass.
        normalization (`str`, defaults to ``"none"``): ``"none"``, ``"zscore_lead"`` or ``"minmax_record"``.
        derive_limb_leads (`bool`, defaults to `True`): compute III, aVR, aVL, aVF from I and II when
            the target needs them and the record lacks them.
        missing_leads (`str`, defaults to ``"zero"``): ``"zero"`` zero-fills target leads the record
            lacks and reports them in ``lead_mask``; ``"error"`` raises instead.
        resample_method (`str`, defaults to ``"polyphase"``): ``"polyphase"`` or ``"fft"``.
        padding_value (`float`, defaults to 0.0): value of padded samples (after normalisation).
        return_dtype (`str`, defaults to ``"float32"``): dtype of ``input_values``; a record whose
            values it cannot hold (finite input beyond float16's 65504, say) raises ``ValueError``.

    Returns (from ``__call__``): a ``BatchFeature`` with ``input_values`` (batch, leads, samples),
    ``attention_mask`` (batch, samples; 1 = real sample) and ``lead_mask`` (batch, leads; 1 = lead
    present in the recording or derived from it, 0 = zero-filled: absent or masked).

    Masked leads: a record can name leads that must not reach the model although its array has rows
    for them (``masked_leads`` of a dataset row, or the ``masked_leads=`` argument): a flat or
    clipped electrode, or a lead the dataset zero-filled. They are treated exactly as leads the
    record lacks: zero-filled, ``lead_mask`` 0, left out of the normalisation statistics, never used
    to derive limb leads (so a masked I or II masks nothing else, but derives nothing either), and
    an error with ``missing_leads="error"``. Their values are never read (they may hold NaN).
    """

    model_input_names = ["input_values", "attention_mask", "lead_mask"]

    def __init__(
        self,
        sampling_rate: int = 500,
        leads: Sequence[str] = STANDARD_LEADS,
        num_samples: int | None = 5000,
        min_samples: int | None = None,
        crop: str = "start",
        bandpass: Sequence[float] | None = None,
        filter_order: int = 4,
        normalization: str = "none",
        derive_limb_leads: bool = True,
        missing_leads: str = "zero",
        resample_method: str = "polyphase",
        padding_value: float = 0.0,
        return_dtype: str = "float32",
        return_attention_mask: bool = True,
        **kwargs,
    ):
        leads = canonicalize_leads(leads)
        _check_sampling_rate(sampling_rate, "feature extractor config")
        if num_samples is not None and num_samples <= 0:
            raise ValueError(f"num_samples must be positive or None, got {num_samples!r}")
        if crop not in CROP_POLICIES:
            raise ValueError(f"crop must be one of {CROP_POLICIES}, got {crop!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if resample_method not in RESAMPLE_METHODS:
            raise ValueError(f"resample_method must be one of {RESAMPLE_METHODS}, got {resample_method!r}")
        if missing_leads not in ("zero", "error"):
            raise ValueError(f"missing_leads must be 'zero' or 'error', got {missing_leads!r}")
        if bandpass is not None:
            bandpass = [float(b) for b in bandpass]
            if len(bandpass) != 2 or not 0 < bandpass[0] < bandpass[1] < sampling_rate / 2:
                raise ValueError(
                    f"bandpass must be [low_hz, high_hz] with 0 < low < high < {sampling_rate / 2} Hz "
                    f"(Nyquist at {sampling_rate} Hz), got {bandpass}"
                )
        np.dtype(return_dtype)  # raises TypeError on an unknown dtype name
        # feature_size is derived from the leads; a saved config carries it too, so drop that copy.
        kwargs.pop("feature_size", None)
        super().__init__(
            feature_size=len(leads),
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.leads = leads
        self.num_samples = num_samples
        self.min_samples = min_samples
        self.crop = crop
        self.bandpass = bandpass
        self.filter_order = filter_order
        self.normalization = normalization
        self.derive_limb_leads = derive_limb_leads
        self.missing_leads = missing_leads
        self.resample_method = resample_method
        self.return_dtype = return_dtype

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> EcgFeatureExtractor:
        """The input contract a model family declares (``registry.input_presets()``: ``"ecg_jepa"``,
        ``"ecg_jepa_finetune"``, ``"etp"`` = ``"merl"``, ...). Keyword arguments override single fields."""
        return cls(**{**input_preset(name), **overrides})

    @property
    def num_leads(self) -> int:
        return len(self.leads)

    @property
    def effective_min_samples(self) -> int:
        return int(self.sampling_rate) if self.min_samples is None else int(self.min_samples)

    # ------------------------------------------------------------------------------------------
    def __call__(
        self,
        ecg: Any,
        sampling_rate: float | Sequence[float] | None = None,
        leads: Sequence[str] | Sequence[Sequence[str]] | None = None,
        units: str = "mV",
        record_ids: Sequence[str] | None = None,
        training: bool = False,
        generator: np.random.Generator | None = None,
        return_tensors: str | None = None,
        masked_leads: Sequence[str] | Sequence[Sequence[str]] | None = None,
        window_stride: int | None = None,
        warn_on_reduction: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Preprocess one record or a batch.

        Args:
            ecg: one record ``(leads, samples)`` or a batch ``(batch, leads, samples)`` as numpy
                array or torch tensor; a list of records (lengths may differ); a dataset row (a
                mapping with ``signal``, ``sampling_rate``, ``leads`` and optionally ``record_id``);
                a list of rows; or a batch of columns as ``datasets.map(batched=True)`` passes it.
            sampling_rate: the recordings' rate in Hz (one number, or one per record; a numpy scalar
                or 0-d array is one number), between :data:`MIN_SAMPLING_RATE_HZ` (10) and
                :data:`MAX_SAMPLING_RATE_HZ` (20000); booleans are refused. Required unless the rows
                carry it.
            leads: lead names (strings) of the rows of each record (one list, or one list per
                record). Required unless the rows carry them.
            units: ``"mV"`` (default), ``"uV"`` or ``"V"``.
            record_ids: names used in error messages.
            training: crop at random (data augmentation) instead of the configured policy.
            generator: numpy random generator for random crops (reproducible augmentation).
            return_tensors: ``"pt"`` for torch tensors, ``"np"`` or ``None`` for numpy arrays.
            masked_leads: leads to treat as missing although the array has rows for them (one list
                for every record, or one list per record); dataset rows carry theirs in a
                ``masked_leads`` field, which wins over this argument.
            window_stride: samples (at the target rate) between the starts of sliding windows of
                ``num_samples``: each record becomes every window needed to cover it (the last one
                ends at the record's end, see :func:`sliding_window_starts`), so ``input_values`` has
                one row per window and ``window_record_index`` (windows,) says which record each row
                comes from (drop it before calling the model). ``None`` (default): one window per
                record, cropped by the ``crop`` policy. Needs ``num_samples``.
            warn_on_reduction: issue one :class:`EcgInputReducedWarning` for the call when a record is
                cropped or more than half of the model's leads are zero-filled. Default: on, except
                with ``training=True`` (random crops are augmentation there).
        """
        records, rates, lead_lists, ids, mask_lists = self._unpack(ecg, sampling_rate, leads, record_ids, masked_leads)
        if not isinstance(units, str) or units not in UNITS_TO_MV:
            raise ValueError(f"units must be one of {sorted(UNITS_TO_MV)}, got {units!r}")
        if window_stride is not None:
            if self.num_samples is None:
                raise ValueError("window_stride needs a feature extractor with num_samples (the window length)")
            if training:
                raise ValueError("window_stride is for inference; training=True crops one random window per record")
            sliding_window_starts(1, 1, window_stride)  # validates the stride before any record is read
        policy = "random" if training else self.crop
        rng = generator if generator is not None else (np.random.default_rng() if policy == "random" else None)

        outputs, lead_masks, lengths, window_records = [], [], [], []
        cropped, sparse = [], []
        for index, (record, rate, names, record_id, masked) in enumerate(zip(records, rates, lead_lists, ids, mask_lists)):
            windows, present, available = self._process_record(
                record, rate, names, record_id, UNITS_TO_MV[units], policy, rng, masked, window_stride
            )
            if window_stride is None and self.num_samples is not None and available > self.num_samples:
                cropped.append((record_id, available, self.num_samples))
            if 2 * int(present.sum()) < self.num_leads:
                sparse.append((record_id, [lead for lead, kept in zip(self.leads, present) if kept]))
            for values in windows:
                outputs.append(values)
                lead_masks.append(present)
                lengths.append(values.shape[-1])
                window_records.append(index)
        if warn_on_reduction if warn_on_reduction is not None else not training:
            for warning in _reduction_warnings(cropped, sparse, len(records), self):
                warnings.warn(warning, stacklevel=2)

        target_len = self.num_samples if self.num_samples is not None else max(lengths)
        batch = np.full((len(outputs), self.num_leads, target_len), self.padding_value, dtype=self.return_dtype)
        attention_mask = np.zeros((len(outputs), target_len), dtype=np.int64)
        for i, values in enumerate(outputs):
            batch[i, :, : values.shape[-1]] = values
            attention_mask[i, : values.shape[-1]] = 1
        data = {"input_values": batch, "lead_mask": np.stack(lead_masks).astype(np.int64)}
        if self.return_attention_mask:
            data["attention_mask"] = attention_mask
        if window_stride is not None:
            data["window_record_index"] = np.asarray(window_records, dtype=np.int64)
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------------------
    def _unpack(self, ecg, sampling_rate, leads, record_ids, masked_leads=None):
        """Normalise every accepted input form to lists of (record, rate, lead names, record id,
        masked leads)."""
        if isinstance(ecg, Mapping):
            if "signal" not in ecg:
                raise ValueError(f"a dataset row must have a 'signal' field; got fields {list(ecg)}")
            column = ecg["signal"]
            if _is_batch_of_records(column):  # a batch of columns (datasets.map(batched=True))
                n = len(column)
                fields = {key: value for key, value in ecg.items() if value is not None}
                for key, value in fields.items():
                    length = _column_length(value)
                    if length != n:
                        got = f"{length} value(s)" if length is not None else f"one value {_short_repr(value)}"
                        raise ValueError(
                            f"column batch: field {key!r} has {got}; expected one value per record "
                            f"({n} values, as field 'signal' has {n} records)"
                        )
                rows = [{key: value[i] for key, value in fields.items()} for i in range(n)]
            else:
                rows = [dict(ecg)]
            return self._unpack(rows, sampling_rate, leads, record_ids, masked_leads)
        if isinstance(ecg, (list, tuple)) and ecg and isinstance(ecg[0], Mapping):
            for i, row in enumerate(ecg):
                if not isinstance(row, Mapping):
                    raise ValueError(
                        f"row #{i} in the batch is a {type(row).__name__}; expected every item of a list of "
                        "dataset rows to be a row (a mapping with a 'signal' field)"
                    )
                if "signal" not in row:
                    raise ValueError(
                        f"row #{i} in the batch (record {row.get('record_id', '?')}): field 'signal' is "
                        f"missing; expected a dataset row with a 'signal' field, got fields {list(row)}"
                    )
            records = [row["signal"] for row in ecg]
            rates = [row.get("sampling_rate", sampling_rate) for row in ecg]
            lead_lists = [row.get("leads", leads) for row in ecg]
            ids = [row.get("record_id") for row in ecg]
            given = _per_record(masked_leads, len(ecg))
            masks = [row["masked_leads"] if row.get("masked_leads") is not None else m for row, m in zip(ecg, given)]
            if record_ids is not None:
                ids = _as_list(record_ids, "record_ids")
            return self._check_batch(records, rates, lead_lists, ids, masks)

        ecg = _to_numpy(ecg, "signal")
        if isinstance(ecg, np.ndarray):
            if ecg.ndim == 2:
                records = [ecg]
            elif ecg.ndim == 3:
                records = list(ecg)
            else:
                raise ValueError(
                    f"ECG array must have rank 2 (leads, samples) or 3 (batch, leads, samples); got shape {ecg.shape}"
                )
        elif isinstance(ecg, (list, tuple)):
            if not ecg:
                raise ValueError("empty batch: expected at least one ECG record")
            records = [_to_numpy(e, f"record #{i} in the batch") for i, e in enumerate(ecg)]
            if not _is_batch_of_records(records):  # a single record given as nested lists
                records = [records]
        else:
            raise ValueError(
                f"unsupported ECG input of type {type(ecg).__name__}: expected a numpy array, torch tensor, "
                "list of records, or dataset row(s) with a 'signal' field"
            )
        n = len(records)
        sampling_rate = _to_numpy(sampling_rate, "sampling_rate")
        if isinstance(sampling_rate, np.ndarray) and sampling_rate.ndim == 0:
            sampling_rate = sampling_rate.item()  # a 0-d array is one number
        if isinstance(sampling_rate, (list, tuple, np.ndarray)):
            rates = list(sampling_rate)
        else:
            rates = [sampling_rate] * n
        if leads is None or isinstance(leads, str):
            lead_lists = [leads] * n
        else:
            leads = _as_list(leads, "leads", "a list of lead names, or one such list per record")
            if leads and _is_name_list(leads[0]):  # one list of names per record
                lead_lists = leads
            else:
                lead_lists = [leads] * n
        ids = _as_list(record_ids, "record_ids") if record_ids is not None else [None] * n
        return self._check_batch(records, rates, lead_lists, ids, _per_record(masked_leads, n))

    @staticmethod
    def _check_batch(records, rates, lead_lists, ids, mask_lists):
        n = len(records)
        if n == 0:
            raise ValueError("empty batch: got 0 records; expected at least one ECG record (leads, samples)")
        for name, values in (
            ("sampling_rate", rates), ("leads", lead_lists), ("record_ids", ids), ("masked_leads", mask_lists)
        ):
            if len(values) != n:
                raise ValueError(f"got {n} records but {len(values)} values of {name}; expected one per record")
        ids = [str(rid) if rid is not None else f"#{i} in the batch" for i, rid in enumerate(ids)]
        return records, rates, lead_lists, ids, mask_lists

    def _process_record(self, record, rate, names, record_id, unit_scale, policy, rng, masked=None, window_stride=None):
        """One record -> (windows: list of (num_leads, samples) arrays, present leads (num_leads,) bool,
        samples available at the target rate before cropping)."""
        where = f"record {record_id}"
        # --- validation -----------------------------------------------------------------------
        rate = _check_sampling_rate(rate, where)
        record = _to_numpy(record, where)
        try:
            array = np.asarray(record)
        except (TypeError, ValueError) as error:  # ragged nested lists, tensors numpy cannot take
            raise ValueError(
                f"{where}: signal could not be read as an array ({error}); expected real numbers (leads, samples)"
            ) from None
        # Real numbers only: strings, objects, booleans and complex values are not voltages.
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"{where}: signal must be numeric, got dtype {array.dtype} (expected real numbers in mV)")
        if array.ndim != 2:
            raise ValueError(f"{where}: signal must have rank 2 (leads, samples); got shape {array.shape}")
        if names is None:
            raise ValueError(f"{where}: lead names are missing; pass leads=[...] naming the {array.shape[0]} rows")
        try:
            names = canonicalize_leads(names)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if len(names) != array.shape[0]:
            hint = " (is the array (samples, leads)? it must be (leads, samples))" if array.shape[1] == len(names) else ""
            raise ValueError(
                f"{where}: leads list names {len(names)} leads {names} but the signal has {array.shape[0]} rows{hint}"
            )
        masked = _masked_set(masked, where)
        if masked:  # masked rows are never read: drop them before anything looks at their values
            keep = [i for i, lead in enumerate(names) if lead not in masked]
            array, names = array[keep], [names[i] for i in keep]
        # float64 for filtering accuracy; the output is cast to return_dtype at the end.
        with np.errstate(over="ignore", invalid="ignore"):
            values = array.astype(np.float64) * unit_scale
        # min and max propagate NaN and show inf: finite extremes mean finite values (and give the peak).
        lowest, highest = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (math.isfinite(lowest) and math.isfinite(highest)):
            source_finite = np.isfinite(array) if np.issubdtype(array.dtype, np.floating) else np.ones(array.shape, bool)
            if source_finite.all():  # finite values that overflow float64 once converted to mV
                raise ValueError(
                    f"{where}: signal amplitude reaches {float(np.abs(array).max()):.4g} (before conversion "
                    f"to mV), beyond the float64 range once converted; expected an ECG in the units given"
                )
            lead_idx, sample_idx = np.argwhere(~source_finite)[0]
            kind = "NaN" if np.isnan(array[lead_idx, sample_idx]) else "inf"
            count = int((~source_finite).sum())
            raise ValueError(
                f"{where}: signal has {count} non-finite value(s); first is {kind} in lead "
                f"{names[lead_idx]} at sample {sample_idx} ({sample_idx / rate:.3f} s)"
            )

        # --- leads ----------------------------------------------------------------------------
        if self.derive_limb_leads and any(
            lead in self.leads and lead not in names and lead not in masked for lead in DERIVABLE_LIMB_LEADS
        ):
            values, names = _derive_limb_leads(values, names)
            if masked:  # a masked limb lead stays missing, not replaced by its derivation
                keep = [i for i, lead in enumerate(names) if lead not in masked]
                values, names = values[keep], [names[i] for i in keep]
        missing = [lead for lead in self.leads if lead not in names]
        if missing and self.missing_leads == "error":
            masked_note = f"; masked: {sorted(masked, key=STANDARD_LEADS.index)}" if masked else ""
            raise ValueError(f"{where}: missing leads {missing}; the model needs {self.leads} (has {names}{masked_note})")
        index = [names.index(lead) for lead in self.leads if lead in names]
        present = np.array([lead in names for lead in self.leads])
        values = values[index]

        # --- time -----------------------------------------------------------------------------
        # The length is known before resampling: a record too short is refused without resampling
        # it (and never reaches a resampler with nothing to resample).
        num_out = resampled_length(array.shape[-1], rate, self.sampling_rate, self.resample_method)
        if num_out < max(1, self.effective_min_samples):
            raise ValueError(
                f"{where}: signal has {num_out} samples at {self.sampling_rate} Hz "
                f"({array.shape[-1]} at {rate:g} Hz, {array.shape[-1] / rate:.2f} s); "
                f"at least {max(1, self.effective_min_samples)} samples are needed"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            values = resample(values, rate, self.sampling_rate, self.resample_method)
            if self.bandpass is not None:
                values = bandpass(values, self.bandpass[0], self.bandpass[1], self.filter_order, self.sampling_rate)
            available = values.shape[-1]
            if self.num_samples is None:
                starts, length = [0], available
            elif window_stride is not None:
                starts, length = sliding_window_starts(available, self.num_samples, window_stride), self.num_samples
            else:
                starts, length = [crop_window_start(available, self.num_samples, policy, rng)], self.num_samples
            windows = [
                normalize(values[:, start : start + length], self.normalization, np.ones(len(index), dtype=bool))
                for start in starts
            ]
            values = np.concatenate(windows, axis=-1) if len(windows) > 1 else windows[0]
        # Finite input can still overflow: float32 holds |x| <= 3.4e38, float16 only 65504. Derived
        # leads, resampling and filtering grow the peak by a few times at most, and the normalised
        # outputs are small, so the output is only scanned when the input peak comes near the limit.
        low, high = _dtype_range(self.return_dtype)
        near_limit = max(-lowest, highest) * _OUTPUT_HEADROOM > high or low >= 0
        if near_limit and values.size and not (low <= values.min() and values.max() <= high):
            with np.errstate(invalid="ignore"):
                peak = float(np.max(np.abs(values)))
            raise ValueError(
                f"{where}: signal amplitude reaches {peak:.4g} mV after preprocessing, outside the range of "
                f"return_dtype {np.dtype(self.return_dtype).name} ({low:.4g} to {high:.4g}); expected an ECG "
                "whose values (in the units given) the output dtype can hold (wrong units?)"
            )

        filled = []
        for window in windows:
            full = np.zeros((self.num_leads, window.shape[-1]), dtype=np.float64)
            full[present] = window
            filled.append(full)
        return filled, present, available


def _check_sampling_rate(rate: Any, where: str) -> float:
    """``rate`` as a float of Hz within the plausible range, or a ``ValueError`` naming ``sampling_rate``.

    Accepted: a real number (int, float, numpy scalar, a 0-d or one-element array or tensor) between
    :data:`MIN_SAMPLING_RATE_HZ` and :data:`MAX_SAMPLING_RATE_HZ`. Booleans are refused (``True`` is
    not 1 Hz)."""
    if rate is None:
        raise ValueError(f"{where}: sampling_rate is missing; pass sampling_rate= (Hz) or a 'sampling_rate' field")
    given = rate
    rate = _to_numpy(rate, where)
    if isinstance(rate, np.ndarray):
        if rate.size != 1:
            raise ValueError(f"{where}: sampling_rate must be one number of Hz, got an array of shape {rate.shape}")
        rate = rate.reshape(-1)[0].item()
    if isinstance(rate, (bool, np.bool_)):
        raise ValueError(f"{where}: sampling_rate must be a number of Hz, got the boolean {given!r}")
    try:
        value = float(rate)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: sampling_rate must be a positive number of Hz, got {given!r}") from None
    if not math.isfinite(value) or not MIN_SAMPLING_RATE_HZ <= value <= MAX_SAMPLING_RATE_HZ:
        raise ValueError(
            f"{where}: sampling_rate must be a positive number of Hz between {MIN_SAMPLING_RATE_HZ:g} and "
            f"{MAX_SAMPLING_RATE_HZ:g} (plausible ECG rates), got {given!r}"
        )
    return value


@lru_cache(maxsize=8)
def _dtype_range(dtype: str) -> tuple[float, float]:
    """Smallest and largest value ``dtype`` holds (finite for floats)."""
    dt = np.dtype(dtype)
    info = np.finfo(dt) if np.issubdtype(dt, np.floating) else np.iinfo(dt)
    return float(info.min), float(info.max)


def _to_numpy(value: Any, where: str) -> Any:
    """A torch tensor as a CPU numpy array (bfloat16 and other dtypes numpy lacks widened to float32);
    anything else unchanged. Torch is never imported here."""
    if not hasattr(value, "detach") or not hasattr(value, "cpu"):
        return value
    tensor = value.detach().cpu()
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError):  # numpy has no bfloat16 / float8 / complex32
        if tensor.is_floating_point():
            return tensor.float().numpy()
        if tensor.is_complex():
            return tensor.cfloat().numpy()  # refused later as complex, with the usual message
        raise ValueError(f"{where}: torch dtype {tensor.dtype} has no numpy equivalent; expected real numbers") from None


def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _column_length(value: Any) -> int | None:
    """Number of entries of a column of a column batch; ``None`` for a single value (a scalar, a string)."""
    if isinstance(value, (str, bytes, Mapping)) or getattr(value, "ndim", 1) == 0:
        return None
    try:
        return len(value)
    except TypeError:
        return None


def _is_name_list(value: Any) -> bool:
    """True for a list of lead names (one record's), as opposed to one lead name."""
    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim >= 1)


def _as_list(value: Any, name: str, expected: str = "a list (one entry per record)") -> list:
    """``value`` as a list (a string is one entry), or a ``ValueError`` naming the argument."""
    if isinstance(value, str):
        return [value]
    value = _to_numpy(value, name)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return [value.item()]
    try:
        return list(value)
    except TypeError:
        raise ValueError(f"{name} must be {expected}, got {type(value).__name__} {value!r}") from None


def _per_record(masked_leads, n: int) -> list:
    """``masked_leads`` as one entry per record: ``None`` -> no masks; a list of names -> the same for
    every record; a list of lists -> as given (checked against the batch size later)."""
    if masked_leads is None:
        return [None] * n
    if isinstance(masked_leads, str):
        return [[masked_leads]] * n
    entries = _as_list(masked_leads, "masked_leads")
    if not entries or isinstance(entries[0], str):
        return [entries] * n
    return entries


def _masked_set(masked, where: str) -> set[str]:
    """Canonical names of one record's masked leads (``None``, a list, or a numpy array of names)."""
    if masked is None:
        return set()
    if isinstance(masked, str):
        names = [masked]
    else:
        try:
            names = [str(name) for name in list(masked)]
        except TypeError:
            raise ValueError(
                f"{where}: masked_leads must be a list of lead names, got {type(masked).__name__} {masked!r}"
            ) from None
    try:
        return set(canonicalize_leads(names))
    except ValueError as error:
        raise ValueError(f"{where}: masked_leads {names}: {error}") from None


def _is_batch_of_records(column) -> bool:
    """True when ``column`` holds several records (rank-3 data) rather than one (rank 2)."""
    if hasattr(column, "ndim"):
        return column.ndim == 3
    if isinstance(column, (list, tuple)) and column:
        first = column[0]
        if hasattr(first, "ndim"):
            return first.ndim == 2
        if isinstance(first, (list, tuple)) and first:
            return isinstance(first[0], (list, tuple, np.ndarray)) or hasattr(first[0], "ndim")
    return False
