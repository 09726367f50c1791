"""Faithfulness-analysis benchmark (issue 18, item 8): the whole analysis of the 8,400 real CIFAR-100 judgments
(with the 8 CLIP recognizers: 22 metric columns) and 1,000 bootstrap replicates, in CPU seconds.

In one run, side by side:

* every stage of ``analyze`` (join, set level, image-level bootstrap over originals, tests of differences,
  contradictions, ceiling and agreement, calibration, figures, writing the tables and the report), each as CPU
  time of this process, and their total against the 5 s budget;
* the clustered AUROC bootstrap of one metric three ways: the cluster-pair matrix (what the analysis uses), the
  weighted Mann-Whitney over all rows, and a loop calling scikit-learn's ``roc_auc_score`` per replicate; the
  ratios say what vectorising buys.

Also checks that importing ``semsim.analysis`` loads no torch. Usage:
``python benchmarks/bench_analysis.py [--bootstrap 1000] [--loop-replicates 100]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar100_human_labels"
BUDGET_S = 5.0


def cpu(fn: Callable[[], object]) -> tuple[float, object]:
    """CPU seconds of this process spent in ``fn()``, and its result."""
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--loop-replicates", type=int, default=100, help="replicates of the scikit-learn loop")
    args = parser.parse_args()
    labels, vlm = SHARED / "labels.csv", SHARED / "vlm_predictions.csv"
    if not labels.is_file() or not vlm.is_file():
        sys.exit(f"error: {SHARED} lacks labels.csv / vlm_predictions.csv (../shared/data)")

    t_import, _ = cpu(lambda: __import__("semsim.analysis"))
    torch_loaded = "torch" in sys.modules
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from semsim.analysis import figures, report
    from semsim.analysis.agreement import agreement_table
    from semsim.analysis.calibration import calibration_table
    from semsim.analysis.ceiling import human_ceiling
    from semsim.analysis.compare import metric_comparisons
    from semsim.analysis.contradiction import contradiction_matrix, per_original_contradiction
    from semsim.analysis.data import import_semsim_cifar100, imported_directions, join_scores_labels
    from semsim.analysis.resample import cluster_counts, clustered_auroc, image_clusters, weighted_auroc
    from semsim.analysis.stats import auroc_replicates, image_level, per_set_table, set_level, set_replicates

    b = args.bootstrap
    stages: dict[str, float] = {}

    def load():
        scores, lab = import_semsim_cifar100(labels, vlm)
        return join_scores_labels(scores, lab, directions=imported_directions(scores))

    stages["import + join (8,400 x 22 metrics)"], data = cpu(load)
    per_set = per_set_table(data)
    stages["set level (configuration bootstrap)"], set_reps = cpu(
        lambda: set_replicates(per_set, data.metrics, data.directions, b, 0))
    cpu(lambda: set_level(data, n_boot=b, replicates=set_reps))
    stages["image level (bootstrap over originals)"], auc_reps = cpu(lambda: auroc_replicates(data, b, 0))
    stages["image level tables"], _ = cpu(lambda: image_level(data, n_boot=b, replicates=auc_reps))
    stages["tests of differences (231 pairs x 2)"], _ = cpu(lambda: metric_comparisons(
        data, per_set, set_replicates=set_reps["spearman"], auroc_replicates=auc_reps, n_boot=b))
    stages["contradiction (sets, per original)"], _ = cpu(lambda: (contradiction_matrix(
        per_set, data.metrics, data.directions), per_original_contradiction(data)))
    stages["ceiling + agreement"], _ = cpu(lambda: (human_ceiling(data), agreement_table(data)))
    stages["calibration (held out by configuration)"], _ = cpu(lambda: calibration_table(data))
    staged = sum(stages.values())
    with tempfile.TemporaryDirectory() as tmp:
        scores, lab = import_semsim_cifar100(labels, vlm)
        t_whole, rep = cpu(lambda: report.analyze(scores, lab, Path(tmp), directions=imported_directions(scores),
                                                  n_boot=b))
    t_build, built = cpu(lambda: report._figures(data, rep.tables, None, "exclude"))
    per_figure = {name: cpu(lambda f=f: figures.png_bytes(f))[0] for name, f in built.items()}
    t_fig = t_build + sum(per_figure.values())
    stages["figures (built and rendered)"] = t_fig

    # side by side: one metric's clustered AUROC bootstrap
    t = data.table
    y = (t["recognized"] > 0.5).to_numpy()
    s = -t["dreamsim"].to_numpy()
    codes, _ = image_clusters(t)
    counts = cluster_counts(int(codes.max()) + 1, b, np.random.default_rng(0))
    t_pair, fast = cpu(lambda: clustered_auroc(s, y, codes, counts))
    weights = counts[:, codes]
    t_rows, direct = cpu(lambda: weighted_auroc(s, weights * y, weights * ~y))
    n_loop = min(args.loop_replicates, b)
    t_loop, looped = cpu(lambda: [roc_auc_score(y, s, sample_weight=weights[k]) for k in range(n_loop)])
    t_loop *= b / n_loop
    assert np.allclose(fast, direct, atol=1e-9) and np.allclose(fast[:n_loop], looped, atol=1e-9)

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{len(t)} images, {len(data.metrics)} metric columns, {b} bootstrap replicates")
    print(f"import semsim.analysis: {t_import:.2f} s CPU; torch loaded: {'YES' if torch_loaded else 'no'}")
    print(f"\n{'stage':44s} {'CPU s':>7s}")
    for name, sec in stages.items():
        print(f"{name:44s} {sec:7.2f}")
    print(f"  (building {t_build:.2f}; rendering " + ", ".join(f"{k} {v:.2f}" for k, v in per_figure.items()) + ")")
    print(f"{'sum of the stages':44s} {staged + t_fig:7.2f}")
    verdict = "within" if t_whole <= BUDGET_S else "OVER"
    print(f"{'whole analyze() (tables, figures, report)':44s} {t_whole:7.2f}  ({verdict} the {BUDGET_S:.0f} s budget)")
    print(f"\nclustered AUROC bootstrap of one metric ({b} replicates over {counts.shape[1]} originals):")
    print(f"  cluster-pair matrix   {t_pair * 1e3:8.1f} ms  (1.00x)")
    print(f"  weighted, all rows    {t_rows * 1e3:8.1f} ms  ({t_rows / t_pair:5.1f}x)")
    print(f"  scikit-learn loop     {t_loop * 1e3:8.1f} ms  ({t_loop / t_pair:5.1f}x; {n_loop} replicates timed, "
          "scaled)")


if __name__ == "__main__":
    main()
