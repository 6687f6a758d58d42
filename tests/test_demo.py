"""`ecg-hub demo`: the Gradio app served on loopback and driven through gradio_client (its numbers
are the pipelines' numbers, for a bundled example, a WFDB upload and zero-shot labels; bad uploads
fail with a message naming the file), the record readers behind it (CSV exports), the Hugging Face
Space folder, and the command line. Nothing leaves the machine: every socket connection is checked
to go to loopback."""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import socket
import tempfile
import warnings

# Before gradio is imported: no telemetry, and its upload cache in a folder of this test session
# (removed at exit).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
if "GRADIO_TEMP_DIR" not in os.environ:
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="ecg-hub-test-gradio-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

import numpy as np
import pytest
import torch
import wfdb
import yaml
from ecg_hub.modeling import EcgFeatureExtractor, EcgResNetForSequenceClassification
from ecg_hub.modeling.leads import STANDARD_LEADS
from ecg_hub.modeling.modeling_ecg_resnet import EcgResNetModel
from ecg_hub.modeling.modeling_etp import EtpModel
from ecg_hub.modeling.processing_etp import EtpProcessor
from model_battery import tiny_ecg_resnet_config, tiny_etp_config
from transformers import pipeline

import ecg_hub  # noqa: F401  (registers models and pipelines)
from ecg_hub import cli
from ecg_hub import demo as ecg_demo
from ecg_hub.data.synthetic import synthesize_ecg
from ecg_hub.data.text_collators import train_report_tokenizer
from ecg_hub.explain import explain
from ecg_hub.version import __version__

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = {0: "NORM", 1: "MI", 2: "AF"}
THRESHOLDS = {"NORM": 0.3, "MI": 0.9, "AF": 0.5}
LEADS = list(STANDARD_LEADS)
FIRST_EXAMPLE = next(iter(ecg_demo.EXAMPLES))
ZERO_SHOT_LABELS = ["sinus rhythm", "atrial fibrillation", "sinus bradycardia"]


# ----------------------------------------------------------------------------------------------
# Loopback only
# ----------------------------------------------------------------------------------------------

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(scope="module", autouse=True)
def loopback_only():
    """Refuse (and record) every socket connection that is not to this machine while the module
    runs: the server, the client and anything they import must not phone home."""
    attempts = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(sock, address) -> bool:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True  # Unix sockets stay on the machine
        host = address[0] if isinstance(address, tuple) else address
        return host in _LOOPBACK

    def guarded_connect(sock, address):
        if not allowed(sock, address):
            attempts.append(address)
            raise OSError(f"test_demo: connection to {address} refused (loopback only)")
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        if not allowed(sock, address):
            attempts.append(address)
            return 111  # ECONNREFUSED
        return connect_ex(sock, address)

    socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    assert attempts == [], f"connections outside loopback: {attempts}"


