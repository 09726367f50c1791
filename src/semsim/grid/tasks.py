"""Running one task inside a worker (a local pool process or a Ray worker) and publishing its shard.

A task works in ``work/<key>/`` (kept across attempts, so a resumable step such as ``attack_set`` continues
where a killed attempt stopped), then writes ``DONE.json`` (key, files and sizes, timing, host) into it and
renames the folder onto its final place: readers see a whole shard or none.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semsim.common.io import replace_folder, write_json
from semsim.grid.datasets import cached_dataset
from semsim.grid.plan import DONE_FILE, Task, read_done


def _file_summary(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != DONE_FILE}


def publish(work: Path, final: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write the completion record into ``work``, rename ``work`` onto ``final`` (replacing a stale one)."""
    record = {**record, "files": _file_summary(work)}
    write_json(record, work / DONE_FILE)
    replace_folder(work, final)
    return record


def _run_attack(task: Task, work: Path) -> dict[str, Any]:
    from semsim.attacks import attack_set

    p = task.params
    data = cached_dataset(p["dataset"], p["image_size"], p.get("split"))
    manifest = attack_set(p["victim"], data, p["attack"], work, indices=p["indices"], seed=p["seed"],
                          defense=p["defense"], iterations=p["iterations"], batch_size=p["batch_size"],
                          device=task.device, client_augment=p.get("client_augment", "none"), show_progress=False,
                          **p["options"])
    ok = manifest["status"].fillna("ok").eq("ok").sum() if "status" in manifest else len(manifest)
    return {"n_images": len(manifest), "n_ok": int(ok)}


def _run_train(task: Task, work: Path) -> dict[str, Any]:
    import torch

    from semsim.data.datasets import channel_stats, subset
    from semsim.models.checkpoint import save_checkpoint
    from semsim.models.classifiers import create_model, model_config
    from semsim.victims.train import train_classifier

    p = task.params
    data = cached_dataset(p["dataset"], p["image_size"], p.get("split"))
    if p["n"]:
        data, _ = subset(data, n=p["n"], seed=p["seed"])
    mean, std = channel_stats(data)  # the training set's own statistics normalise the victim
    size = int(data.images.shape[-1])
    torch.manual_seed(p["seed"])
    model = create_model(p["architecture"], num_classes=len(data.classes), image_size=size, mean=mean,
                         std=std)
    # per-epoch state in the work folder: a killed attempt resumes from its last finished epoch
    schedule: dict[str, Any] = {k: p[k] for k in ("schedule", "nesterov", "warmup", "milestones") if k in p}
    result = train_classifier(model, data, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
                              augment=p["augment"], defense=p["defense"], device=task.device, seed=p["seed"],
                              show_progress=False, state_dir=work / "train-state", **schedule)
    training: dict[str, Any] = {k: p[k] for k in ("dataset", "epochs", "batch_size", "lr", "augment", "defense",
                                                  "seed")}
    training.update(schedule)
    training.update(n=len(data), train_accuracy=result.get("train_accuracy"), source=f"semsim grid {task.id}")
    config = model_config(p["architecture"], len(data.classes), size, mean, std, classes=list(data.classes),
                          training=training)
    save_checkpoint(work, model, config)  # replaces the work folder (and the epoch state) with the checkpoint
    return {"n_images": 0, "train_images": len(data), "train_accuracy": result.get("train_accuracy")}


