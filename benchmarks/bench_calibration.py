"""How wrong can a calibrated recognition rate be on a new configuration, and what do 50 labels buy?

On the real 8,400 CIFAR-100 judgments (14 victim configurations x 600 images, ../shared/data), side by side:

1. Held-out evaluation by whole configurations (leave-one-configuration-out): per metric the mean over held-out
   configurations of AUROC, Brier, ECE, bias and |rate error|, with the base rate as reference.
2. Expected-rate intervals of a calibration fitted on one architecture's 7 configurations, on the other's 7:
   how many cover the true recognition rate, and how wide they are.
3. ``estimate_rates`` with N random human labels per configuration (calibration fitted on the other 13
   configurations), repeated draws: coverage of the true rate and mean width against the Wilson interval of the
   same labels (ratio < 1: the predictions buy precision).

Run: ``.venv/bin/python benchmarks/bench_calibration.py [--draws 300] [--labels 50]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from semsim.analysis import import_semsim_cifar100, join_scores_labels
from semsim.analysis.calibration import estimate_rates, fit_calibration, heldout_evaluation, heldout_summary
from semsim.analysis.data import SEMSIM_CIFAR100_DIRECTIONS

LABELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar100_human_labels" / "labels.csv"
FEATURES = ["lpips_squeeze", "dreamsim"]


def markdown(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats to 3 decimals)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def interval_coverage(data, features: list[str]) -> pd.DataFrame:
    """Covered configurations and mean interval width, fitting on one architecture and testing on the other."""
    rows = []
    for holdout in ("ConvNet", "ResNet"):
        for feats in (features, ["dreamsim"], ["semsim"], []):
            per_set, _ = heldout_evaluation(data, feats, holdout=holdout, intervals=True)
            rows.append({"held out": holdout, "metrics": ", ".join(feats) or "base rate",
                         "covered": f"{int(per_set['covered'].sum())}/{len(per_set)}",
                         "mean width": (per_set["ci_high"] - per_set["ci_low"]).mean(),
                         "mean abs rate error": per_set["abs_rate_error"].mean()})
    return pd.DataFrame(rows)


def ppi_draws(data, features: list[str], n_labels: int, draws: int, seed: int = 0) -> pd.DataFrame:
    """Coverage and widths of estimate_rates with ``n_labels`` random labels per configuration."""
    t = data.table
    per_image = []
    for name in dict.fromkeys(t["set"]):
        m = (t["set"] == name).to_numpy()
        cal = fit_calibration(t[~m], features, data.directions, n_draws=0, spread=False, warn=False)
        per_image.append(t[m][["set", "image_id", "recognized"]].assign(p_recognized=cal.predict(t[m])))
    per_image = pd.concat(per_image, ignore_index=True)
    truth = (per_image["recognized"] > 0.5).groupby(per_image["set"]).mean()
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        labels = per_image.groupby("set", group_keys=False).sample(n_labels, random_state=rng)
        est = estimate_rates(per_image, labels).set_index("set")
        true = truth.loc[est.index]
        rows.append(pd.DataFrame({
            "covered": (est["ci_low"] <= true) & (true <= est["ci_high"]),
            "wilson_covered": (est["labels_only_ci_low"] <= true) & (true <= est["labels_only_ci_high"]),
            "width": est["ci_high"] - est["ci_low"],
            "wilson_width": est["labels_only_ci_high"] - est["labels_only_ci_low"],
            "weight": est["weight"]}))
    return pd.concat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--labels", type=int, default=50)
    args = parser.parse_args()
    scores, labels = import_semsim_cifar100(LABELS)
    data = join_scores_labels(scores, labels, directions=SEMSIM_CIFAR100_DIRECTIONS)
    start = time.perf_counter()
    summary = heldout_summary(data)
    took = time.perf_counter() - start
    print(f"## 1. leave-one-configuration-out, one-metric logistic maps ({took:.2f} s for {len(summary)} rows)\n")
    print(markdown(summary))
    print("\n## 2. expected-rate intervals (95%) of a map fitted on one architecture, on the other\n")
    print(markdown(interval_coverage(data, FEATURES)))
    res = ppi_draws(data, FEATURES, args.labels, args.draws)
    by_set = res.groupby(level=0)[["covered", "wilson_covered"]].mean()
    print(f"\n## 3. {args.labels} random labels per configuration, {args.draws} draws, map ({', '.join(FEATURES)}) "
          "fitted on the other 13 configurations\n")
    table = pd.DataFrame([
        {"interval": "PPI++ (estimate_rates)", "coverage": res["covered"].mean(),
         "worst configuration": by_set["covered"].min(), "mean width": res["width"].mean()},
        {"interval": "Wilson, labels alone", "coverage": res["wilson_covered"].mean(),
         "worst configuration": by_set["wilson_covered"].min(), "mean width": res["wilson_width"].mean()}])
    print(markdown(table))
    print(f"\nwidth ratio PPI++ / Wilson: {res['width'].mean() / res['wilson_width'].mean():.3f}; mean PPI++ weight "
          f"lambda {res['weight'].mean():.2f}")


if __name__ == "__main__":
    main()
