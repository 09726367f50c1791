"""``semsim demo``: the whole assessment, offline, on data bundled with the dependencies.

1. Train a small victim (Inverting Gradients' ConvNet, narrowed to width 8) on scikit-learn's handwritten
   digits, once without a defense and once with a training-time defense whose gradients the attacker then
   observes (Gaussian noise).
2. Reconstruct held-out digits from single-image gradients with two attacks (iDLG and Inverting Gradients).
3. Train an evaluation classifier on clean digits; label each reconstruction by whether it recognises it
   (model-based labels: no humans are involved in the demo, and the report says so).
4. Train SemSim on those model-based labels, score every reconstruction with the full metric panel
   (pixel metrics, MR/IIP/feature distance, SemSim; LPIPS/FID when their weights are present).
5. Run the faithfulness analysis and write ``report.html`` with the image grids, the per-set table and the
   figures.
"""

from __future__ import annotations

import html
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semsim.analysis.figures import new_figure, png_bytes
from semsim.analysis.report import REPORT_STYLE, analyze, html_image, html_table
from semsim.attacks import attack_set
from semsim.common.io import atomic_write
from semsim.data.datasets import load_dataset, train_val_split
from semsim.data.images import read_arrays
from semsim.data.labels import write_labels
from semsim.learned.train import TrainConfig, train_semsim
from semsim.metrics.labeler import label_by_model
from semsim.metrics.scoring import score_sets
from semsim.victims.train import train_to_checkpoint

DIGITS = "bundled:digits"
HELD_OUT = 0.25  # share of the digits held out of training; the attacked originals come from it


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults finish in a few minutes on a 2-core CPU."""

    out: Path = Path("semsim-demo")
    n_images: int = 32  # reconstructions per configuration
    image_size: int = 16  # the 8x8 digits, upsampled
    victim_epochs: int = 3
    evaluator_epochs: int = 4
    # attack -> settings; total variation is raised from Inverting Gradients' 1e-4 for the 16x16 digits
    attacks: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "idlg": {"iterations": 100}, "invgrad": {"iterations": 500, "tv": 1e-2}})
    defenses: tuple[str, ...] = ("none", "noise-1e-2")
    semsim_epochs: int = 12
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    show_progress: bool = True


@dataclass
class DemoResult:
    report: Path
    per_image: pd.DataFrame
    per_set: pd.DataFrame
    labels: pd.DataFrame
    notes: list[str]
    seconds: dict[str, float]


def _train(folder: Path, cfg: DemoConfig, *, role: str, epochs: int, seed: int, defense: str = "none"
           ) -> dict[str, Any]:
    """Train a width-8 ConvNet (Inverting Gradients' architecture, narrowed for the CPU) on the training part
    of the digits (the same stratified split the attacks draw their held-out images from) and save it."""
    return train_to_checkpoint(folder, role=role, arch="convnet", width=8, data=DIGITS, image_size=cfg.image_size,
                               epochs=epochs, defense=defense, val_split=HELD_OUT, batch_size=32, lr=0.05,
                               seed=seed, split_seed=cfg.seed, device=cfg.device, show_progress=cfg.show_progress)


def run_demo(cfg: DemoConfig | None = None) -> DemoResult:
    """Run the whole pipeline into ``cfg.out``; returns the tables and the report's path."""
    cfg = cfg or DemoConfig()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    notes: list[str] = []
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] = now - clock
        clock = now
        if cfg.show_progress:
            print(f"semsim demo: {step} done ({seconds[step]:.1f} s)", file=sys.stderr, flush=True)

    digits = load_dataset(DIGITS, image_size=cfg.image_size)
    _, held_out, _, _ = train_val_split(digits, HELD_OUT, seed=cfg.seed)
    held_out.name = digits.name
    victims = {d: _train(out / "models" / f"victim-{d}", cfg, role="victim", epochs=cfg.victim_epochs,
                         seed=cfg.seed, defense=d) for d in cfg.defenses}
    lap("train victims")

    manifests = []
    for defense in cfg.defenses:
        for attack, settings in cfg.attacks.items():
            folder = out / "sets" / f"{attack}-{defense}"
            manifests.append(attack_set(out / "models" / f"victim-{defense}", held_out, attack, folder,
                                        n=cfg.n_images, seed=cfg.seed, defense=defense, batch_size=cfg.batch_size,
                                        device=cfg.device, show_progress=cfg.show_progress, **settings))
    manifest = pd.concat(manifests, ignore_index=True)
    failed = manifest["status"].fillna("ok").ne("ok") if "status" in manifest else pd.Series(False, manifest.index)
    if failed.any():
        notes.append(f"{int(failed.sum())} attack(s) failed (status column of the manifests)")
    manifest = manifest[~failed].reset_index(drop=True)
    lap("attacks")

    evaluator = out / "models" / "evaluator"
    clean_accuracy = _train(evaluator, cfg, role="evaluator", epochs=cfg.evaluator_epochs,
                            seed=cfg.seed + 1)["clean_accuracy"]
    labels = label_by_model(manifest, evaluator, device=cfg.device, show_progress=cfg.show_progress)
    write_labels(labels, out / "labels.csv")
    lap("evaluator and model-based labels")

    semsim_model = out / "models" / "semsim"
    semsim_config = train_semsim(labels, semsim_model,
                 TrainConfig(architecture="convnet", arch_kwargs={"width": 8}, image_size=cfg.image_size,
                             epochs=cfg.semsim_epochs, batch_size=32, seed=cfg.seed,
                             mean=tuple(victims["none"]["mean"]),
                             std=tuple(victims["none"]["std"])),
                 device=cfg.device, show_progress=cfg.show_progress)
    lap("train SemSim")

    # the default panel + the evaluator's metrics + SemSim, as `semsim score --evaluator --semsim` scores it
    scores = score_sets(manifest, evaluator=evaluator, semsim=semsim_model, device=cfg.device,
                        show_progress=cfg.show_progress)
    notes += scores.notes
    scores.write(out / "scores.csv")  # and scores_sets.csv
    lap("score")

    analysis = analyze(out / "scores.csv", out / "labels.csv", out / "analysis", n_boot=200, seed=cfg.seed)
    notes += analysis.notes
    lap("analysis")

    facts = {"victim training accuracy": {d: v["train_accuracy"] for d, v in victims.items()},
             "evaluator clean accuracy (held-out digits)": clean_accuracy,
             "reconstructions per configuration": cfg.n_images,
             "SemSim validation on held-out originals": semsim_config.get("validation", {})}
    report = out / "report.html"
    with atomic_write(report) as tmp:
        tmp.write_text(render_report(cfg, manifest, scores.per_set, labels, analysis, facts, notes, seconds),
                       encoding="utf-8")
    return DemoResult(report, scores.per_image, scores.per_set, labels, notes, seconds)


