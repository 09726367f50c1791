"""The HTML report and the analyze / import-labels commands."""

from __future__ import annotations

import base64
import re
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import shared_path
from semsim.analysis import analyze
from semsim.cli import app, main
from semsim.data.labels import read_labels
from test_analysis_calibration import make_sets
from test_analysis_stats import DIRS, synthetic

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_from_cli_is_self_contained_with_tables_and_figures(tmp_path) -> None:
    manifest, labels = make_sets(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["score", str(manifest), "--metrics", "psnr,mse", "--out",
                              str(tmp_path / "s.csv"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "report"
    res = runner.invoke(app, ["analyze", str(tmp_path / "s.csv"), "--labels", str(labels), "--out", str(out),
                              "--bootstrap", "50", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "psnr" in res.output and "AUROC" in res.output
    html = (out / "report.html").read_text()
    assert not EXTERNAL.search(html) and "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html
    for heading in ("Set level", "Image level", "Contradiction", "Human ceiling", "Calibration",
                    "Where metrics and people disagree most"):
        assert heading in html
    assert html.count("<table") >= 6 and "recognition_rate" in html and "psnr" in html
    pngs = embedded_pngs(html)
    assert len(pngs) >= 6 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)  # 4 + one grid per metric
    for name in ("set_level", "set_correlations", "image_level", "image_level_by_set", "contradiction",
                 "calibration"):
        table = pd.read_csv(out / f"{name}.csv")
        assert len(table), name
    assert set(pd.read_csv(out / "image_level.csv")["metric"]) == {"psnr", "mse"}
    assert (out / "figures" / "scatter.png").read_bytes() == pngs[0]
    assert not list(out.glob(".*.tmp"))


def test_analyze_one_table_with_scores_and_labels(tmp_path) -> None:
    scores, labels = synthetic(n_sets=4, n=30)
    both = scores.merge(labels, on=["set", "image_id"])
    report = analyze(both, None, tmp_path / "r", directions=DIRS, n_boot=20, metrics=["psnr", "noise"])
    assert set(report.tables["set_correlations"]["metric"]) == {"psnr", "noise"}
    assert len(report.tables["human_ceiling"]) == 3 * 6  # human + 2 metrics, 5 slots + mean
    assert (tmp_path / "r" / "human_ceiling.csv").is_file()
    assert "Where metrics and people disagree most" not in (tmp_path / "r" / "report.html").read_text()


def test_unknown_direction_fails_cleanly(tmp_path, monkeypatch, capsys) -> None:
    scores, labels = synthetic(n_sets=3, n=10)
    scores.rename(columns={"noise": "dreamsim"}).to_csv(tmp_path / "s.csv", index=False)
    labels.to_csv(tmp_path / "l.csv", index=False)
    monkeypatch.setattr(sys, "argv", ["semsim", "analyze", str(tmp_path / "s.csv"), "--labels",
                                      str(tmp_path / "l.csv"), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--direction dreamsim=higher|lower" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "report.html").exists()
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "s.csv"), "--labels", str(tmp_path / "l.csv"),
                                   "--direction", "dreamsim=lower", "--out", str(tmp_path / "r"),
                                   "--bootstrap", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    corr = pd.read_csv(tmp_path / "r" / "set_correlations.csv").set_index("metric")
    assert not corr.loc["dreamsim", "higher_is_more_leakage"]


def test_real_labels_import_and_analyze_commands(tmp_path) -> None:
    source = shared_path("cifar100_human_labels", "labels.csv")
    runner = CliRunner()
    res = runner.invoke(app, ["import-labels", str(source), "--out", str(tmp_path / "imp")])
    assert res.exit_code == 0, res.output
    labels = read_labels(tmp_path / "imp" / "labels.csv")
    assert len(labels) == 8400 and labels["label_source"].eq("import:semsim-cifar100").all()
    assert "--direction dreamsim=lower" in res.output
    res = runner.invoke(app, ["analyze", "--import-semsim-cifar100", str(source), "--out",
                              str(tmp_path / "r"), "--holdout", "ConvNet", "--bootstrap", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    corr = pd.read_csv(tmp_path / "r" / "set_correlations.csv")
    assert len(corr) == 6 and (corr["n_sets"] == 14).all()
    calib = pd.read_csv(tmp_path / "r" / "calibration.csv")
    assert (calib["n_sets"] == 7).all() and (calib["split"] == "holdout /ConvNet/").all()
    html = (tmp_path / "r" / "report.html").read_text()
    assert not EXTERNAL.search(html) and "ResNet20-4" in html and "import:semsim-cifar100" in html
