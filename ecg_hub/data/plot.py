"""Standard 12-lead ECG plot (matplotlib, Agg backend): 3 x 4 grid of 2.5 s lead segments plus a
lead II rhythm strip, on ECG paper at 25 mm/s and 10 mm/mV (1 mm minor, 5 mm major squares), with
a 1 mV calibration pulse at the left of each row and, optionally, a saliency heat band behind the
traces (``saliency=``, e.g. the attributions of :mod:`ecg_hub.explain`).

The paper is two ``LineCollection`` artists (one for the 1 mm lines, one for the 5 mm lines) and the
saliency one small image per lead segment, so a plot is a few dozen artists whatever the record.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

# Clinical layout: each row shows four leads, one per 2.5 s column.
LAYOUT: tuple[tuple[str, ...], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)

_PAPER_SPEED_MM_PER_S = 25.0
_GAIN_MM_PER_MV = 10.0
_ROW_HEIGHT_MV = 3.0  # vertical space per row
_MM_PER_INCH = 25.4
# Traces are clipped to +-1.45 mV around their row's baseline so that rows never overlap.
_TRACE_CLIP_MV = 1.45

#: The standard calibration pulse: 1 mV tall (10 mm) and 0.2 s wide (5 mm), drawn in a strip of
#: paper of :data:`CALIBRATION_AREA_S` left of the traces (time axis values below 0 s).
CALIBRATION_MV = 1.0
CALIBRATION_WIDTH_S = 0.2
CALIBRATION_AREA_S = 0.4

#: Default resolution: 160 dpi gives 6.3 px per mm (a 1 mm square is >= 6 px, so the minor grid is
#: visible); 110 dpi, the old default, gave 4.3 px.
DEFAULT_DPI = 160

# Margins around the paper, in mm of the figure.
_SIDE_MM = 5.0
_TITLE_MM = 8.0
_NO_TITLE_MM = 3.0
_FOOTER_MM = 7.0
# Title: DejaVu Sans at 8 pt averages about 1.6 mm per character; longer titles are shortened.
_TITLE_FONTSIZE = 8
_TITLE_MM_PER_CHAR = 1.6

_MINOR_COLOR = "#f2b5b5"
_MAJOR_COLOR = "#e07b7b"
_SALIENCY_CMAP = "Blues"
# The saliency band covers this much of each row around the baseline (mV) and is at most this opaque,
# so the grid stays readable under the strongest evidence.
_SALIENCY_HALF_HEIGHT_MV = 1.3
_SALIENCY_MAX_ALPHA = 0.85


def shorten_title(text: str, max_chars: int) -> str:
    """``text`` on one line of at most ``max_chars`` characters (whitespace runs collapsed, an
    ellipsis where it was cut)."""
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    return text[: max(1, max_chars - 1)].rstrip() + "…"


def compose_title(
    record_id: str | None = None, labels: Sequence[str] | None = None, title: str | None = None
) -> str | None:
    """``"<record_id>  |  <label, label>  |  <title>"`` from the parts given, or None if none is."""
    parts = []
    if record_id is not None and str(record_id):
        parts.append(str(record_id))
    if labels is not None:
        if isinstance(labels, str):
            labels = [labels]
        parts.append(", ".join(str(label) for label in labels) or "-")
    if title:
        parts.append(str(title))
    return "  |  ".join(parts) if parts else None


def _check_inputs(signal, sampling_rate, leads, dpi, saliency) -> tuple[np.ndarray, float, np.ndarray | None]:
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2:
        raise ValueError(f"plot_ecg: signal must be (leads, samples) in mV, got shape {signal.shape}")
    if len(leads) != signal.shape[0]:
        raise ValueError(
            f"plot_ecg: leads names {len(leads)} leads {list(leads)} but signal has {signal.shape[0]} rows; "
            "expected one name per row"
        )
    try:
        fs = float(sampling_rate)
    except (TypeError, ValueError):
        raise ValueError(f"plot_ecg: sampling_rate must be a positive number of Hz, got {sampling_rate!r}") from None
    if not (math.isfinite(fs) and fs > 0):
        raise ValueError(f"plot_ecg: sampling_rate must be a positive number of Hz, got {sampling_rate!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 10 <= dpi <= 1200:
        raise ValueError(f"plot_ecg: dpi must be a number between 10 and 1200, got {dpi!r}")
    if saliency is not None:
        saliency = np.asarray(saliency, dtype=np.float64)
        if saliency.shape != signal.shape:
            raise ValueError(
                f"plot_ecg: saliency must have the shape of signal (leads, samples) = {signal.shape}, "
                f"got {saliency.shape}"
            )
        if not np.isfinite(saliency).all():
            raise ValueError("plot_ecg: saliency has non-finite values (NaN or inf); expected finite numbers")
    return signal, fs, saliency


def _grid_segments(x0: float, x1: float, y1: float, step_s: float, step_mv: float) -> np.ndarray:
    """``(lines, 2, 2)`` segments of a grid over ``[x0, x1] x [0, y1]`` (s, mV), built from integer
    counts so that the lines sit exactly on multiples of the step (no float drift)."""
    nx = round((x1 - x0) / step_s)
    ny = round(y1 / step_mv)
    xs = x0 + np.arange(nx + 1) * step_s
    ys = np.arange(ny + 1) * step_mv
    vertical = np.stack([np.stack([xs, np.zeros_like(xs)], -1), np.stack([xs, np.full_like(xs, y1)], -1)], 1)
    horizontal = np.stack([np.stack([np.full_like(ys, x0), ys], -1), np.stack([np.full_like(ys, x1), ys], -1)], 1)
    return np.concatenate([vertical, horizontal])


def _saliency_intensity(saliency: np.ndarray, fs: float, window_s: float) -> np.ndarray:
    """``|saliency|`` averaged over a centred window of ``window_s`` seconds (per lead), divided by its
    maximum over the whole record (so leads compare: 1 = the strongest evidence anywhere)."""
    magnitude = np.abs(saliency)
    width = round(window_s * fs)
    if width > 1:
        # Per-sample attributions follow the sample-to-sample detail of the waveform (QRS edges,
        # noise); a short window (40 ms by default) shows where the evidence is, not single samples.
        kernel = np.ones(width) / width
        magnitude = np.stack([np.convolve(row, kernel, mode="same") for row in magnitude])
    peak = magnitude.max() if magnitude.size else 0.0
    return magnitude / peak if peak > 0 else np.zeros_like(magnitude)


def plot_ecg(
    signal: np.ndarray,
    sampling_rate: float,
    leads: Sequence[str],
    out_path: str | os.PathLike | None = None,
    title: str | None = None,
    rhythm_lead: str = "II",
    dpi: int = DEFAULT_DPI,
    *,
    record_id: str | None = None,
    labels: Sequence[str] | None = None,
    saliency: np.ndarray | None = None,
    saliency_label: str = "saliency",
    saliency_window_s: float = 0.04,
):
    """Draw a standard 12-lead ECG.

    Args:
        signal: ``(leads, samples)`` in mV; at least 2.5 s, the first 10 s are shown.
        sampling_rate: Hz.
        leads: canonical lead names of the rows of ``signal``; layout leads it lacks are labelled
            "no signal".
        out_path: write a PNG there (the figure is closed) and return the path; else return the figure.
        title: free text of the one-line title, after ``record_id`` and ``labels``; shortened with an
            ellipsis to the width of the paper.
        rhythm_lead: lead of the 10 s strip at the bottom.
        dpi: pixels per inch of the PNG; the default :data:`DEFAULT_DPI` (160) makes 1 mm 6.3 px.
        record_id: shown first in the title.
        labels: class names shown in the title after the record id (e.g. the record's label set;
            an empty list shows "-").
        saliency: optional ``(leads, samples)`` array aligned with ``signal`` (e.g. attributions);
            drawn as a blue band behind each trace whose strength is ``|saliency|`` averaged over
            ``saliency_window_s`` and divided by its maximum over the record, with a colour bar.
        saliency_label: what the colour bar names (e.g. ``"integrated gradients"``).
        saliency_window_s: averaging window of the band in seconds (0: per sample).

    Raises:
        ValueError: naming the argument, for a signal that is not 2-D or shorter than 2.5 s, lead
            names that do not match its rows, a bad sampling rate or dpi, or a saliency array of
            another shape than ``signal`` or with non-finite values.
    """
    import matplotlib

    if out_path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap

    leads = [str(lead) for lead in leads]
    signal, fs, saliency = _check_inputs(signal, sampling_rate, leads, dpi, saliency)
    if saliency_window_s < 0:
        raise ValueError(f"plot_ecg: saliency_window_s must be >= 0 seconds, got {saliency_window_s!r}")
    total_s = min(10.0, signal.shape[1] / fs)
    if total_s < 2.5:
        raise ValueError(f"plot_ecg: signal has {signal.shape[1] / fs:.2f} s; expected at least 2.5 s to plot")
    column_s = total_s / 4
    rows = len(LAYOUT) + 1
    height_mv = rows * _ROW_HEIGHT_MV
    x0 = -CALIBRATION_AREA_S

    # Figure geometry in mm: the paper keeps 25 mm/s and 10 mm/mV exactly.
    paper_w_mm = (total_s + CALIBRATION_AREA_S) * _PAPER_SPEED_MM_PER_S
    paper_h_mm = height_mv * _GAIN_MM_PER_MV
    width_mm = paper_w_mm + 2 * _SIDE_MM
    heading = compose_title(record_id, labels, title)
    top_mm = _TITLE_MM if heading else _NO_TITLE_MM
    height_mm = top_mm + paper_h_mm + _FOOTER_MM
    fig = plt.figure(figsize=(width_mm / _MM_PER_INCH, height_mm / _MM_PER_INCH), dpi=dpi)
    ax = fig.add_axes(
        (_SIDE_MM / width_mm, _FOOTER_MM / height_mm, paper_w_mm / width_mm, paper_h_mm / height_mm)
    )
    ax.set_xlim(x0, total_s)
    ax.set_ylim(0, height_mv)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)

    # ECG paper: 1 mm = 0.04 s or 0.1 mV, 5 mm = 0.2 s or 0.5 mV.
    minor = LineCollection(
        _grid_segments(x0, total_s, height_mv, 0.04, 0.1), colors=_MINOR_COLOR, linewidths=0.45, zorder=0
    )
    major = LineCollection(
        _grid_segments(x0, total_s, height_mv, 0.2, 0.5), colors=_MAJOR_COLOR, linewidths=0.9, zorder=0.1
    )
    minor.set_gid("grid_minor")
    major.set_gid("grid_major")
    ax.add_collection(minor)
    ax.add_collection(major)

    intensity = None
    alpha_cmap = None
    if saliency is not None:
        intensity = _saliency_intensity(saliency, fs, saliency_window_s)
        colours = matplotlib.colormaps[_SALIENCY_CMAP](np.linspace(0.25, 1.0, 256))
        colours[:, 3] = np.linspace(0.0, _SALIENCY_MAX_ALPHA, 256)  # weak evidence lets the paper show
        alpha_cmap = ListedColormap(colours, name="saliency")

    def baseline_of(row: int) -> float:
        return height_mv - (row + 0.5) * _ROW_HEIGHT_MV

    def draw(lead: str, row: int, start_s: float, length_s: float) -> None:
        baseline = baseline_of(row)
        ax.text(start_s + 0.05, baseline + 0.9, lead, fontsize=8, fontweight="bold", zorder=3)
        if lead not in leads:
            ax.text(start_s + 0.05, baseline - 0.3, "no signal", fontsize=6, color="0.45", zorder=3)
            return
        index = leads.index(lead)
        first = round(start_s * fs)
        last = min(signal.shape[1], round((start_s + length_s) * fs))
        trace = signal[index, first:last]
        trace = trace - np.median(trace)  # centre each segment on its own baseline (wander moves it)
        times = start_s + np.arange(len(trace)) / fs
        ax.plot(times, baseline + np.clip(trace, -_TRACE_CLIP_MV, _TRACE_CLIP_MV), color="black",
                linewidth=0.7, zorder=2)
        if intensity is not None:
            band = ax.imshow(
                intensity[index, first:last][None, :],
                cmap=alpha_cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto", zorder=1,
                extent=(start_s, start_s + len(trace) / fs,
                        baseline - _SALIENCY_HALF_HEIGHT_MV, baseline + _SALIENCY_HALF_HEIGHT_MV),
            )
            band.set_gid(f"saliency:{lead}")

    for row, names in enumerate(LAYOUT):
        for column, lead in enumerate(names):
            draw(lead, row, column * column_s, column_s)
            if column:
                baseline = baseline_of(row)
                ax.vlines(column * column_s, baseline - 0.3, baseline + 0.3, colors="black", linewidth=0.8)
    draw(rhythm_lead, len(LAYOUT), 0.0, total_s)

    # 1 mV x 0.2 s calibration pulse left of every row (flat 0.05 s lead-in and lead-out).
    lead_in = (CALIBRATION_AREA_S - CALIBRATION_WIDTH_S) / 4
    up, down = x0 + 2 * lead_in, x0 + 2 * lead_in + CALIBRATION_WIDTH_S
    for row in range(rows):
        b = baseline_of(row)
        (pulse,) = ax.plot(
            [x0 + lead_in, up, up, down, down, down + lead_in],
            [b, b, b + CALIBRATION_MV, b + CALIBRATION_MV, b, b],
            color="black", linewidth=0.8, zorder=2, solid_joinstyle="miter",
        )
        pulse.set_gid("calibration_pulse")
    # imshow sets the axes aspect; the paper's 10 mm/mV against 25 mm/s is set (again) last.
    ax.set_aspect(_GAIN_MM_PER_MV / _PAPER_SPEED_MM_PER_S)
    ax.set_xlim(x0, total_s)
    ax.set_ylim(0, height_mv)

    if heading:
        max_chars = int(paper_w_mm / _TITLE_MM_PER_CHAR)
        fig.text(_SIDE_MM / width_mm, 1 - 2.5 / height_mm, shorten_title(heading, max_chars),
                 fontsize=_TITLE_FONTSIZE, ha="left", va="top")
    fig.text(1 - _SIDE_MM / width_mm, 1.5 / height_mm, f"25 mm/s, 10 mm/mV, {fs:g} Hz", fontsize=6,
             ha="right", va="bottom")
    if alpha_cmap is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cax = fig.add_axes((_SIDE_MM / width_mm, 3.6 / height_mm, 40 / width_mm, 2.2 / height_mm))
        bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=alpha_cmap), cax=cax, orientation="horizontal")
        bar.set_ticks([0.0, 1.0])
        bar.ax.tick_params(labelsize=5, length=1.5, pad=1)
        cax.set_gid("saliency_colorbar")
        window = f", {saliency_window_s * 1000:g} ms mean" if saliency_window_s > 0 else ""
        caption = f"{saliency_label}: |value|{window}, relative to the record maximum"
        # 6 pt text is about 1.2 mm per character: a short (4 s) plot gets the short caption, not a cut one.
        room_mm = width_mm - (_SIDE_MM + 42) - 45  # the footer (speed, gain, rate) sits at the right
        if len(caption) * 1.2 > room_mm:
            caption = f"{saliency_label}: |value|, max = 1"
        fig.text((_SIDE_MM + 42) / width_mm, 3.6 / height_mm, caption, fontsize=6, ha="left", va="bottom")
    if out_path is None:
        return fig
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path
