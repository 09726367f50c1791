"""The demo end to end at reduced size: the report holds the tables, the images and the score table's numbers."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest

from semsim.data.labels import read_labels
from semsim.demo import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(out=out, n_images=6, victim_epochs=1, evaluator_epochs=2, semsim_epochs=2, batch_size=6,
                     attacks={"idlg": {"iterations": 5}, "invgrad": {"iterations": 40, "tv": 1e-2}},
                     show_progress=False)
    return run_demo(cfg), out


def test_demo_writes_every_artifact(demo):
    result, out = demo
    assert result.report == out / "report.html"
    for path in ("scores.csv", "scores_sets.csv", "labels.csv", "analysis/report.html",
                 "models/semsim/config.json", "models/evaluator/model.safetensors"):
        assert (out / path).is_file(), path
    per_set = pd.read_csv(out / "scores_sets.csv")
    assert len(per_set) == 4  # 2 defenses x 2 attacks
    assert set(per_set["n"]) == {6}
    labels = read_labels(out / "labels.csv")
    assert labels["label_source"].str.startswith("model:").all()


def test_report_embeds_the_pair_grids_and_figures(demo):
    result, _ = demo
    page = result.report.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 4 + 2  # one grid per set, plus the scatter and ROC figures
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="https?://', page), "the report must not fetch anything"
    assert "model-based, not human" in page


def test_report_numbers_match_the_score_table(demo):
    result, out = demo
    page = result.report.read_text()
    per_set = pd.read_csv(out / "scores_sets.csv")
    for set_name, psnr in zip(per_set["set"], per_set["psnr_mean"], strict=True):
        assert set_name in page
        assert f"{psnr:.3f}" in page
    recognized = read_labels(out / "labels.csv").groupby("set")["recognized"].mean()
    for rate in recognized:
        assert f"{rate:.3f}" in page
