"""The forget set: which rows of the train split a run forgets, how it is stored in the run
directory (``forget_indices.npy``: sorted int64 row numbers of the train split, a plain
array) and how a later run reads it back (``unlearn.forget_from``, ``unlearn.reference``).

Every check happens before the caller creates its run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hundred.errors import HundredError

FORGET_FILE = "forget_indices.npy"


def forget_count(fraction: float, train_size: int) -> int:
    """round(fraction x N) samples, at least 1; HundredError when nothing would be left."""
    count = max(1, int(round(fraction * train_size)))
    if count >= train_size:
        raise HundredError(f"unlearn.forget_fraction={fraction} forgets {count} of "
                           f"{train_size} train images: nothing would be retained")
    return count


def random_forget_set(train_size: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct rows of ``0..train_size-1``, uniformly drawn from ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train_size, count, replace=False)).astype(np.int64)


def retain_rows(forget: np.ndarray, train_size: int) -> np.ndarray:
    """Every row of the train split that is not in ``forget``, sorted."""
    keep = np.ones(train_size, dtype=bool)
    keep[forget] = False
    return np.flatnonzero(keep).astype(np.int64)


def save_forget_set(run_dir: Path, forget: np.ndarray) -> None:
    from hundred.io import atomic_open

    with atomic_open(run_dir / FORGET_FILE, "wb") as handle:
        np.save(handle, np.asarray(forget, dtype=np.int64), allow_pickle=False)


def read_forget_set(run_dir: Path, role: str, train_size: int,
                    fingerprint: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The forget set of the finished unlearn run ``run_dir`` and its summary, checked: a
    plain int array of distinct rows below ``train_size``, from a run on the same data (its
    ``data_fingerprint`` equals ``fingerprint``). ``role`` starts every error message."""
    summary_path, path = run_dir / "summary.json", run_dir / FORGET_FILE
    if not summary_path.is_file() or not path.is_file():
        raise HundredError(f"{role} {run_dir} is not a finished unlearn run (it needs "
                           f"summary.json and {FORGET_FILE})")
    try:
        summary = json.loads(summary_path.read_text())
        forget = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise HundredError(f"{role} {run_dir}: unreadable ({error})") from None
    if not isinstance(summary, dict) or summary.get("track") != "unlearn":
        raise HundredError(f"{role} {run_dir} is not an unlearn run")
    if (forget.ndim != 1 or forget.dtype.kind not in "iu" or len(forget) == 0
            or len(np.unique(forget)) != len(forget) or forget.min() < 0
            or forget.max() >= train_size):
        raise HundredError(f"{role} {path}: not a set of distinct rows of this train split "
                           f"({train_size} images)")
    if fingerprint is not None and summary.get("data_fingerprint") not in (None, fingerprint):
        raise HundredError(f"{role} {run_dir} forgot rows of other data (its data fingerprint "
                           "differs from this run's): give a run on the same data")
    return np.sort(forget.astype(np.int64)), summary
