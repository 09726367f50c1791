"""The model-based labeler: an evaluation classifier stands in for human judges.

Each reconstruction counts as *recognized* when the evaluator's top-1 class is its true class (or, with
``soft``, by the evaluator's probability of the true class), as in Model-based Recognition
("Privacy-preserving Image Recognition and A Strong Technical Baseline"). The output is a label table
(docs/contracts.md, section 3) with one judge, ``label_source = model:<evaluator name>`` and the
evaluator's chosen class as ``judge_1``, so SemSim can be trained before anyone has annotated, and a human
study compared with it later.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from semsim.common.progress import progress
from semsim.data.images import read_arrays, to_tensor
from semsim.data.labels import validate_labels
from semsim.errors import SemsimError
from semsim.metrics.model_based import Evaluator, load_evaluator, recognition


def label_by_model(manifest: pd.DataFrame, evaluator: str | os.PathLike | Evaluator, *, soft: bool = False,
                   batch_size: int = 256, device: str | torch.device = "cpu",
                   show_progress: bool = True) -> pd.DataFrame:
    """Label every reconstruction of ``manifest`` (which needs a ``label`` column) with ``evaluator``.

    Rows whose ``status`` is set and not ``ok`` (failed attacks) have no usable reconstruction and are left
    out. Returns a validated label table: ``set, image_id, original, reconstruction, label, recognized,
    n_judges, label_source, judge_1``.
    """
    ev = load_evaluator(evaluator, device=device)
    if "status" in manifest.columns:
        manifest = manifest[manifest["status"].fillna("ok").eq("ok")]
    if "label" not in manifest.columns:
        raise SemsimError("manifest: no 'label' column; the model labeler needs each image's true class "
                          "(SemSim-layout names {id}_{label}_rec.png carry it, or add the column)")
    true = pd.to_numeric(manifest["label"], errors="coerce")
    if true.isna().any():
        row = manifest[true.isna()].iloc[0]
        raise SemsimError(f"image '{row['image_id']}' of set '{row['set']}': no class label; the model "
                          "labeler needs every image's true class")
    if len(manifest) == 0:
        raise SemsimError("manifest: no usable pairs to label")
    true_labels = true.to_numpy(dtype=np.int64)
    recognized = np.empty(len(manifest))
    chosen = np.empty(len(manifest), dtype=np.int64)
    paths = list(manifest["reconstruction"])
    bar = progress(total=len(paths), desc=f"labelling with {ev.name}", unit="image", enabled=show_progress)
    for start in range(0, len(paths), batch_size):
        arrays = read_arrays(paths[start:start + batch_size], workers=2)
        by_shape: dict[tuple, list[int]] = {}
        for j, arr in enumerate(arrays):
            by_shape.setdefault(arr.shape, []).append(j)
        for idx in by_shape.values():
            rows = np.asarray(idx) + start
            x = to_tensor([arrays[j] for j in idx]).to(device)
            out = recognition(ev, x, torch.from_numpy(true_labels[rows]).to(device), top_k=1)
            recognized[rows] = (out["prob"] if soft else out["correct"]).double().cpu().numpy()
            chosen[rows] = out["pred"].cpu().numpy()
        bar.update(len(arrays))
    bar.close()
    table = pd.DataFrame({
        "set": manifest["set"].astype(str).to_numpy(),
        "image_id": manifest["image_id"].astype(str).to_numpy(),
        "original": manifest["original"].to_numpy(),
        "reconstruction": manifest["reconstruction"].to_numpy(),
        "label": true_labels,
        "recognized": recognized,
        "n_judges": 1,
        "label_source": f"model:{ev.name}",
        "judge_1": chosen,
    })
    return validate_labels(table, where=f"labels by {ev.name}")
