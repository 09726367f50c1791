"""One scoring workflow: ``semsim score``, ``semsim grid`` and ``score_sets`` write identical tables,
SemSim provenance columns, calibration columns and skipped pairs included."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import make_set, write_grid
from semsim.cli import app
from semsim.common.io import read_table
from semsim.data.sets import ingest, write_manifest
from semsim.errors import SemsimError
from semsim.grid import build_plan as build_grid_plan
from semsim.grid import load_grid, run_plan
from semsim.learned.model import SemSimNet
from semsim.metrics.calibrated import Calibration
from semsim.metrics.scoring import panel_request, score_sets, set_table_path
from semsim.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two sets (one with an unreadable reconstruction), a SemSim model trained on model labels, a
    calibration on psnr."""
    root = tmp_path_factory.mktemp("paths")
    frames = []
    for name, n, seed in (("alpha", 12, 1), ("beta", 5, 2)):
        folder = make_set(root / name, n, seed)
        manifest, _ = ingest(folder, set_name=name)
        frames.append(manifest)
    (root / "alpha" / "4_1_rec.png").write_bytes(b"not a png")
    write_manifest(pd.concat(frames, ignore_index=True), root / "manifest.csv")
    net = SemSimNet("lenet", image_size=16)
    save_checkpoint(root / "semsim-model", net, {**net.config(), "label_sources": ["model:test-rule"]})
    Calibration("logistic", ["psnr"], {"psnr": True}, "majority",
                {"mean": [12.0], "scale": [4.0], "coef": [1.5], "intercept": 0.2},
                {"psnr": [5.0, 30.0]}).save(root / "cal.json")
    return {"root": root, "manifest": root / "manifest.csv", "semsim": root / "semsim-model",
            "calibration": root / "cal.json"}


METRICS = ["psnr", "ssim", "iip"]  # image-level and set-level (iip: per-image columns from the whole set)


def test_panel_request_adds_evaluator_metrics_and_semsim_only_when_asked() -> None:
    names, kwargs = panel_request(None, evaluator="ev", semsim="m")
    assert names[-4:] == ["mr", "iip", "feature_distance", "semsim"]
    assert kwargs["mr"] == {"evaluator": "ev"} and kwargs["semsim"] == {"model": "m"}
    names, kwargs = panel_request(["psnr"], evaluator="ev", options={"iip": {"variants": "pixel"}})
    assert names == ["psnr"] and kwargs["iip"] == {"evaluator": "ev", "variants": "pixel"}


def test_cli_grid_and_api_write_identical_tables(inputs: dict[str, Path], one_thread: None) -> None:
    root = inputs["root"]
    cli_out = root / "cli.parquet"
    result = CliRunner().invoke(app, ["score", str(inputs["manifest"]), "--metrics", ",".join(METRICS),
                                      "--semsim", str(inputs["semsim"]), "--calibration",
                                      str(inputs["calibration"]), "--skip-bad", "--quiet", "--out",
                                      str(cli_out)])
    assert result.exit_code == 0, result.output

    grid = write_grid(root, {"out": "run", "sets": [str(inputs["manifest"])],
                             "score": {"metrics": METRICS, "semsim": str(inputs["semsim"]),
                                       "calibration": str(inputs["calibration"]), "skip_bad": True,
                                       "shard_size": 4}})
    run_plan(build_grid_plan(load_grid(grid)), workers=1, show_progress=False)
    grid_out = root / "run" / "scores.parquet"

    manifest, skipped = ingest(inputs["manifest"], skip_bad=True)
    api = score_sets(manifest, METRICS, semsim=inputs["semsim"], calibration=inputs["calibration"],
                     skipped=skipped, skip_bad=True, show_progress=False)
    api_out = api.write(root / "api.parquet")[0]

    cli_images, cli_sets = read_table(cli_out), read_table(set_table_path(cli_out))
    assert {"semsim", "p_recognized", "iip_pixel", "status"} <= set(cli_images.columns)
    assert {"semsim_label_source", "semsim_model", "expected_recognition_rate", "iip_pixel_precision"} <= set(
        cli_sets.columns)
    assert cli_sets["semsim_label_source"].tolist() == ["model:test-rule"] * 2
    assert cli_images["status"].str.startswith("skipped").sum() == 1
    for out in (grid_out, api_out):
        pd.testing.assert_frame_equal(read_table(out), cli_images)
        pd.testing.assert_frame_equal(read_table(set_table_path(out)), cli_sets)


def test_grid_score_section_takes_the_score_command_inputs(tmp_path: Path) -> None:
    make_set(tmp_path / "a", 2, 0)
    spec = load_grid(write_grid(tmp_path, {"sets": ["a"], "score": {"metrics": ["psnr", "mr"], "evaluator": "ev",
                                                                   "semsim": "model"}}))
    assert spec.scoring.metrics == ("psnr", "mr", "semsim")
    assert spec.scoring.options["mr"] == {"evaluator": str((tmp_path / "ev").resolve())}
    assert spec.scoring.options["semsim"] == {"model": str((tmp_path / "model").resolve())}
    (tmp_path / "cal.json").write_text("{}")
    with pytest.raises(SemsimError, match="not a semsim calibration file"):  # checked before anything runs
        load_grid(write_grid(tmp_path, {"sets": ["a"], "score": {"metrics": ["psnr"], "calibration": "cal.json"}}))
