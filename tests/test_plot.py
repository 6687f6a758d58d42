"""The 12-lead plot (ecg_hub.data.plot): ECG paper at 25 mm/s and 10 mm/mV with a visible 1 mm grid,
a 1 mV x 0.2 s calibration pulse per row, a one-line title, and the optional saliency band."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from ecg_hub.modeling.leads import INDEPENDENT_LEADS, STANDARD_LEADS

from ecg_hub.data.plot import (
    CALIBRATION_MV,
    CALIBRATION_WIDTH_S,
    DEFAULT_DPI,
    compose_title,
    plot_ecg,
    shorten_title,
)

LEADS = list(STANDARD_LEADS)
RATE = 250  # Hz


@pytest.fixture(scope="module")
def signal():
    """10 s of 12 leads: a 1 Hz sine of 0.5 mV whose phase differs per lead."""
    times = np.arange(10 * RATE) / RATE
    return np.stack([0.5 * np.sin(2 * np.pi * times + lead) for lead in range(12)]).astype(np.float32)


def _by_gid(figure, prefix: str) -> list:
    return [artist for artist in figure.findobj(lambda a: (a.get_gid() or "").startswith(prefix))]


def test_writes_a_png_with_a_visible_millimetre_grid(signal, tmp_path):
    out = tmp_path / "plots" / "ecg.png"
    assert plot_ecg(signal, RATE, LEADS, out, title="record 7") == str(out)
    image = matplotlib.image.imread(out)
    height, width = image.shape[:2]
    # 5 mm margins + 0.4 s calibration strip + 10 s at 25 mm/s = 270 mm wide; 8 + 4 x 30 + 7 = 135 mm tall.
    px_per_mm = DEFAULT_DPI / 25.4
    assert px_per_mm >= 6.0  # a 1 mm square is at least 6 pixels
    assert width == pytest.approx(270 * px_per_mm, abs=2) and height == pytest.approx(135 * px_per_mm, abs=2)

    figure = plot_ecg(signal, RATE, LEADS)
    (minor,) = _by_gid(figure, "grid_minor")
    (major,) = _by_gid(figure, "grid_major")
    minor_x = sorted({round(float(segment[0, 0]), 6) for segment in minor.get_segments() if segment[0, 0] == segment[1, 0]})
    assert np.allclose(np.diff(minor_x), 0.04)  # 1 mm at 25 mm/s
    assert minor_x[0] == pytest.approx(-0.4) and minor_x[-1] == pytest.approx(10.0)
    major_y = sorted({round(float(s[0, 1]), 6) for s in major.get_segments() if s[0, 1] == s[1, 1]})
    assert np.allclose(np.diff(major_y), 0.5)  # 5 mm at 10 mm/mV
    # The minor lines are darker than the near-white #f6c6c6 of the old plot (green channel 0xc6).
    assert minor.get_colors()[0][1] < 0xC6 / 255
    plt.close(figure)


def test_every_row_has_a_one_millivolt_calibration_pulse(signal):
    figure = plot_ecg(signal, RATE, LEADS)
    pulses = _by_gid(figure, "calibration_pulse")
    assert len(pulses) == 4  # three lead rows and the rhythm strip
    for pulse in pulses:
        x, y = np.asarray(pulse.get_xdata()), np.asarray(pulse.get_ydata())
        baseline = y[0]
        high = x[np.isclose(y, baseline + CALIBRATION_MV)]
        assert y.max() - baseline == pytest.approx(1.0)  # 10 mm at 10 mm/mV
        assert high.max() - high.min() == pytest.approx(0.2)  # 5 mm at 25 mm/s
        assert CALIBRATION_WIDTH_S == 0.2
        assert x.max() <= 0.0  # left of the traces, which start at 0 s
    assert sorted(round(float(p.get_ydata()[0]), 6) for p in pulses) == [1.5, 4.5, 7.5, 10.5]
    plt.close(figure)


def test_title_is_one_short_line(signal):
    assert compose_title("00001_hr", ["NORM", "SR"]) == "00001_hr  |  NORM, SR"
    assert compose_title("7", [], "note") == "7  |  -  |  note"
    assert compose_title() is None
    assert shorten_title("a  b\n c", 10) == "a b c"
    assert shorten_title("x" * 50, 10) == "x" * 9 + "…"
    figure = plot_ecg(signal, RATE, LEADS, record_id="00001_hr", labels=["MI"], title="report " * 100)
    (text,) = [t for t in figure.texts if t.get_text().startswith("00001_hr")]
    assert "\n" not in text.get_text() and text.get_text().endswith("…")
    assert len(text.get_text()) <= 270 / 1.6
    plt.close(figure)


def test_saliency_band_follows_the_attributions(signal, tmp_path):
    saliency = np.zeros_like(signal)
    v2 = LEADS.index("V2")
    saliency[v2, 1300:1400] = -3.0  # signed: the band shows |saliency|
    saliency[LEADS.index("I"), 100:200] = 1.5
    figure = plot_ecg(signal, RATE, LEADS, saliency=saliency, saliency_label="integrated gradients")
    artists = _by_gid(figure, "saliency:")
    assert len(artists) == 13  # 12 lead segments and the lead II rhythm strip
    bands = {}
    for artist in artists:  # the first band of each lead: its 2.5 s segment
        bands.setdefault(artist.get_gid().split(":", 1)[1], artist)
    assert sorted(bands) == sorted(LEADS)
    band_v2 = bands["V2"].get_array()
    assert band_v2.shape == (1, 625)  # the V2 segment: 5 s to 7.5 s at 250 Hz
    assert float(band_v2.max()) == pytest.approx(1.0)  # the strongest evidence of the record
    assert float(bands["I"].get_array().max()) == pytest.approx(0.5, abs=0.01)  # 1.5 / 3
    assert float(bands["V5"].get_array().max()) == 0.0
    assert bands["V2"].get_extent()[:2] == [5.0, 7.5]
    assert _by_gid(figure, "saliency_colorbar")
    assert any("integrated gradients" in t.get_text() for t in figure.texts)
    plt.close(figure)
    out = plot_ecg(signal, RATE, LEADS, tmp_path / "saliency.png", saliency=saliency)
    assert matplotlib.image.imread(out).shape[2] in (3, 4)


def test_bad_input_is_refused_naming_the_argument(signal):
    with pytest.raises(ValueError, match=r"saliency must have the shape of signal \(leads, samples\) = \(12, 2500\)"):
        plot_ecg(signal, RATE, LEADS, saliency=np.zeros((8, 2500)))
    bad = np.zeros_like(signal)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="saliency has non-finite values"):
        plot_ecg(signal, RATE, LEADS, saliency=bad)
    with pytest.raises(ValueError, match="leads names 8 leads"):
        plot_ecg(signal, RATE, list(INDEPENDENT_LEADS))
    with pytest.raises(ValueError, match="at least 2.5 s"):
        plot_ecg(signal[:, :500], RATE, LEADS)
    with pytest.raises(ValueError, match="dpi must be"):
        plot_ecg(signal, RATE, LEADS, dpi=0)
    with pytest.raises(ValueError, match="sampling_rate must be a positive number"):
        plot_ecg(signal, -5, LEADS)


def test_leads_the_record_lacks_are_marked(signal):
    """An 8-lead model input (ECG-JEPA) leaves III, aVR, aVL, aVF without a trace."""
    eight = signal[[LEADS.index(lead) for lead in INDEPENDENT_LEADS]]
    figure = plot_ecg(eight, RATE, list(INDEPENDENT_LEADS))
    assert sum(t.get_text() == "no signal" for t in figure.axes[0].texts) == 4
    assert len(figure.axes[0].get_lines()) == 8 + 1 + 4  # traces, the rhythm strip, the pulses
    plt.close(figure)
