"""What the table scripts of this folder share: run the ``hundred`` command line, start or
resume one named run directory, and average over seeds. Runs are ordinary run directories
with fixed names, so a script run again skips finished runs and resumes a killed one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def hundred(*args: str) -> None:
    """Run the ``hundred`` command line (the installed one) and stop on failure."""
    command = [sys.executable, "-m", "hundred.cli", *args]
    result = subprocess.run(command)
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(command)}")


def run(out: Path, track: str, method: str, name: str, start_args: Sequence[str]
        ) -> tuple[Path, dict[str, Any]]:
    """The run ``out/track/method/name`` and its summary: skipped when finished, resumed
    with its stored config when killed, else started as ``hundred run track method --root
    out --name name *start_args``."""
    run_dir = out / track / method / name
    if not (run_dir / "summary.json").is_file():
        if (run_dir / "config.yaml").is_file():
            args = ["run", track, method, "--resume", str(run_dir)]
        else:
            args = ["run", track, method, "--root", str(out), "--name", name, *start_args]
        started = time.perf_counter()
        hundred(*args)
        print(f"{track}/{method}/{name}: {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def settings(overrides: Sequence[str]) -> list[str]:
    """``--set`` arguments for ``overrides``."""
    return [arg for override in overrides for arg in ("--set", override)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (NaN for one value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
