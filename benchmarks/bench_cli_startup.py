"""Benchmark of CLI start-up: `semsim --help` (and two sub-commands' help) against a bare `import typer`.

Every command imports its heavy dependencies (torch, pandas, ...) only when it runs, so printing help costs
little more than Python and typer. Each command is run --repeat times in a fresh interpreter, interleaved so
that machine load hits all of them alike; the table gives the best wall time and its ratio to `import typer`
(the target of issue 12: at most 3x), and whether torch was imported (from `python -X importtime`).

    .venv/bin/python benchmarks/bench_cli_startup.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

COMMANDS = {
    'python -c "import typer"': [sys.executable, "-c", "import typer"],
    "semsim --help": [sys.executable, "-m", "semsim", "--help"],
    "semsim analyze --help": [sys.executable, "-m", "semsim", "analyze", "--help"],
    "semsim annotate --help": [sys.executable, "-m", "semsim", "annotate", "--help"],
}
TORCH = re.compile(r"\|\s+torch(\.|\s*$)", re.MULTILINE)


def wall(cmd: list[str]) -> float:
    """Seconds for one run of ``cmd`` (output discarded)."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def imports_torch(cmd: list[str]) -> bool:
    """Whether ``cmd`` (a Python command line) imports torch, read off ``-X importtime``."""
    run = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, check=True)
    return bool(TORCH.search(run.stderr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for cmd in COMMANDS.values():  # warm the file cache (and compile .pyc files) before timing
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, cmd in COMMANDS.items():
            times[name].append(wall(cmd))
    base = min(times['python -c "import typer"'])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"best of {args.repeat}, {os.cpu_count()} CPUs, load average {load:.1f}")
    print("| command | best wall (s) | vs `import typer` | imports torch |")
    print("|---|---:|---:|---|")
    for name, cmd in COMMANDS.items():
        best = min(times[name])
        print(f"| `{name}` | {best:.3f} | {best / base:.2f}x | {'yes' if imports_torch(cmd) else 'no'} |")


if __name__ == "__main__":
    main()
