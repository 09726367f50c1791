"""Labels in: every source of recognizability labels becomes one label table (docs/contracts.md, section 3).

Sources understood by :func:`load_labels`:

* the SemSim paper's release layout (Sun et al., NeurIPS 2023): ``train_with_ori/N/`` holds the original of
  image N (``*_ori.png``) and the reconstructions of N that people recognized, ``train_with_ori/-N/`` the ones
  they did not; an optional ``others/`` folder holds further images that are used only as negatives;
* a label table (CSV/Parquet), including the annotation app's export, which writes the same table. Its
  ``original``/``reconstruction`` paths are resolved against the table's folder; when it has none, the paths
  come from manifests joined on ``(set, image_id)``.

The result is a validated label table with absolute paths and an ``original_id`` column (which original a row
belongs to; ``image_id`` unless the source says otherwise). Rows of ``others/`` have no original.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from semsim.common.io import TABLE_SUFFIXES, read_table
from semsim.data.images import IMAGE_SUFFIXES
from semsim.data.labels import validate_labels
from semsim.data.sets import read_manifest, resolve_paths
from semsim.errors import SemsimError

RELEASE_ROOT = "train_with_ori"
OTHERS = "others"
INDEX = "index.csv"  # optional, beside train_with_ori/: set, image_id, file, recognized, n_judges per file
DEFAULT_RELEASE_SOURCE = "import:semsim-release"


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _is_release_folder(folder: Path) -> bool:
    subs = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    loose = any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
    return bool(subs) and not loose


def read_release(
    folder: str | os.PathLike, *, set_name: str | None = None, label_source: str = DEFAULT_RELEASE_SOURCE
) -> pd.DataFrame:
    """Read the SemSim release layout (``train_with_ori/N/``, ``-N/``, ``others/``) into a label table.

    A reconstruction in ``N/`` counts as recognized (``recognized = 1``), one in ``-N/`` as not (``0``);
    ``n_judges`` is 0 because the layout keeps only the decision. ``image_id`` is ``N/<file stem>`` (one row
    per reconstruction), ``original_id`` is ``N``. The labels are ``import:semsim-release`` unless told
    otherwise.
    """
    folder = Path(folder)
    if (folder / RELEASE_ROOT).is_dir():
        folder = folder / RELEASE_ROOT
    if not folder.is_dir() or not _is_release_folder(folder):
        raise SemsimError(
            f"{folder}: not in the SemSim release layout (subfolders N/, -N/ and optionally "
            f"{OTHERS}/); give the {RELEASE_ROOT} folder or a label table"
        )
    set_name = set_name or folder.name
    groups: dict[str, dict[str, list[Path]]] = {}
    for sub in sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name != OTHERS and not p.name.startswith(".")
    ):
        key = sub.name.lstrip("-")
        kind = "unrecognized" if sub.name.startswith("-") else "recognized"
        groups.setdefault(key, {"recognized": [], "unrecognized": [], "ori": []})
        for path in _images(sub):
            groups[key]["ori" if path.stem.endswith("_ori") else kind].append(path)
    rows = []
    for key, g in groups.items():
        if len(g["ori"]) != 1:
            what = "no" if not g["ori"] else f"{len(g['ori'])}"
            raise SemsimError(
                f"{folder / key}: {what} '*_ori' image(s) for original {key}; each original needs "
                "exactly one, in N/ or -N/"
            )
        for kind, share in (("recognized", 1.0), ("unrecognized", 0.0)):
            for path in g[kind]:
                rows.append(
                    {
                        "set": set_name,
                        "image_id": f"{key}/{path.stem}",
                        "original_id": key,
                        "original": str(g["ori"][0].resolve()),
                        "reconstruction": str(path.resolve()),
                        "recognized": share,
                        "n_judges": 0,
                        "label_source": label_source,
                    }
                )
    if (folder / OTHERS).is_dir():
        for path in _images(folder / OTHERS):
            rows.append(
                {
                    "set": set_name,
                    "image_id": f"{OTHERS}/{path.stem}",
                    "original_id": None,
                    "original": None,
                    "reconstruction": str(path.resolve()),
                    "recognized": 0.0,
                    "n_judges": 0,
                    "label_source": label_source,
                }
            )
    if not any(r["original"] for r in rows):
        raise SemsimError(f"{folder}: no reconstructions found next to the originals; check the layout")
    df = pd.DataFrame(rows)
    index = folder.parent / INDEX
    if index.is_file():  # written by `semsim annotate export`: the real set names and judges' shares
        known = read_table(index, required=("set", "image_id", "file", "recognized", "n_judges"))
        known.index = [str((folder.parent / f).resolve()) for f in known["file"]]
        hit = df["reconstruction"].isin(known.index)
        for col in ("set", "image_id", "recognized", "n_judges"):
            df.loc[hit, col] = known.loc[df.loc[hit, "reconstruction"], col].to_numpy()
    return validate_labels(df, where=str(folder))


def read_label_table(path: str | os.PathLike, manifests: Sequence[str | os.PathLike] = ()) -> pd.DataFrame:
    """Read a label table (CSV/Parquet or the annotation app's export) and give every row its image paths."""
    path = Path(path)
    df = validate_labels(read_table(path), where=str(path))
    has_paths = {"original", "reconstruction"} <= set(df.columns) and df["reconstruction"].notna().all()
    if has_paths:
        df = resolve_paths(df, path.parent)
    else:
        if not manifests:
            raise SemsimError(
                f"{path}: the label table has no original/reconstruction paths; pass the sets' "
                "manifests (--manifest) to join them on (set, image_id)"
            )
        man = pd.concat([read_manifest(m) for m in manifests], ignore_index=True)
        man = man[["set", "image_id", "original", "reconstruction"]]
        df = df.drop(columns=[c for c in ("original", "reconstruction") if c in df.columns])
        df = df.merge(man, on=["set", "image_id"], how="left")
        missing = df["reconstruction"].isna()
        if missing.any():
            row = df[missing].iloc[0]
            raise SemsimError(
                f"{path}: image '{row['image_id']}' of set '{row['set']}' is in no manifest given; "
                "pass the manifest of that set"
            )
    if "original_id" not in df.columns:
        df["original_id"] = df["image_id"]
    df["original_id"] = df["original_id"].where(df["original"].notna(), None)
    return df


def load_labels(
    sources: Sequence[str | os.PathLike],
    *,
    manifests: Sequence[str | os.PathLike] = (),
    label_source: str | None = None,
    set_name: str | None = None,
) -> pd.DataFrame:
    """Load and concatenate label sources (release-layout folders, label tables) into one label table.

    ``label_source`` overrides the source recorded for release-layout folders (e.g. ``human:semsim-paper``
    when you know the folder holds the paper's human labels); tables keep their own ``label_source`` column.
    """
    if not sources:
        raise SemsimError(
            "no label source given; pass --labels with a label table or a release-layout folder"
        )
    frames = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            frames.append(
                read_release(src, set_name=set_name, label_source=label_source or DEFAULT_RELEASE_SOURCE)
            )
        elif src.suffix.lower() in TABLE_SUFFIXES:
            frames.append(read_label_table(src, manifests))
        else:
            raise SemsimError(
                f"{src}: not a label table (.csv/.parquet) nor a folder in the SemSim release "
                "layout; check the path"
            )
    df = pd.concat(frames, ignore_index=True)
    df = validate_labels(df, where="labels (" + ", ".join(str(s) for s in sources) + ")")
    return df.reset_index(drop=True)


def is_human(source: str) -> bool:
    """Whether a ``label_source`` names human judges (``human:<study>``)."""
    return str(source).startswith("human:")
