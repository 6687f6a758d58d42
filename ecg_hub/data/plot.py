"""Standard 12-lead ECG plot (matplotlib, Agg backend): 3 x 4 grid of 2.5 s lead segments plus a
lead II rhythm strip, on ECG paper at 25 mm/s and 10 mm/mV (1 mm minor, 5 mm major squares)."""

from __future__ import annotations

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


def plot_ecg(
    signal: np.ndarray,
    sampling_rate: float,
    leads: Sequence[str],
    out_path: str | os.PathLike | None = None,
    title: str | None = None,
    rhythm_lead: str = "II",
    dpi: int = 110,
):
    """Draw a standard 12-lead ECG.

    Args:
        signal: ``(leads, samples)`` in mV; at least 2.5 s, the first 10 s are shown.
        sampling_rate: Hz.
        leads: canonical lead names of the rows of ``signal``; missing layout leads stay blank.
        out_path: write a PNG there (the figure is closed) and return the path; else return the figure.
        title: text above the grid (record id, labels, report ...).
        rhythm_lead: lead of the 10 s strip at the bottom.
    """
    import matplotlib

    if out_path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    signal = np.asarray(signal, dtype=np.float64)
    leads = list(leads)
    fs = float(sampling_rate)
    total_s = min(10.0, signal.shape[1] / fs)
    if total_s < 2.5:
        raise ValueError(f"signal has {signal.shape[1] / fs:.2f} s; expected at least 2.5 s to plot")
    column_s = total_s / 4
    rows = len(LAYOUT) + 1
    width_mv_units = total_s  # x axis in seconds
    height_mv = rows * _ROW_HEIGHT_MV
    # Keep squares square: x in s (25 mm/s), y in mV (10 mm/mV).
    width_in = (width_mv_units * _PAPER_SPEED_MM_PER_S + 10) / _MM_PER_INCH
    height_in = (height_mv * _GAIN_MM_PER_MV + (14 if title else 6)) / _MM_PER_INCH
    fig = plt.figure(figsize=(width_in, height_in), dpi=dpi)
    top = 1 - (14 if title else 6) / (height_in * _MM_PER_INCH)
    ax = fig.add_axes((5 / (width_in * _MM_PER_INCH), 0.0, 1 - 10 / (width_in * _MM_PER_INCH), top))
    ax.set_xlim(0, total_s)
    ax.set_ylim(0, height_mv)
    ax.set_aspect(_GAIN_MM_PER_MV / _PAPER_SPEED_MM_PER_S)
    minor_x = np.arange(0, total_s + 1e-9, 0.04)
    minor_y = np.arange(0, height_mv + 1e-9, 0.1)
    ax.vlines(minor_x, 0, height_mv, colors="#f6c6c6", linewidth=0.3, zorder=0)
    ax.hlines(minor_y, 0, total_s, colors="#f6c6c6", linewidth=0.3, zorder=0)
    ax.vlines(np.arange(0, total_s + 1e-9, 0.2), 0, height_mv, colors="#e88b8b", linewidth=0.7, zorder=0)
    ax.hlines(np.arange(0, height_mv + 1e-9, 0.5), 0, total_s, colors="#e88b8b", linewidth=0.7, zorder=0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)

    def draw(lead: str, row: int, start_s: float, length_s: float) -> None:
        baseline = height_mv - (row + 0.5) * _ROW_HEIGHT_MV
        ax.text(start_s + 0.05, baseline + 0.9, lead, fontsize=8, fontweight="bold", zorder=3)
        if lead not in leads:
            return
        first = int(round(start_s * fs))
        last = min(signal.shape[1], int(round((start_s + length_s) * fs)))
        trace = signal[leads.index(lead), first:last]
        trace = trace - np.median(trace)  # centre each segment on its own baseline (wander moves it)
        times = start_s + np.arange(len(trace)) / fs
        ax.plot(times, baseline + np.clip(trace, -1.45, 1.45), color="black", linewidth=0.7, zorder=2)

    for row, names in enumerate(LAYOUT):
        for column, lead in enumerate(names):
            draw(lead, row, column * column_s, column_s)
            if column:
                baseline = height_mv - (row + 0.5) * _ROW_HEIGHT_MV
                ax.vlines(column * column_s, baseline - 0.3, baseline + 0.3, colors="black", linewidth=0.8)
    draw(rhythm_lead, len(LAYOUT), 0.0, total_s)
    if title:
        fig.suptitle(title, fontsize=8, x=0.01, ha="left", y=1 - 2 / (height_in * _MM_PER_INCH), va="top")
    fig.text(0.99, 0.005, "25 mm/s, 10 mm/mV", fontsize=6, ha="right", va="bottom")
    if out_path is None:
        return fig
    out_path = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path