def _run_score(task: Task, work: Path) -> dict[str, Any]:
    """Score one shard (image-level metrics) or one whole set (set-level metrics) with the panel of
    :func:`semsim.metrics.scoring.build_panel`; the merge finishes the tables as ``semsim score`` does."""
    import pandas as pd

    from semsim.common.io import write_table
    from semsim.data.sets import read_manifest
    from semsim.metrics.scoring import ScoreResult, build_panel, merge_skipped, score_manifest, set_annotations

    p = task.params
    manifest = pd.concat([read_manifest(m) for m in p["manifests"]], ignore_index=True)
    manifest["set"] = p["set"]
    if p["image_ids"] is not None:
        manifest = manifest[manifest["image_id"].isin(set(p["image_ids"]))]
    failed = pd.DataFrame()
    if "status" in manifest:  # images an attack could not reconstruct are reported, not scored
        ok = manifest["status"].fillna("ok").eq("ok")
        failed, manifest = manifest[~ok], manifest[ok]
    manifest = manifest.reset_index(drop=True)
    metrics, notes = build_panel(p["metrics"], options=p["options"], device=task.device)
    if len(manifest):
        result = score_manifest(manifest, metrics, device=task.device, batch_size=p["batch_size"],
                                skip_bad=p["skip_bad"], show_progress=False)
    else:  # every image of the shard failed in the attack: nothing to score, the failures are reported
        result = ScoreResult(pd.DataFrame(columns=["set", "image_id"]), pd.DataFrame(), pd.DataFrame())
    write_table(result.per_image, work / "scores.parquet")
    skipped = merge_skipped(failed, result.skipped)
    if len(skipped):
        write_table(skipped[["set", "image_id", "status"]].astype(str), work / "skipped.parquet")
    set_values: dict[str, float] = {}
    if task.kind == "score-set" and len(result.per_set):
        row = result.per_set.iloc[0].to_dict()
        summary_cols = {"set", "n"} | {f"{c}_{s}" for c in result.per_image.columns
                                       for s in ("mean", "median", "ci_low", "ci_high")}
        set_values = {k: float(v) for k, v in row.items() if k not in summary_cols}
    write_json({"set_values": set_values, "notes": notes, "annotations": set_annotations(metrics)},
               work / "set_values.json")
    return {"n_images": len(result.per_image), "n_skipped": len(skipped), "notes": notes}


def _run_probe(task: Task, work: Path) -> dict[str, Any]:
    """Synthetic work: optionally die (first attempt) or raise (first attempts); sleep; a file per image."""
    p = task.params
    resumed = (work / "partial.txt").exists()
    if p.get("crash_marker") and not Path(p["crash_marker"]).exists():
        (work / "partial.txt").write_text("written by an attempt that was then killed\n")
        Path(p["crash_marker"]).write_text(f"{os.getpid()}\n")
        os._exit(17)  # the worker process dies part-way, as an out-of-memory kill or a lost node would
    if p.get("fail_marker"):
        marker = Path(p["fail_marker"])
        failures = len(marker.read_text().splitlines()) if marker.exists() else 0
        if failures < p["fail_times"]:
            with marker.open("a") as f:
                f.write(f"{os.getpid()}\n")
            raise RuntimeError(f"probe: injected failure {failures + 1} of {p['fail_times']}")
    if p["sleep"]:
        time.sleep(p["sleep"])
    for i in range(p["images"]):
        (work / f"{i:05d}.txt").write_text(f"{task.id} {i}\n")
    return {"n_images": p["images"], "resumed": resumed}


RUNNERS: dict[str, Callable[[Task, Path], dict[str, Any]]] = {
    "train": _run_train, "attack": _run_attack, "score": _run_score, "score-set": _run_score,
    "probe": _run_probe,
}


def execute_task(task: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Run one task (given as ``Task.to_dict()``) and publish it; returns its completion record.

    A task that is already published with the same key returns its record without doing anything (the
    previous attempt finished but its report was lost).
    """
    t = Task.from_dict(task)
    final = Path(t.out)
    record = read_done(final)
    if record is not None and record.get("key") == t.key:
        return record
    if threads:  # torch reads OMP_NUM_THREADS when first imported; an imported torch is set directly
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    work = Path(t.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    summary = RUNNERS[t.kind](t, work)
    return publish(work, final, {"task": t.id, "key": t.key, "kind": t.kind, "set": t.set, "shard": t.shard,
                                 "seconds": round(time.time() - start, 3), "host": socket.gethostname(),
                                 "pid": os.getpid(), "finished": time.time(), **summary})
