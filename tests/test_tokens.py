"""``ecg-hub tokens show|report`` and ``ecg_hub.tokens``: one record drawn with its ECG2TOK codes,
and the report of what the codes fall on, with the tiny tokenizer of the session fixture."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ecg_hub.cli import main as cli_main
from ecg_hub.tokens import SEGMENTS, load_tokenizer, token_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory):
    from ecg_hub.data.synthetic import make_synthetic_dataset

    path = tmp_path_factory.mktemp("tokens_synthetic") / "synthetic"
    make_synthetic_dataset(num_records=16).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def report(tiny_ecg2tok_tokenizer, synthetic_folder):
    import datasets

    tokenizer, feature_extractor = load_tokenizer(tiny_ecg2tok_tokenizer / "model")
    dataset = datasets.load_from_disk(str(synthetic_folder))
    return token_report(tokenizer, dataset, feature_extractor, top_k=5, label_column="rhythm")


def test_show_writes_png(tiny_ecg2tok_tokenizer, synthetic_folder, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "plots" / "tokens.png"
    code = cli_main(["tokens", "show", str(tiny_ecg2tok_tokenizer / "model"), "--dataset", str(synthetic_folder),
                     "--record-id", "synthetic-0-000003", "--plot", str(out), "--dpi", "40"])
    assert code == 0
    assert out.stat().st_size > 0
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["tokens.png"]  # no temp file left behind
    assert "synthetic-0-000003" in capsys.readouterr().out


def test_show_unknown_record_names_it(tiny_ecg2tok_tokenizer, synthetic_folder, tmp_path, capsys):
    out = tmp_path / "tokens.png"
    code = cli_main(["tokens", "show", str(tiny_ecg2tok_tokenizer / "model"), "--dataset", str(synthetic_folder),
                     "--record-id", "no-such-record", "--plot", str(out)])
    assert code == 2
    assert "'no-such-record' is not in the dataset" in capsys.readouterr().err
    assert not out.exists()
    # a record outside the requested split is not found there either
    import datasets

    rows = datasets.load_from_disk(str(synthetic_folder))
    record = next(r for r, s in zip(rows["record_id"], rows["split"]) if s != "train")
    assert cli_main(["tokens", "show", str(tiny_ecg2tok_tokenizer / "model"), "--dataset", str(synthetic_folder),
                     "--record-id", record, "--split", "train", "--plot", str(out)]) == 2
    assert record in capsys.readouterr().err


def test_report_figures_add_up(report):
    assert report["num_records"] + report["num_skipped"] == 16
    assert report["num_records"] > 0 and report["num_patches"] == report["num_records"] * 8 * 50
    codes = report["codes"]
    assert sum(row["count"] for row in codes) == report["num_patches"]
    assert math.isclose(sum(row["share"] for row in codes), 1.0, rel_tol=1e-9)
    assert [row["count"] for row in codes] == sorted((row["count"] for row in codes), reverse=True)
    assert report["top"] == codes[:5]
    for row in codes:
        assert set(row["segment_shares"]) == set(SEGMENTS)
        assert math.isclose(sum(row["segment_shares"].values()), 1.0, rel_tol=1e-9)
        assert 0.0 <= row["r_peak_share"] <= 1.0
        assert row["enriched_label"] in (None, "SR", "SB", "ST", "AF")
    assert math.isclose(sum(report["segment_shares_of_patches"].values()), 1.0, rel_tol=1e-9)
    # the synthetic beats: every record has R peaks, about one patch in five to three holds one
    assert 0.1 < report["r_peak_share_of_patches"] < 0.6
    assert report["mutual_information_bits"] > 0
    assert report["r_peak_majority_code"]["code"] in {row["code"] for row in codes}
    assert 0 <= report["isoelectric_code_share"] <= 1


def test_report_cli_prints_and_writes_json(tiny_ecg2tok_tokenizer, synthetic_folder, tmp_path, capsys, report):
    out = tmp_path / "report.json"
    code = cli_main(["tokens", "report", str(tiny_ecg2tok_tokenizer / "model"), "--dataset", str(synthetic_folder),
                     "--max-records", "4", "--top", "3", "--labels", "rhythm", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mutual information" in printed and "records skipped" in printed
    document = json.loads(out.read_text())
    assert document["num_records"] + document["num_skipped"] == 4
    assert len(document["top"]) <= 3
    # the first four records give the same per-patch ids as in the full report: counts never exceed it
    full = {row["code"]: row["count"] for row in report["codes"]}
    assert all(row["count"] <= full[row["code"]] for row in document["codes"])


def test_delineation_failure_is_counted_not_silent(tiny_ecg2tok_tokenizer):
    from ecg_hub.data.synthetic import make_synthetic_dataset

    tokenizer, feature_extractor = load_tokenizer(tiny_ecg2tok_tokenizer / "model")
    dataset = make_synthetic_dataset(num_records=3)
    flat = dataset.map(lambda row, i: {"signal": np.zeros_like(np.asarray(row["signal"])) if i == 1 else row["signal"]},
                       with_indices=True)
    result = token_report(tokenizer, flat, feature_extractor)
    assert result["num_skipped"] == 1 and result["skipped"][0]["record_id"] == dataset[1]["record_id"]
    assert result["num_records"] == 2
    assert any("skipped" in w for w in result["warnings"])
