"""Run directories: ``runs/<track>/<method>/<name>/`` with everything a run did.

* ``config.yaml`` — the resolved configuration (re-runnable with ``--config``);
* ``env.json`` — package, torch and timm versions, git commit, device, seeds;
* ``metrics.jsonl`` — one JSON object per epoch/evaluation;
* ``summary.json`` — final metrics, wall time, images/s;
* ``checkpoints/`` — see :mod:`hundred.engine.checkpoint`;
* ``failed.json`` — only while the run is unfinished after an error: what stopped it.

A run directory always lies inside ``<root>/<track>/<method>/``: names are single path
components (checked by the config and again here).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hundred.config import check_run_name
from hundred.errors import HundredError
from hundred.io import atomic_open, write_json


FAILED = "failed.json"
SUMMARY = "summary.json"


def new_run_dir(root: str | Path, track: str, method: str, name: str | None,
                default_name: str) -> Path:
    """Create a fresh run directory. An explicit ``name`` that exists is an error that says
    whether that run finished, failed or was cut off, and how to continue or replace it; a
    generated name gets a numeric suffix. A run never writes into another run's directory."""
    parent = Path(root) / track / method
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HundredError(f"cannot create the run directory under {root}: "
                           f"{error.strerror or error}") from None
    if name is not None:
        try:
            check_run_name(name)
        except ValueError as error:
            raise HundredError(f"--name: {error}") from None
        path = parent / name
        try:
            path.mkdir()
        except FileExistsError:
            raise HundredError(describe_existing(path)) from None
        return path
    for suffix in range(10_000):
        path = parent / (default_name if suffix == 0 else f"{default_name}-{suffix}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise HundredError(f"could not find a free run directory name under {parent}")


def describe_existing(path: Path) -> str:
    """Why ``path`` cannot be a new run, and what the user can do instead."""
    if (path / SUMMARY).is_file():
        return (f"run directory {path} holds a finished run; pick another --name (or remove "
                "the directory yourself)")
    failed = path / FAILED
    reason = ""
    if failed.is_file():
        try:
            reason = f" (it failed: {json.loads(failed.read_text())['error']})"
        except (OSError, ValueError, KeyError, TypeError):
            reason = " (it failed)"
    return (f"run directory {path} holds an unfinished run{reason}; continue it with --resume "
            f"{path}, or start it again with --replace")


def remove_unfinished(path: Path) -> None:
    """Delete the unfinished run at ``path`` (``--replace``); a finished run (it has a
    ``summary.json``) is refused, so a result is never deleted by a flag."""
    if not path.exists():
        return
    if (path / SUMMARY).is_file():
        raise HundredError(f"--replace: {path} holds a finished run; it is kept (remove it "
                           "yourself, or pick another --name)")
    if not (path / "config.yaml").is_file():
        raise HundredError(f"--replace: {path} is not a run directory; it is kept")
    shutil.rmtree(path)


def mark_failed(run_dir: Path, error: BaseException) -> None:
    """Record in ``failed.json`` what stopped the run (removed again when it finishes)."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    write_json(run_dir / FAILED, {"error": message, "type": type(error).__name__,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


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
