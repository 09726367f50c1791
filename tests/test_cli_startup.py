"""A command imports its heavy dependencies only when it runs: help texts and the statistics-only commands
(analyze, calibrate, import-labels) never load torch; the torch-free name lists behind help texts stay right."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SHARED_DATA, synthetic

TORCH_LINE = re.compile(r"\|\s+torch(\.|\s*$)", re.MULTILINE)


def _importtime(*args: str) -> str:
    """stderr of ``python -X importtime -m semsim ARGS`` (one line per imported module)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "semsim", *args], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stderr


@pytest.mark.parametrize("args", [["--help"], ["analyze", "--help"], ["annotate", "--help"],
                                  ["calibrate", "--help"], ["score", "--help"], ["grid", "--help"]])
def test_help_imports_no_torch(args: list[str]) -> None:
    lines = _importtime(*args)
    assert "semsim.cli" in lines  # the report is real: it lists the modules imported
    assert not TORCH_LINE.search(lines), [m.group(0) for m in TORCH_LINE.finditer(lines)][:3]


def _run_without_torch(args: list[str], cwd: Path) -> None:
    """Run ``semsim ARGS`` in a fresh interpreter; fail if it exits non-zero or has imported torch."""
    code = ("import sys\nfrom semsim.cli import main\nsys.argv = ['semsim', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    status = exc.code\nelse:\n    status = 0\n"
            "print('TORCH LOADED' if 'torch' in sys.modules else 'no torch')\nsys.exit(status)\n")
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.strip().endswith("no torch"), run.stdout[-500:]


def test_statistics_commands_never_import_torch(tmp_path: Path) -> None:
    scores, labels = synthetic(n_sets=4, n=30)
    scores[["set", "image_id", "psnr", "mse"]].to_csv(tmp_path / "scores.csv", index=False)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    _run_without_torch(["analyze", "scores.csv", "--labels", "labels.csv", "--out", "report", "--bootstrap", "0"],
                       tmp_path)
    assert (tmp_path / "report" / "report.html").is_file()
    _run_without_torch(["calibrate", "scores.csv", "--labels", "labels.csv", "--metrics", "psnr", "--out",
                        "cal.json"], tmp_path)
    assert (tmp_path / "cal.json").is_file()
    table = SHARED_DATA / "cifar100_human_labels" / "labels.csv"
    if not table.is_file():
        pytest.skip(f"{table} is absent: import-labels not checked")
    _run_without_torch(["import-labels", str(table), "--out", "imported"], tmp_path)
    assert (tmp_path / "imported" / "scores.csv").is_file()


def test_help_name_lists_match_the_library() -> None:
    from semsim.analysis.evaluate_semsim import BASELINES
    from semsim.attacks import list_attacks
    from semsim.cli import choices
    from semsim.demo import DemoConfig
    from semsim.models import ARCHITECTURES

    assert choices.ATTACKS == tuple(list_attacks())
    assert choices.ARCHITECTURES == tuple(ARCHITECTURES)
    assert choices.EVALUATE_BASELINES == tuple(BASELINES)
    assert choices.DEMO_N_IMAGES == DemoConfig.n_images


def test_builtin_metric_list_matches_the_metric_modules() -> None:
    """The registry lists built-in metrics without importing them: its classes, weight file names and the
    MS-SSIM size limit must be those of the modules."""
    from semsim.metrics import fid, lpips, pixel
    from semsim.metrics.registry import BUILTIN_METRICS, SetMetric

    for info in BUILTIN_METRICS:
        module, _, attr = str(info.factory).partition(":")
        cls = getattr(__import__(module, fromlist=[attr]), attr)
        if info.level == "set":
            assert all(callable(getattr(cls, m, None)) for m in ("reset", "update", "compute")), info.name
            assert issubclass(cls, SetMetric), info.name
    described = {m.name: m.description for m in BUILTIN_METRICS}
    assert f"at least {pixel.ms_ssim_min_size()}px" in described["ms_ssim"]
    assert fid.INCEPTION_FILES[0] in described["fid"]
    for net in ("alex", "vgg", "squeeze"):
        assert lpips.BACKBONE_FILES[net][0] in described[f"lpips_{net}"]


def test_importing_one_metric_loads_only_its_module() -> None:
    code = ("import json, sys\nfrom semsim.metrics import psnr\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('semsim'))))\n"
            "print('sklearn' in sys.modules, 'pandas' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded, heavy = run.stdout.splitlines()
    assert json.loads(loaded) == ["semsim", "semsim.common", "semsim.common.lazy", "semsim.errors", "semsim.metrics",
                            "semsim.metrics.pixel", "semsim.metrics.registry"], loaded
    assert heavy == "False False"
