"""semsim grid on Ray (a local 2-CPU Ray instance): killed workers are retried, errors are reported, reruns
do no work, and scoring through Ray gives the same tables as scoring directly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_set, write_grid
from semsim.common.io import read_table
from semsim.data.sets import ingest
from semsim.grid import build_plan, load_grid, read_status, run_plan
from semsim.grid.plan import DONE_FILE
from semsim.metrics.scoring import build_metrics, score_manifest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the module (starting Ray takes several seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_retries_a_killed_worker_and_rerun_does_no_work(ray_session, tmp_path):
    grid = load_grid(write_grid(tmp_path, {"out": "run", "retries": 1,
                                           "probe": {"tasks": 3, "images": 2, "crash_once": True}}))
    report = run_plan(build_plan(grid), ray="auto", show_progress=False)
    assert report.count("done") == 3 and not report.failed
    assert report.attempts == 6
    assert all(s.attempts == 2 for s in report.states.values())
    for k in range(3):
        record = json.loads((grid.out / "shards" / "probe" / f"{k:04d}" / DONE_FILE).read_text())
        assert record["resumed"] is True and record["n_images"] == 2
    status = read_status(grid)
    assert status.phase == "finished" and status.executor.startswith("Ray")

    again = run_plan(build_plan(grid), ray="auto", show_progress=False)
    assert again.executed == [] and again.attempts == 0


def test_ray_reports_task_errors_after_bounded_retries(ray_session, tmp_path):
    probe = {"tasks": 1, "fail_times": 3}
    grid = load_grid(write_grid(tmp_path, {"out": "run", "retries": 1, "probe": probe}))
    report = run_plan(build_plan(grid), ray="auto", show_progress=False)
    assert report.attempts == 2
    assert report.failed["probe#0000"].startswith("RuntimeError: probe: injected failure 2 of 3")


def test_ray_scoring_grid_matches_direct_scoring(ray_session, tmp_path):
    make_set(tmp_path / "sets" / "alpha", 5, seed=3)
    grid = load_grid(write_grid(tmp_path, {"out": "run", "sets": ["sets/alpha"],
                                           "score": {"metrics": ["psnr", "ssim"], "shard_size": 2}}))
    report = run_plan(build_plan(grid), ray="auto", show_progress=False)
    assert report.scored_sets == ["alpha"] and len(report.executed) == 3
    metrics, _ = build_metrics(["psnr", "ssim"])
    manifest, _ = ingest(tmp_path / "sets" / "alpha")
    want = score_manifest(manifest, metrics, show_progress=False).per_image.set_index("image_id").sort_index()
    got = read_table(grid.out / "scores.parquet").set_index("image_id").sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got[["psnr", "ssim"]], want[["psnr", "ssim"]], rtol=1e-6)
