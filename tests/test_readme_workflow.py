"""The README's command-line workflow runs top to bottom as written, on the bundled digits, at smaller sizes.

The lines are read from README.md itself, so the README cannot drift from what works. Only sizes are made
smaller (epochs, images, iterations); every other option is used as printed. The grid step is left out: it
runs on the real CIFAR-10 images from the repository's root, and tests/test_grid_*.py cover it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pandas as pd
import pytest

from helpers import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"
# the only values changed from the README, per command (the evaluator keeps its epochs: it must recognize digits)
SMALLER = {"train-victim": {"--epochs": "1"}, "attack": {"--n": "12", "--iterations": "150"},
           "train": {"--epochs": "2"}, "evaluate": {"--epochs": "2"}}
N = 12


def workflow_commands() -> list[list[str]]:
    """The ``semsim`` commands of the README's workflow block, in order, as argument lists (without 'semsim')."""
    text = README.read_text()
    section = text[text.index("## The workflow on the command line"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    commands = []
    for line in block.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line.strip())
        if not line or line.startswith("#"):
            continue
        for part in line.split("&&"):
            args = shlex.split(part)
            assert args[0] == "semsim", part
            commands.append(args[1:])
    return commands


def _smaller(args: list[str]) -> list[str]:
    values = SMALLER.get(args[0], {})
    return [values.get(args[i - 1], a) if i else a for i, a in enumerate(args)]


@pytest.mark.slow
def test_readme_workflow_runs_as_written(tmp_path, monkeypatch, capsys, one_thread):
    commands = workflow_commands()
    assert [c[0] for c in commands][:4] == ["train-victim", "train-evaluator", "attack", "attack"]
    monkeypatch.chdir(tmp_path)
    ran = []
    for args in commands:
        if args[0] == "grid":
            continue
        code, out, err = run_cli(_smaller(args), monkeypatch, capsys)
        assert code == 0, f"semsim {' '.join(args)} failed:\n{err}"
        assert "Traceback" not in err
        ran.append(args[0] if args[0] != "annotate" else f"annotate {args[1]}")
    assert "estimate" in ran and ran.count("score") == 3
    # the set names are the sets' own (from their manifests) in every table, so every join keeps every row
    scores = pd.read_parquet("scores-semsim.parquet")
    labels = pd.read_csv("labels.csv", dtype={"image_id": str})
    assert len(scores) == len(labels) == 2 * N
    assert set(scores["set"]) == set(labels["set"]) == {"digits/convnet/crop/none/invgrad-150",
                                                         "digits/convnet/crop/grad-noise-1e-2/invgrad-150"}
    assert len(scores.merge(labels, on=["set", "image_id"])) == len(labels)
    calibrated = pd.read_parquet("calibrated.parquet")
    assert calibrated["p_recognized"].between(0, 1).all()
    assert Path("report/report.html").is_file() and Path("eval/evaluation.csv").is_file()