# ----------------------------------------------------------------------------------------------
# Tiny models and the served apps
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny multi-label ECG-ResNet classifier (12 leads, 4 s at 100 Hz) with tuned thresholds."""
    torch.manual_seed(1)
    config = tiny_ecg_resnet_config(
        id2label=NAMES, label2id={v: k for k, v in NAMES.items()}, problem_type="multi_label_classification"
    )
    config.classification_thresholds = THRESHOLDS
    path = tmp_path_factory.mktemp("demo_classifier")
    EcgResNetForSequenceClassification(config).save_pretrained(path)
    EcgFeatureExtractor(sampling_rate=100, num_samples=400).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def etp_dir(tmp_path_factory):
    """A tiny (untrained) ETP checkpoint with its processor (5 s at 100 Hz)."""
    torch.manual_seed(0)
    tokenizer = train_report_tokenizer(
        [
            "sinus rhythm",
            "sinus bradycardia slow heart rate",
            "sinus tachycardia",
            "atrial fibrillation",
            "an ECG showing",
            "electrocardiogram with",
        ]
        * 3,
        vocab_size=100,
    )
    config = tiny_etp_config(ecg_config=tiny_ecg_resnet_config(num_samples=500))
    config.text_config.vocab_size = tokenizer.vocab_size
    path = tmp_path_factory.mktemp("demo_etp")
    EtpModel(config).save_pretrained(path)
    EtpProcessor(EcgFeatureExtractor(sampling_rate=100, num_samples=500), tokenizer).save_pretrained(path)
    return str(path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(blocks, downloads):
    """Launch ``blocks`` on a free loopback port; (blocks, client)."""
    port = _free_port()
    blocks.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True
    )
    client = gradio_client.Client(
        f"http://127.0.0.1:{port}/", verbose=False, download_files=str(downloads), analytics_enabled=False
    )
    return client


@pytest.fixture(scope="module")
def classifier_app(classifier_dir, tmp_path_factory):
    blocks = ecg_demo.build_demo(classifier_dir, saliency_steps=8)
    client = _serve(blocks, tmp_path_factory.mktemp("downloads_classifier"))
    yield blocks, client
    client.close()
    blocks.close()


@pytest.fixture(scope="module")
def zero_shot_app(etp_dir, tmp_path_factory):
    blocks = ecg_demo.build_demo(etp_dir)
    client = _serve(blocks, tmp_path_factory.mktemp("downloads_zero_shot"))
    yield blocks, client
    client.close()
    blocks.close()


@pytest.fixture(scope="module")
def classification_pipeline(classifier_dir):
    return pipeline("ecg-classification", model=classifier_dir)


def _analyze(
    client, *, example=None, files=None, rate=None, units="mV", labels="", target="top class", saliency=True
):
    return client.predict(example, files, rate, units, labels, target, saliency, api_name="/analyze")


def _confidences(label_output) -> list[tuple[str, float]]:
    return [(item["label"], item["confidence"]) for item in label_output["confidences"]]


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _write_wfdb(folder, name="upload_rec", rate=500, seconds=6.0, rhythm="AF", seed=5):
    ecg = synthesize_ecg(rhythm, seed=seed, sampling_rate=rate, duration_s=seconds)
    wfdb.wrsamp(
        name,
        fs=rate,
        units=["mV"] * 12,
        sig_name=LEADS,
        p_signal=ecg.signal.T.astype(np.float64),
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(folder),
    )
    return folder / f"{name}.hea", folder / f"{name}.dat"


# ----------------------------------------------------------------------------------------------
# The served app
# ----------------------------------------------------------------------------------------------


def test_example_through_the_app_equals_the_classification_pipeline(classifier_app, classification_pipeline):
    blocks, client = classifier_app
    ecg_png, label, saliency_png, summary, raw = _analyze(client, example=FIRST_EXAMPLE)

    rhythm, seed = ecg_demo.EXAMPLES[FIRST_EXAMPLE]
    ecg = synthesize_ecg(rhythm, seed=seed, sampling_rate=500, duration_s=10.0)
    # 10 s at 100 Hz = 1000 samples: windows of the model's 400 samples, averaged.
    expected = classification_pipeline(ecg.signal, sampling_rate=500, leads=LEADS, window_stride=400)
    got = _confidences(label)
    assert [name for name, _ in got] == [item["label"] for item in expected]
    np.testing.assert_allclose([score for _, score in got], [item["score"] for item in expected], atol=1e-6)
    assert label["label"] == expected[0]["label"]
    # The raw JSON carries the pipeline's own output, thresholds included.
    assert [(item["label"], item["positive"]) for item in raw["predictions"]] == [
        (item["label"], item["positive"]) for item in expected
    ]
    np.testing.assert_allclose(
        [item["score"] for item in raw["predictions"]], [item["score"] for item in expected], atol=1e-6
    )
    assert [item["positive"] for item in raw["predictions"]] == [
        item["score"] >= THRESHOLDS[item["label"]] for item in expected
    ]
    assert raw["window_stride"] == 400 and raw["record"]["duration_s"] == pytest.approx(10.0)

    # The images are the plain functions' images, pixel for pixel (PNG is lossless).
    record = ecg_demo.example_record(FIRST_EXAMPLE)
    assert np.array_equal(_png(ecg_png), ecg_demo.plot_record(record))
    assert _png(ecg_png).shape == ecg_demo.plot_record(record).shape
    demo_model = blocks.ecg_demo.model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explanation = explain(
            demo_model.pipeline.model,
            demo_model.feature_extractor,
            record.signal,
            sampling_rate=500,
            leads=LEADS,
            steps=8,
        )
    # explain's own caveats about this map (an untrained model's flat-line baseline scores like the
    # record) reach the page, not just the server log.
    caveats = {str(w.message) for w in caught if str(w.message).startswith("explain:")}
    for caveat in caveats:
        assert f"Note: {caveat}" in summary
    assert raw["saliency"]["target"] == explanation.target_label == expected[0]["label"]
    assert raw["saliency"]["steps"] == 8
    for lead, share in explanation.lead_share().items():
        assert raw["saliency"]["lead_share"][lead] == pytest.approx(share, abs=1e-6)
    assert sum(raw["saliency"]["lead_share"].values()) == pytest.approx(1.0, abs=1e-6)
    # 4 s of the model's window at 25 mm/s is narrower than the 10 s plot of the record.
    assert _png(saliency_png).shape[1] < _png(ecg_png).shape[1]
    assert f"`{record.record_id}`" in summary and "integrated gradients (8 steps)" in summary
    assert "not a patient" in summary


def test_uploaded_wfdb_record_equals_the_pipeline_on_its_path(
    classifier_app, classification_pipeline, tmp_path
):
    _, client = classifier_app
    header, signal_file = _write_wfdb(tmp_path)
    files = [gradio_client.handle_file(str(header)), gradio_client.handle_file(str(signal_file))]
    _, label, _, summary, raw = _analyze(client, example=FIRST_EXAMPLE, files=files, target="AF")

    expected = classification_pipeline(str(tmp_path / "upload_rec"), window_stride=400)
    got = _confidences(label)
    assert [name for name, _ in got] == [item["label"] for item in expected]
    np.testing.assert_allclose([score for _, score in got], [item["score"] for item in expected], atol=1e-6)
    # The upload wins over the preselected example, and the saliency explains the chosen class.
    assert raw["record"]["record_id"] == "upload_rec" and raw["record"]["sampling_rate"] == 500
    assert raw["record"]["duration_s"] == pytest.approx(6.0)
    assert raw["saliency"]["target"] == "AF"
    assert "`upload_rec`: upload; 12 leads, 6.0 s at 500 Hz" in summary


def test_bad_uploads_fail_with_a_message_naming_the_file(classifier_app, tmp_path):
    _, client = classifier_app
    notes = tmp_path / "notes.txt"
    notes.write_text("not an ECG\n")
    with pytest.raises(gradio_client.exceptions.AppError) as caught:
        _analyze(client, files=[gradio_client.handle_file(str(notes))])
    message = str(caught.value)
    assert "notes.txt" in message and "unsupported file type '.txt'" in message and ".hea" in message

    _, signal_file = _write_wfdb(tmp_path, name="lonely")
    with pytest.raises(
        gradio_client.exceptions.AppError, match=r"lonely\.dat: a WFDB signal file needs its header"
    ):
        _analyze(client, files=[gradio_client.handle_file(str(signal_file))])


def test_zero_shot_app_scores_the_labels_typed_into_the_form(zero_shot_app, etp_dir):
    _, client = zero_shot_app
    expected_pipe = pipeline("zero-shot-ecg-classification", model=etp_dir)
    rhythm, seed = ecg_demo.EXAMPLES[FIRST_EXAMPLE]
    ecg = synthesize_ecg(rhythm, seed=seed, sampling_rate=500, duration_s=10.0)

    _, label, saliency_png, summary, raw = _analyze(
        client, example=FIRST_EXAMPLE, labels=" sinus rhythm, atrial fibrillation ,sinus bradycardia"
    )
    expected = expected_pipe(
        ecg.signal, sampling_rate=500, leads=LEADS, candidate_labels=ZERO_SHOT_LABELS, window_stride=500
    )
    got = _confidences(label)
    assert sorted(name for name, _ in got) == sorted(ZERO_SHOT_LABELS)
    assert [name for name, _ in got] == [item["label"] for item in expected]
    np.testing.assert_allclose([score for _, score in got], [item["score"] for item in expected], atol=1e-6)
    assert sum(score for _, score in got) == pytest.approx(1.0, abs=1e-6)
    assert saliency_png is None and "saliency" not in raw and raw["kind"] == "zero-shot"
    assert "zero-shot ECG-text model" in summary

    # Editing the labels re-scores with the new set.
    _, label, _, _, _ = _analyze(
        client, example=FIRST_EXAMPLE, labels="atrial fibrillation, sinus tachycardia"
    )
    expected = expected_pipe(
        ecg.signal,
        sampling_rate=500,
        leads=LEADS,
        window_stride=500,
        candidate_labels=["atrial fibrillation", "sinus tachycardia"],
    )
    np.testing.assert_allclose(
        [score for _, score in _confidences(label)], [item["score"] for item in expected], atol=1e-6
    )
    with pytest.raises(
        gradio_client.exceptions.AppError, match="candidate labels: enter at least one class name"
    ):
        _analyze(client, example=FIRST_EXAMPLE, labels=" , ")


# ----------------------------------------------------------------------------------------------
# Readers and plain functions
# ----------------------------------------------------------------------------------------------


def _write_csv(path, signal, leads, rate=None, delimiter=",", decimal=".", time_unit="s"):
    header = ([f"time_{time_unit}"] if rate else []) + list(leads)
    lines = [delimiter.join(header)]
    for i in range(signal.shape[1]):
        cells = [f"{i / rate * (1000 if time_unit == 'ms' else 1):.6f}"] if rate else []
        cells += [f"{value:.6f}" for value in signal[:, i]]
        lines.append(delimiter.join(cell.replace(".", decimal) for cell in cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_csv_exports_read_with_their_time_column_or_the_form_rate(tmp_path):
    ecg = synthesize_ecg("SR", seed=3, sampling_rate=250, duration_s=4.0)
    # Time column in ms, semicolons and decimal commas (a European spreadsheet export).
    path = _write_csv(
        tmp_path / "export.csv", ecg.signal, LEADS, rate=250, delimiter=";", decimal=",", time_unit="ms"
    )
    record = ecg_demo.load_upload([str(path)])
    assert record.sampling_rate == 250 and record.leads == LEADS and record.record_id == "export"
    np.testing.assert_allclose(record.signal, ecg.signal, atol=1e-6)

    # No time column: the rate comes from the form; microvolts are scaled to mV; leads in any order
    # and spelling; the missing limb leads are derived from I and II.
    order = ["V1", "DII", "I", "V2", "V3", "V4", "V5", "V6"]
    rows = [LEADS.index("II" if name == "DII" else name) for name in order]
    path = _write_csv(tmp_path / "uv.csv", ecg.signal[rows] * 1000.0, order)
    record = ecg_demo.read_csv_record(path, sampling_rate=250, units="µV")
    assert record.leads == LEADS and record.masked_leads == []
    np.testing.assert_allclose(record.signal[LEADS.index("V1")], ecg.signal[LEADS.index("V1")], atol=1e-6)
    np.testing.assert_allclose(record.signal[LEADS.index("III")], ecg.signal[1] - ecg.signal[0], atol=1e-5)

    with pytest.raises(
        ValueError, match=r"uv\.csv: the CSV file has no time column; enter its sampling rate"
    ):
        ecg_demo.read_csv_record(path)
    timed = _write_csv(tmp_path / "timed.csv", ecg.signal, LEADS, rate=250)
    with pytest.raises(
        ValueError, match=r"timed\.csv: the time column gives 250 Hz but the sampling rate field says 500 Hz"
    ):
        ecg_demo.read_csv_record(timed, sampling_rate=500)
    assert ecg_demo.read_csv_record(timed, sampling_rate=250).sampling_rate == 250


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "0.1,0.2\n0.3,0.4\n",
            r"bad\.csv: the first line 0\.1,0\.2\.\.\. is numbers; expected a header naming the leads",
        ),
        ("I,II,Pulse\n0.1,0.2,0.3\n", r"bad\.csv: column 3 'Pulse' is neither a lead nor a time column"),
        ("I,II,I\n0.1,0.2,0.3\n", r"bad\.csv: lead I has two columns"),
        ("I,II\n0.1,0.2\n0.3\n", r"bad\.csv: line 3 has 1 values; expected 2, one per header column"),
        (
            "I,II\n0.1,0.2\n0.3,abc\n",
            r"bad\.csv: line 3, column 'II': 'abc' is not a number; expected a value in mV",
        ),
        (
            "time,I\n0.000,0.1\n0.004,0.2\n0.020,0.3\n0.024,0.1\n",
            r"bad\.csv: the time column jumps at line 4",
        ),
        (
            "time,I\n0.000,0.1\n0.004,0.2\n0.002,0.3\n",
            r"bad\.csv: the time column does not increase at line 4",
        ),
    ],
)
def test_csv_errors_name_the_file_line_and_column(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        ecg_demo.read_csv_record(path, sampling_rate=None if text.startswith("time") else 250)


def test_uploads_of_several_records_or_without_a_record_are_refused(tmp_path):
    first = _write_wfdb(tmp_path, name="rec_a")
    second = _write_wfdb(tmp_path, name="rec_b")
    with pytest.raises(ValueError, match=r"uploaded headers rec_a\.hea, rec_b\.hea are 2 records"):
        ecg_demo.load_upload([str(p) for p in (*first, *second)])
    with pytest.raises(ValueError, match="no file uploaded"):
        ecg_demo.load_upload([])
    csv_path = _write_csv(tmp_path / "one.csv", np.ones((1, 10)), ["I"])
    with pytest.raises(ValueError, match=r"one\.csv: a CSV upload is one file; also got rec_a\.hea"):
        ecg_demo.load_upload([str(csv_path), str(first[0])])
    # A WFDB record whose signal file is damaged names the record.
    first[1].write_bytes(first[1].read_bytes()[:100])
    with pytest.raises(ValueError, match=r"^rec_a\.hea: "):
        ecg_demo.load_upload([str(p) for p in first])


def test_checkpoints_the_demo_cannot_serve_are_refused(tmp_path, classifier_dir):
    EcgResNetModel(tiny_ecg_resnet_config()).save_pretrained(tmp_path)  # an encoder: no head, no text tower
    EcgFeatureExtractor(sampling_rate=100, num_samples=400).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds \['EcgResNetModel'\], neither a fine-tuned"):
        ecg_demo.load_demo_model(tmp_path)
    with pytest.raises(ValueError, match="labels and class descriptions are for zero-shot models"):
        ecg_demo.load_demo_model(classifier_dir, labels=["NORM"])
    assert ecg_demo.parse_labels(" a ,b,, c ") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="candidate labels: a appear more than once"):
        ecg_demo.parse_labels("a, b, a")


# ----------------------------------------------------------------------------------------------
# Space folder and command line
# ----------------------------------------------------------------------------------------------


def test_space_folder_runs_the_demo_of_the_hub_model(tmp_path):
    from importlib import metadata

    target = tmp_path / "space"
    assert cli.main(["demo", "--space", str(target), "someone/tiny-ecg-classifier"]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    # Written under a temporary name and renamed: nothing else is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]

    app = (target / "app.py").read_text()
    tree = ast.parse(app)
    assert "from ecg_hub.demo import build_demo" in app
    assert ast.unparse(tree.body[-1]) == "build_demo('someone/tiny-ecg-classifier').launch()"
    assert app.endswith('build_demo("someone/tiny-ecg-classifier").launch()\n')

    requirements = (target / "requirements.txt").read_text().splitlines()
    assert requirements[0] == f"ecg-hub=={__version__}"
    assert requirements[1] == f"gradio=={gradio.__version__}"
    torch_version = metadata.version("torch").split("+")[0]  # +cpu is no PyPI version
    assert f"torch=={torch_version}" in requirements
    assert f"captum=={metadata.version('captum')}" in requirements  # saliency needs the explain extra
    assert f"numpy=={metadata.version('numpy')}" in requirements

    readme = (target / "README.md").read_text()
    front = yaml.safe_load(readme.split("---\n")[1])
    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__
    assert front["app_file"] == "app.py" and front["models"] == ["someone/tiny-ecg-classifier"]
    assert "not a medical device" in readme

    with pytest.raises(ValueError, match="exists; choose another folder or pass --overwrite"):
        ecg_demo.write_space(target, "someone/other")
    ecg_demo.write_space(
        target, "someone/other", overwrite=True, ecg_hub_requirement="ecg-hub @ git+https://x/y"
    )
    assert 'build_demo("someone/other").launch()' in (target / "app.py").read_text()
    assert (target / "requirements.txt").read_text().splitlines()[0] == "ecg-hub @ git+https://x/y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]
    with pytest.raises(ValueError, match="is a local folder; a Space downloads its model from the Hub"):
        ecg_demo.write_space(tmp_path / "space2", str(tmp_path))
    assert cli.main(["demo", "--space", str(tmp_path / "space3"), "not a repo id"]) == 2
    assert not (tmp_path / "space2").exists() and not (tmp_path / "space3").exists()


def test_cli_launches_on_loopback_without_a_share_link(classifier_dir, monkeypatch):
    launched = {}

    def fake_launch(self, **kwargs):
        launched.update(kwargs, blocks=self)

    monkeypatch.setattr(gradio.Blocks, "launch", fake_launch)
    assert cli.main(["demo", classifier_dir, "--port", "7999", "--saliency-steps", "4"]) == 0
    assert {k: launched[k] for k in ("server_name", "server_port", "share")} == {
        "server_name": "127.0.0.1",
        "server_port": 7999,
        "share": False,
    }
    app = launched["blocks"].ecg_demo
    assert app.saliency_steps == 4 and app.model.kind == "classifier" and app.model.whole_record
    assert app.model.labels == ["NORM", "MI", "AF"]
    with pytest.raises(SystemExit):
        cli.main(["demo", classifier_dir, "--share", "maybe"])
