"""semsim grid: spec checks, planning, the local process pool (retries, killed workers, reruns), scoring
collections of sets, merging, status and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import make_set, write_grid
from semsim.cli import app
from semsim.common.io import read_table
from semsim.data.sets import ingest
from semsim.errors import SemsimError
from semsim.grid import build_plan, load_grid, plan_summary, read_status, run_plan
from semsim.grid.plan import DONE_FILE, Plan, Task, task_key
from semsim.metrics.scoring import build_metrics, score_manifest


def done_mtimes(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in out.rglob(DONE_FILE)}


# ---------------------------------------------------------------- grid file checks


@pytest.mark.parametrize("data, message", [
    ({"probe": {"tasks": 2}, "colour": 1}, "unknown key(s) colour"),
    ({"probe": {"tasks": 0}}, "probe.tasks: expected an integer >= 1"),
    ({"datasets": {"d": "x"}, "attacks": ["dlg"]}, "needs 'datasets', 'victims' and 'attacks'"),
    ({"sets": ["nowhere/*"], "score": {"metrics": ["psnr"]}}, "matches no folder or manifest"),
    ({"probe": {"tasks": 1}, "device": "gpu"}, "'gpu' is not a torch device"),
    ({}, "nothing to do"),
])
def test_bad_grid_files_fail_with_one_line(tmp_path, data, message):
    with pytest.raises(SemsimError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_grid(write_grid(tmp_path, data))
    assert "\n" not in str(info.value)


def test_unknown_metric_and_bad_victim_are_refused(tmp_path):
    make_set(tmp_path / "a", 2, 0)
    with pytest.raises(SemsimError, match="unknown metric|not_a_metric"):
        load_grid(write_grid(tmp_path, {"sets": ["a"], "score": {"metrics": ["not_a_metric"]}}))
    grid = {"datasets": {"d": str(tmp_path)}, "victims": {"v": {"checkpoint": "missing"}}, "attacks": ["dlg"]}
    with pytest.raises(SemsimError, match="not a checkpoint folder"):
        load_grid(write_grid(tmp_path, grid))


def test_keys_depend_on_parameters_and_dependencies():
    a = task_key("attack:s#0000", "attack", {"seed": 0}, [])
    assert a == task_key("attack:s#0000", "attack", {"seed": 0}, [])
    assert a != task_key("attack:s#0000", "attack", {"seed": 1}, [])
    assert a != task_key("attack:s#0000", "attack", {"seed": 0}, ["victim-key"])
    assert a != task_key("attack:s#0001", "attack", {"seed": 0}, [])


def test_tasks_with_equal_settings_get_their_own_keys_and_work_folders(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"probe": {"tasks": 5}}))
    plan = build_plan(grid)
    assert len({t.key for t in plan.tasks}) == 5 and len({t.work for t in plan.tasks}) == 5


# ---------------------------------------------------------------- local pool


def test_killed_worker_is_retried_and_rerun_does_no_work(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"out": "run", "retries": 1,
                                           "probe": {"tasks": 4, "images": 3, "crash_once": True}}))
    report = run_plan(build_plan(grid), workers=2, show_progress=False)
    assert report.count("done") == 4 and not report.failed
    assert report.attempts == 8  # every task: one killed attempt, one retry
    for k in range(4):
        record = json.loads((grid.out / "shards" / "probe" / f"{k:04d}" / DONE_FILE).read_text())
        assert record["resumed"] is True  # the retry found the killed attempt's work folder
        assert set(record["files"]) == {"partial.txt", "00000.txt", "00001.txt", "00002.txt"}
    assert not any((grid.out / "work").glob("*/"))  # every work folder was published
    before = done_mtimes(grid.out)

    again = run_plan(build_plan(grid), workers=2, show_progress=False)
    assert again.executed == [] and again.attempts == 0
    assert all(s.skipped and s.status == "done" for s in again.states.values())
    assert done_mtimes(grid.out) == before

    status = read_status(grid)
    assert status.phase == "finished" and status.counts["done"] == 4 and status.images["done"] == 12


def test_failures_are_retried_a_bounded_number_of_times_then_reported(tmp_path):
    probe = {"tasks": 2, "fail_times": 5}
    grid = load_grid(write_grid(tmp_path, {"out": "run", "retries": 1, "probe": probe}))
    report = run_plan(build_plan(grid), workers=1, show_progress=False)
    assert set(report.failed) == {"probe#0000", "probe#0001"}
    assert report.attempts == 4
    assert "injected failure 2 of 5" in report.failed["probe#0000"]
    status = read_status(grid)
    assert status.counts["failed"] == 2 and "RuntimeError" in status.failures["probe#0000"]
    # a rerun with more retries finishes them (attempts 3..5 fail, the 6th succeeds)
    report = run_plan(build_plan(grid), workers=1, retries=3, show_progress=False)
    assert report.count("done") == 2 and report.attempts == 8


def test_tasks_needing_a_failed_task_are_blocked(tmp_path):
    probe = {"tasks": 1, "fail_times": 9}
    grid = load_grid(write_grid(tmp_path, {"out": "run", "retries": 0, "probe": probe}))
    plan = build_plan(grid)
    first = plan.tasks[0]
    params = {"images": 1, "sleep": 0}
    ok = Task("probe#ok", "probe", "probe", 1, str(grid.out / "ok"), params=params)
    after = Task("probe#after", "probe", "probe", 2, str(grid.out / "after"), params=params, deps=(first.id,))
    for t in (ok, after):
        t.key = task_key(t.id, t.kind, t.params, [first.key] if t.deps else [])
        t.work = str(grid.out / "work" / t.key)
    report = run_plan(Plan(grid, [first, ok, after]), workers=1, show_progress=False)
    assert report.states["probe#0000"].status == "failed"
    assert report.states["probe#ok"].status == "done"
    assert report.states["probe#after"].status == "blocked"
    assert "probe#after" not in report.executed


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    import fcntl

    grid = load_grid(write_grid(tmp_path, {"out": "run", "probe": {"tasks": 1}}))
    grid.out.mkdir()
    with open(grid.out / "grid.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SemsimError, match="another `semsim grid run`"):
            run_plan(build_plan(grid), show_progress=False)


# ---------------------------------------------------------------- scoring collections of sets


@pytest.fixture
def two_sets(tmp_path):
    make_set(tmp_path / "sets" / "alpha", 7, seed=1)
    make_set(tmp_path / "sets" / "beta", 5, seed=2)
    return tmp_path


def test_scoring_grid_matches_direct_scoring_and_resumes_per_shard(two_sets):
    path = write_grid(two_sets, {"out": "run", "sets": ["sets/*"],
                                 "score": {"metrics": ["psnr", "ssim"], "shard_size": 3}})
    grid = load_grid(path)
    plan = build_plan(grid)
    summary = plan_summary(plan).set_index("set")
    assert summary.loc["alpha", "tasks"] == 3 and summary.loc["beta", "tasks"] == 2  # ceil(7/3), ceil(5/3)
    report = run_plan(plan, workers=2, show_progress=False)
    assert sorted(report.scored_sets) == ["alpha", "beta"] and not report.failed

    per_image = read_table(grid.out / "scores.parquet")
    per_set = read_table(grid.out / "scores_sets.parquet").set_index("set")
    metrics, _ = build_metrics(["psnr", "ssim"])
    for name in ("alpha", "beta"):
        manifest, _ = ingest(two_sets / "sets" / name)
        direct = score_manifest(manifest, metrics, show_progress=False)
        got = per_image[per_image["set"] == name].set_index("image_id").sort_index()
        want = direct.per_image.set_index("image_id").sort_index()
        assert list(got.index) == list(want.index)
        np.testing.assert_allclose(got["psnr"], want["psnr"], rtol=1e-6)
        np.testing.assert_allclose(got["ssim"], want["ssim"], rtol=1e-6)
        want_set = direct.per_set.set_index("set").loc[name]
        assert per_set.loc[name, "n"] == want_set["n"]
        np.testing.assert_allclose(per_set.loc[name, "psnr_mean"], want_set["psnr_mean"], rtol=1e-9)
        np.testing.assert_allclose(per_set.loc[name, "ssim_ci_low"], want_set["ssim_ci_low"], rtol=1e-9)

    # changing one reconstruction redoes exactly the shard that holds it
    rec = two_sets / "sets" / "beta" / "4_1_rec.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(rec)
    again = run_plan(build_plan(grid), workers=1, show_progress=False)
    assert again.executed == ["score:beta#0001"]
    beta4 = read_table(grid.out / "scores.parquet").set_index(["set", "image_id"]).loc[("beta", "4_1")]
    assert beta4["psnr"] < per_image.set_index(["set", "image_id"]).loc[("beta", "4_1"), "psnr"]


def test_set_level_metrics_run_once_per_whole_set(two_sets):
    """Model-based recognition (set level) comes from one task over all shards, not averaged over shards."""
    import torch

    from semsim.models.checkpoint import save_checkpoint
    from semsim.models.classifiers import create_model, model_config

    torch.manual_seed(0)
    save_checkpoint(two_sets / "evaluator", create_model("lenet", num_classes=3, image_size=16),
                    model_config("lenet", 3, image_size=16))
    grid = load_grid(write_grid(two_sets, {"out": "run", "sets": ["sets/alpha"], "score": {
        "metrics": ["psnr", "mr"], "shard_size": 2, "options": {"mr": {"evaluator": "evaluator"}}}}))
    plan = build_plan(grid)
    kinds = [t.kind for t in plan.tasks]
    assert kinds.count("score") == 4 and kinds.count("score-set") == 1
    whole = next(t for t in plan.tasks if t.kind == "score-set")
    assert whole.params["metrics"] == ["mr"] and whole.n_images == 7
    assert whole.params["options"]["mr"]["evaluator"] == str(two_sets / "evaluator")
    report = run_plan(plan, workers=1, show_progress=False)
    assert report.scored_sets == ["alpha"] and not report.failed

    metrics, _ = build_metrics(["psnr", "mr"], mr={"evaluator": two_sets / "evaluator"})
    manifest, _ = ingest(two_sets / "sets" / "alpha")
    direct = score_manifest(manifest, metrics, show_progress=False)
    per_set = read_table(grid.out / "scores_sets.parquet").iloc[0]
    want = direct.per_set.iloc[0]
    for col in ("mr_accuracy", "mr_accuracy_ci_low", "mr_top5_accuracy", "psnr_mean", "mr_prob_mean"):
        np.testing.assert_allclose(per_set[col], want[col], rtol=1e-6, err_msg=col)
    per_image = read_table(grid.out / "scores.parquet").set_index("image_id").sort_index()
    want_image = direct.per_image.set_index("image_id").sort_index()
    np.testing.assert_allclose(per_image["mr_prob"], want_image["mr_prob"], rtol=1e-5)


# ---------------------------------------------------------------- CLI


def test_cli_plan_run_status(two_sets):
    path = write_grid(two_sets, {"out": "run", "sets": ["sets/alpha"],
                                 "score": {"metrics": ["psnr"], "shard_size": 4, "table": "scores.csv"}})
    runner = CliRunner()
    planned = runner.invoke(app, ["grid", "plan", str(path), "--tasks"])
    assert planned.exit_code == 0, planned.output
    assert "2 task(s): 0 done, 2 to run" in planned.output and "score:alpha#0001" in planned.output

    status = runner.invoke(app, ["grid", "status", str(path)])
    assert status.exit_code != 0 and "no run has started" in str(status.exception or status.output)

    ran = runner.invoke(app, ["grid", "run", str(path), "--workers", "2", "--quiet"])
    assert ran.exit_code == 0, ran.output
    assert "2 task(s) run" in ran.output and (two_sets / "run" / "scores.csv").is_file()
    assert len(pd.read_csv(two_sets / "run" / "scores.csv")) == 7

    planned = runner.invoke(app, ["grid", "plan", str(path)])
    assert "2 task(s): 2 done, 0 to run" in planned.output
    status = runner.invoke(app, ["grid", "status", str(path), "--sets"])
    assert status.exit_code == 0, status.output
    assert "finished" in status.output and "tasks: 2/2 done" in status.output and "7/7" in status.output


def test_cli_run_exits_1_and_names_failed_tasks(tmp_path):
    path = write_grid(tmp_path, {"out": "run", "retries": 0, "probe": {"tasks": 1, "fail_times": 1}})
    result = CliRunner().invoke(app, ["grid", "run", str(path), "--quiet"])
    assert result.exit_code == 1
    assert "failed: probe#0000: RuntimeError: probe: injected failure 1 of 1" in result.output


def test_status_reports_a_run_in_progress(tmp_path):
    """A state file written by a live driver (this process) reads as running, with running tasks."""
    path = write_grid(tmp_path, {"out": "run", "probe": {"tasks": 2}})
    grid = load_grid(path)
    plan = build_plan(grid)
    grid.out.mkdir()
    (grid.out / "grid-plan.json").write_text(json.dumps({"rate_kind": "probe",
                                                        "tasks": [t.to_dict() for t in plan.tasks]}))
    import socket
    import time

    (grid.out / "grid-state.json").write_text(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "started": time.time() - 60, "updated": time.time(),
        "finished": None, "executor": "local pool", "images": {"per_hour": 120.0, "eta_seconds": 30},
        "tasks": {"probe#0000": {"status": "running", "started": time.time() - 5, "attempts": 1}}}))
    status = read_status(grid)
    assert status.phase == "running" and status.counts["running"] == 1 and status.counts["pending"] == 1
    result = CliRunner().invoke(app, ["grid", "status", str(path)])
    assert "running: probe#0000" in result.output and "120 images/h" in result.output


def test_ray_path_without_ray_installed_says_how_to_get_it(monkeypatch):
    import sys

    from semsim.grid.executors import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SemsimError, match=r"pip install 'semsim\[ray\]'"):
        RayExecutor("auto")


def test_failed_attack_images_are_merged_and_reported_not_scored(tmp_path):
    """A shard whose attack failed on one image (no files, 'failed: nan') merges and scores the rest."""
    from semsim.data.sets import read_manifest, write_manifest
    from semsim.grid.merge import merge_scores, merge_sets
    from semsim.grid.spec import ScoreSpec
    from semsim.grid.tasks import execute_task, publish

    grid = load_grid(write_grid(tmp_path, {"out": "run", "probe": {"tasks": 1}}))
    grid = type(grid)(**{**vars(grid), "score": ScoreSpec(("psnr",))})
    shard = tmp_path / "attack-shard"
    make_set(shard, 2, seed=4)
    rows = [{"set": "x", "image_id": f"{i}_{i}", "original": str(shard / f"{i}_{i}_ori.png"),
             "reconstruction": str(shard / f"{i}_{i}_rec.png"), "label": i, "status": "ok"} for i in range(2)]
    rows.append({"set": "x", "image_id": "7_1", "original": str(shard / "7_1_ori.png"),
                 "reconstruction": str(shard / "7_1_rec.png"), "label": 1, "status": "failed: nan"})
    write_manifest(pd.DataFrame(rows), shard / "manifest.csv")
    attack = Task("attack:s#0000", "attack", "s", 0, str(grid.out / "shards" / "s" / "attack-0000"), key="k1")
    publish(shard, Path(attack.out), {"key": "k1"})
    score = Task("score:s#0000", "score", "s", 0, str(grid.out / "shards" / "s" / "score-0000"), key="k2",
                 work=str(grid.out / "work" / "k2"), deps=(attack.id,),
                 params={"set": "s", "metrics": ["psnr"], "batch_size": 8, "skip_bad": False, "options": {},
                         "manifests": [str(Path(attack.out) / "manifest.csv")], "image_ids": None})
    record = execute_task(score.to_dict())
    assert record["n_images"] == 2 and record["n_skipped"] == 1
    plan = Plan(grid, [attack, score])
    assert merge_sets(plan) == (["s"], [])
    merged = read_manifest(grid.out / "sets" / "s" / "manifest.csv")
    assert len(merged) == 3 and pd.isna(merged.set_index("image_id").loc["7_1", "reconstruction"])
    assert sorted(p.name for p in (grid.out / "sets" / "s").glob("*.png")) == [
        "0_0_ori.png", "0_0_rec.png", "1_1_ori.png", "1_1_rec.png"]
    assert merge_scores(plan)[0] == ["s"]
    scores = read_table(grid.out / "scores.parquet").set_index("image_id")
    assert scores.loc["7_1", "status"] == "failed: nan" and np.isnan(scores.loc["7_1", "psnr"])
    ok = scores.loc[["0_0", "1_1"]]
    assert (ok["status"] == "ok").all() and ok["psnr"].notna().all()


def test_publish_replaces_a_stale_shard_whole(tmp_path):
    from semsim.grid.tasks import publish

    final = tmp_path / "shards" / "s" / "attack-0000"
    final.mkdir(parents=True)
    (final / "old.png").write_text("old")
    (final / DONE_FILE).write_text(json.dumps({"key": "old"}))
    work = tmp_path / "work" / "new"
    work.mkdir(parents=True)
    (work / "new.png").write_text("new!")
    record = publish(work, final, {"key": "new"})
    assert record["files"] == {"new.png": 4}
    assert sorted(p.name for p in final.iterdir()) == [DONE_FILE, "new.png"]
    assert json.loads((final / DONE_FILE).read_text())["key"] == "new"
    assert not work.exists() and [p.name for p in final.parent.iterdir()] == ["attack-0000"]


def test_status_of_an_interrupted_run(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"out": "run", "probe": {"tasks": 2}}))
    plan = build_plan(grid)
    grid.out.mkdir()
    (grid.out / "grid-plan.json").write_text(json.dumps({"tasks": [t.to_dict() for t in plan.tasks]}))
    (grid.out / "grid-state.json").write_text(json.dumps({
        "pid": 2 ** 22 + 12345, "host": "elsewhere-or-dead", "started": 0, "updated": 1, "finished": None,
        "tasks": {"probe#0000": {"status": "running", "started": 0}}}))
    status = read_status(grid)
    assert status.phase == "running"  # a driver on another host cannot be checked: assumed alive
    import socket

    state = json.loads((grid.out / "grid-state.json").read_text())
    state["host"] = socket.gethostname()  # same host, no such process: the driver is gone
    (grid.out / "grid-state.json").write_text(json.dumps(state))
    status = read_status(grid)
    assert status.phase == "interrupted" and status.counts["pending"] == 2 and not status.running