def pair_grid(manifest: pd.DataFrame, n: int = 12) -> bytes:
    """A two-row figure: originals above, their reconstructions below (nearest-neighbour upscaling)."""
    rows = manifest.head(n)
    originals = read_arrays(list(rows["original"]), workers=1)
    recs = read_arrays(list(rows["reconstruction"]), workers=1)
    fig = new_figure(0.8 * len(rows) + 0.6, 1.9)
    axes = fig.subplots(2, len(rows), squeeze=False)
    for k in range(len(rows)):
        for r, img in enumerate((originals[k], recs[k])):
            ax = axes[r][k]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][k].set_title(str(rows["image_id"].iloc[k]), fontsize=7)
    axes[0][0].set_ylabel("original", fontsize=8)
    axes[1][0].set_ylabel("reconstr.", fontsize=8)
    return png_bytes(fig)


def _set_summary(per_set: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    rate = labels.groupby("set")["recognized"].mean().rename("recognized by evaluator")
    cols = [c for c in per_set.columns if c.endswith("_mean")]
    table = per_set[["set", "n", *cols]].dropna(axis=1, how="all")  # e.g. MS-SSIM, undefined on small images
    table = table.rename(columns={c: c[: -len("_mean")] for c in cols})
    return table.merge(rate, left_on="set", right_index=True, how="left")


def render_report(cfg: DemoConfig, manifest: pd.DataFrame, per_set: pd.DataFrame, labels: pd.DataFrame,
                  analysis: Any, facts: dict[str, Any], notes: list[str], seconds: dict[str, float]) -> str:
    """The demo's self-contained HTML page."""
    esc = html.escape
    total = sum(seconds.values())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>semsim demo report</title>",
        f"<style>{REPORT_STYLE}</style></head><body>",
        "<h1>semsim demo: how much do gradient-inversion reconstructions leak?</h1>",
        "<p>A small ConvNet victim was trained on scikit-learn's handwritten digits, once plainly and once with a "
        "training-time defense whose noisy gradients are all the attacker sees. Held-out digits were "
        "reconstructed from single-image gradients by iDLG and Inverting Gradients, and every reconstruction "
        "was scored by the full metric panel.</p>",
        "<p class='note'><strong>Labels are model-based, not human:</strong> \"recognized\" means an "
        "evaluation classifier trained on clean digits classifies the reconstruction correctly, and the SemSim "
        "model in this report was trained on those labels (label_source <code>model:evaluator</code>), on "
        "these same sets (its validation originals held out), so its agreement below is optimistic.</p>",
        "<h2>Per-set results</h2>",
        "<p class='note'>Means over the reconstructions of each configuration (set name: "
        "dataset/victim/training variant/observed-gradient defense/attack-iterations). Higher PSNR, SSIM, "
        "MR and IIP and lower MSE, feature distance and SemSim distance mean more leakage.</p>",
        html_table(_set_summary(per_set, labels)),
        "<h2>Reconstructions</h2>",
    ]
    for set_name, rows in manifest.groupby("set", sort=False):
        parts.append(f"<h3>{esc(str(set_name))}</h3>")
        parts.append(html_image(pair_grid(rows), f"originals and reconstructions of {set_name}"))
    parts.append("<h2>Which metric agrees with recognition?</h2>")
    parts.append("<p class='note'>From the faithfulness analysis (full report: "
                 "<a href='analysis/report.html'>analysis/report.html</a>).</p>")
    for key in ("image_level", "set_level"):
        if key in analysis.tables:
            parts.append(f"<h3>{key.replace('_', '-')}</h3>{html_table(analysis.tables[key])}")
    for name, png in analysis.figures.items():
        if name in ("scatter", "roc"):
            parts.append(html_image(png, name))
    parts.append("<h2>Run</h2><ul>")
    for k, v in facts.items():
        parts.append(f"<li>{esc(k)}: {esc(_fmt(v))}</li>")
    for step, s in seconds.items():
        parts.append(f"<li>{esc(step)}: {s:.1f} s</li>")
    parts.append(f"<li>total: {total:.1f} s</li></ul>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    parts.append(f"<p class='note'>Settings: {esc(_fmt(asdict(cfg)))}</p></body></html>")
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, np.floating):
        return f"{float(v):.3f}"
    return str(v)
