"""The HTML report and the analyze / import-labels commands."""

from __future__ import annotations

import base64
import re
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import DIRS, make_sets, shared_path, synthetic
from semsim.analysis import analyze
from semsim.analysis.report import readable
from semsim.cli import app, main
from semsim.data.labels import read_labels
from semsim.errors import SemsimError

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
    for heading in ("Summary", "Set level", "Image level", "Tests of differences", "Contradiction",
                    "Human ceiling", "Calibration",
                    "Where metrics and people disagree most"):
        assert heading in html
    assert html.count("<table") >= 6 and "recognition_rate" in html and "psnr" in html
    pngs = embedded_pngs(html)
    assert len(pngs) >= 6 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)  # 4 + one grid per metric
    for name in ("summary", "set_level", "set_correlations", "image_level", "image_level_by_set", "contradiction",
                 "metric_comparisons", "calibration"):
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
                              str(tmp_path / "r"), "--holdout", "convnet", "--bootstrap", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    corr = pd.read_csv(tmp_path / "r" / "set_correlations.csv")
    assert len(corr) == 6 and (corr["n_sets"] == 14).all()
    calib = pd.read_csv(tmp_path / "r" / "calibration.csv")
    assert (calib["n_sets"] == 7).all() and (calib["split"] == "holdout /convnet/").all()
    html = (tmp_path / "r" / "report.html").read_text()
    assert not EXTERNAL.search(html) and "resnet20-4" in html.lower() and "import:semsim-cifar100" in html


def test_cli_name_lists_equal_the_library() -> None:
    from semsim.analysis.ceiling import TIE_RULES
    from semsim.cli import analyze as cli_analyze
    from semsim.metrics.calibrated import METHODS

    assert cli_analyze.TIE_RULES == TIE_RULES and cli_analyze.METHODS == METHODS


def test_report_formatting_summary_first_and_provenance(tmp_path) -> None:
    """On the real labels with the CLIP predictions: the summary comes first, p-values never print as 0.000,
    counts print as integers, intervals name what they resample, and the imported files are named."""
    source = shared_path("cifar100_human_labels", "labels.csv")
    vlm = shared_path("cifar100_human_labels", "vlm_predictions.csv")
    picked = "dreamsim,lpips_squeeze,mr_clip_vitl_14,mr_clip_vitl_14_correct"
    res = CliRunner().invoke(app, ["analyze", "--import-semsim-cifar100", str(source), "--vlm", str(vlm), "--out",
                                   str(tmp_path / "r"), "--bootstrap", "30", "--ties", "half", "--metrics", picked,
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "ties among the other annotators counted as 'half'" in res.output
    out = tmp_path / "r"
    html = (out / "report.html").read_text()
    assert html.index("<h2>Summary</h2>") < html.index("<h2>Set level</h2>")
    assert f"Scores: {source} (imported as semsim-cifar100) with CLIP predictions from {vlm}" in html
    assert "(data frame)" not in html and "8400.000" not in html and ">8400<" in html
    shown = readable(pd.read_csv(out / "metric_comparisons.csv"))
    assert not shown[["p", "p_holm", "p_bootstrap"]].isin(["0.000"]).any().any() and "difference 95% CI" in shown
    assert "replicates over originals (image_id clusters across sets)" in html
    assert "not distinguishable from it" in html and "a tied majority counts as <b>half</b>" in html
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["metric"]) == picked.split(",") and set(summary["image_mark"]) <= {"best", "=", "<"}
    assert (summary["image_mark"] == "best").sum() == 1 and {"calibrated_auroc", "calibrated_ece"} <= set(summary)
    by_config = pd.read_csv(out / "summary_by_configuration.csv")
    assert list(by_config["set"]) == sorted(by_config["set"]) and len(by_config) == 14
    comp = pd.read_csv(out / "metric_comparisons.csv")
    assert len(comp) == 2 * 6 and {"p", "p_holm", "ci_resamples"} <= set(comp.columns)
    assert (pd.read_csv(out / "human_ceiling.csv")["ties"] == "half").all()
    for name in ("agreement", "annotators", "model_recognition", "contradiction_per_original"):
        assert len(pd.read_csv(out / f"{name}.csv")), name
    assert (out / "figures" / "ceiling.png").is_file()
    assert (out / "figures" / "contradiction_per_original.png").is_file()


@pytest.mark.parametrize("command", ["analyze", "calibrate"])
def test_lossy_join_exits_2_with_the_count(command, tmp_path, monkeypatch, capsys) -> None:
    scores, labels = synthetic(n_sets=3, n=10)
    scores.to_csv(tmp_path / "s.csv", index=False)
    labels.iloc[3:].to_csv(tmp_path / "l.csv", index=False)
    out = tmp_path / ("r" if command == "analyze" else "cal.json")
    extra = ["--bootstrap", "0", "--quiet"] if command == "analyze" else ["--metrics", "noise"]
    argv = ["semsim", command, str(tmp_path / "s.csv"), "--labels", str(tmp_path / "l.csv"), "--out", str(out),
            "--direction", "noise=higher", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 3 scored image(s) of ") and "--allow-missing" in err and err.count("\n") == 1
    assert not out.exists()
    res = CliRunner().invoke(app, argv[1:] + ["--allow-missing"])
    assert res.exit_code == 0, res.output
    assert "note: 3 scored image(s)" in res.output and out.exists()


def test_model_labels_say_evaluator_and_warn_on_circularity(tmp_path) -> None:
    scores, labels = synthetic(n_sets=3, n=20)
    scores = scores.rename(columns={"psnr": "mr_prob", "mse": "iip_pixel"})
    labels["label_source"] = "model:evaluator-x"
    report = analyze(scores, labels, tmp_path / "r", directions={"mr_prob": True, "iip_pixel": True, "noise": True},
                     n_boot=0)
    assert any(n.startswith("warning: mr_prob is computed by an evaluation classifier") for n in report.notes)
    assert not any("iip_pixel is computed" in n for n in report.notes)  # pixel IIP never asks the evaluator
    html = (tmp_path / "r" / "report.html").read_text()
    assert "recognition by the evaluator" in html and "recognized by a majority of the evaluator" in html


def test_analysis_imports_no_torch() -> None:
    """Statistics-only commands never load torch (issue 12): importing the analysis package must not."""
    import subprocess

    code = "import sys, semsim.analysis, semsim.cli.analyze; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_option_misuse_fails_before_work(tmp_path) -> None:
    runner = CliRunner()
    scores, labels = synthetic(n_sets=2, n=5)
    scores.to_csv(tmp_path / "s.csv", index=False)
    res = runner.invoke(app, ["analyze", str(tmp_path / "s.csv"), "--vlm", str(tmp_path / "v.csv"), "--out",
                              str(tmp_path / "r")])
    # (main() turns a SemsimError into "error: ..." and exit 2; test_lossy_join_exits_2_with_the_count checks that)
    assert isinstance(res.exception, SemsimError) and "--vlm adds CLIP predictions" in str(res.exception)
    res = runner.invoke(app, ["analyze", str(tmp_path / "s.csv"), "--ties", "maybe", "--out", str(tmp_path / "r")])
    assert isinstance(res.exception, SemsimError) and "--ties 'maybe'" in str(res.exception)
    assert not (tmp_path / "r").exists()
    shown = readable(pd.DataFrame({"n": [8400, 6939.6], "n_ties": [0.0, 1460.4], "auroc": [0.7, 0.71]}))
    assert list(shown["n"]) == ["8400", "6939.6"] and list(shown["n_ties"]) == ["0", "1460.4"]
