"""The label table (docs/contracts.md, section 3): who recognized which reconstruction.

Written by the annotation app, the model-based labeler and imports; read by SemSim training and the
faithfulness analysis. ``recognized`` is the share of judges who recognized the reconstruction; the majority
label is ``recognized > 0.5``. ``label_source`` is never blank: ``human:<study>``, ``model:<evaluator>`` or
``import:<origin>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from semsim.common.io import read_table, write_table
from semsim.errors import SemsimError

LABEL_COLUMNS = ("set", "image_id", "recognized", "n_judges", "label_source")
LABEL_SOURCE_KINDS = ("human", "model", "import")


def _shown(value: object) -> str:
    """A cell value as a user wrote it: ``1.7`` (not ``np.float64(1.7)``), ``'yes'``, or ``a blank``."""
    if pd.isna(value):
        return "a blank"
    return f"'{value}'" if isinstance(value, str) else f"{value}"


def validate_labels(df: pd.DataFrame, where: str = "label table") -> pd.DataFrame:
    """Check the contract; return a copy with normalised dtypes. Raises :class:`SemsimError` naming the fault."""
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise SemsimError(f"{where}: missing column(s) {', '.join(missing)}; a label table needs "
                          f"{', '.join(LABEL_COLUMNS)}")
    out = df.copy()
    for col in ("set", "image_id"):
        blank = out[col].isna() | out[col].astype(str).str.strip().eq("")
        if blank.any():
            raise SemsimError(f"{where}: row {int(blank.to_numpy().argmax()) + 1} has a blank '{col}'; every label "
                              f"needs its {col}: fill it in or delete the row")
        out[col] = out[col].astype(str)
    out["recognized"] = pd.to_numeric(out["recognized"], errors="coerce")
    bad = out["recognized"].isna() | (out["recognized"] < 0) | (out["recognized"] > 1)
    if bad.any():
        row = out[bad].iloc[0]
        raise SemsimError(f"{where}: 'recognized' must be a share in [0, 1]; image '{row['image_id']}' of set "
                          f"'{row['set']}' has {_shown(df.loc[row.name, 'recognized'])}")
    out["n_judges"] = pd.to_numeric(out["n_judges"], errors="coerce").fillna(0).astype(int)
    sources = out["label_source"].fillna("").astype(str)
    kinds = sources.str.split(":").str[0]
    bad = ~kinds.isin(LABEL_SOURCE_KINDS) | ~sources.str.contains(":")
    if bad.any():
        raise SemsimError(f"{where}: label_source {sources[bad].iloc[0]!r} is not of the form human:<study>, "
                          "model:<evaluator> or import:<origin>")
    if out.duplicated(["set", "image_id"]).any():
        row = out[out.duplicated(["set", "image_id"])].iloc[0]
        raise SemsimError(f"{where}: image '{row['image_id']}' of set '{row['set']}' is labelled twice")
    return out


def majority(df: pd.DataFrame) -> pd.Series:
    """The majority label: recognized by more than half of the judges."""
    return df["recognized"] > 0.5


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a label table (CSV or Parquet)."""
    return validate_labels(read_table(path), where=str(path))


def write_labels(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write a label table atomically."""
    return write_table(validate_labels(df, where=str(path)), path)


def label_sources(df: pd.DataFrame) -> list[str]:
    """The distinct label sources of a table, e.g. ``['model:evaluator-resnet18']``."""
    return sorted(df["label_source"].astype(str).unique())
