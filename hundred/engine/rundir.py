"""Run directories: ``runs/<track>/<method>/<name>/`` with everything a run did.

* ``config.yaml`` — the resolved configuration (re-runnable with ``--config``);
* ``env.json`` — package, torch and timm versions, git commit, device, seeds;
* ``metrics.jsonl`` — one JSON object per epoch/evaluation;
* ``summary.json`` — final metrics, wall time, images/s;
* ``checkpoints/`` — see :mod:`hundred.engine.checkpoint`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from hundred.errors import HundredError
from hundred.io import atomic_open


def new_run_dir(root: str | Path, track: str, method: str, name: str | None,
                default_name: str) -> Path:
    """Create a fresh run directory. An explicit ``name`` that exists is an error; a generated
    one gets a numeric suffix. A run never writes into another run's directory."""
    parent = Path(root) / track / method
    parent.mkdir(parents=True, exist_ok=True)
    if name is not None:
        path = parent / name
        try:
            path.mkdir()
        except FileExistsError:
            raise HundredError(f"run directory {path} exists; pick another --name, "
                               f"or continue it with --resume {path}") from None
        return path
    for suffix in range(10_000):
        path = parent / (default_name if suffix == 0 else f"{default_name}-{suffix}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise HundredError(f"could not find a free run directory name under {parent}")


def git_commit() -> str | None:
    """The commit of the hundred checkout, if it is one (None for an installed package)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str, seed: int, world_size: int = 1) -> dict[str, Any]:
    """What produced a run: versions, commit, device, seed."""
    import numpy
    import timm
    import torch

    import hundred

    info: dict[str, Any] = {
        "hundred": hundred.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": numpy.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "git_commit": git_commit(), "device": device,
        "seed": seed, "world_size": world_size, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(path: Path, keep: Any) -> None:
    """Keep only the records for which ``keep(record)`` is true (used when resuming, so
    records written after the last checkpoint are dropped and written again)."""
    records = [r for r in read_jsonl(path) if keep(r)]
    with atomic_open(path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
