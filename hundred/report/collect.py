"""Find the ``summary.json`` of every run below some paths, and keep only the well-formed ones.

A report is only as honest as its inputs, so every summary is checked before it is counted:
a file that is not JSON, lacks a key the report needs, or holds a non-number where a metric
belongs is skipped with a warning that names the file, instead of crashing the report or,
worse, silently shifting a mean.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

from hundred.config import RESULT_NEUTRAL_KEYS
from hundred.errors import HundredError
from hundred.track import ACCURACY_REPORT, ReportSpec, StepSeries

SUMMARY_NAME = "summary.json"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"  # the trainer's per-epoch records
# config keys that never change results (the settings digest ignores them too)
CONFIG_IGNORED = RESULT_NEUTRAL_KEYS
DEFAULT_PROTOCOL = "conventional"
TUNING_SUFFIX = " (tuning trials)"

Warn = Callable[[str], None]


def print_warning(message: str) -> None:
    """The default warning sink: one line on stderr (no traceback noise in the CLI)."""
    print(f"warning: {message}", file=sys.stderr)


def spec_for(track: str) -> ReportSpec:
    """The report spec the track declares (``Track.report``); validation accuracy for a
    summary whose track is not installed here."""
    from hundred.registry import get_track

    try:
        return get_track(track).report
    except HundredError:
        return ACCURACY_REPORT


def find_summaries(path: str | os.PathLike) -> list[Path]:
    """Every ``summary.json`` at or below ``path`` (a run directory, a parent folder, or the
    file itself), sorted. A missing path, or one without any summary, is a HundredError."""
    path = Path(path)
    if not path.exists():
        raise HundredError(f"run directory {path} does not exist")
    if path.is_file():
        if path.name != SUMMARY_NAME:
            raise HundredError(f"{path} is a file; give a run directory or its {SUMMARY_NAME}")
        return [path]
    found = [Path(root) / SUMMARY_NAME for root, _, files in os.walk(path) if SUMMARY_NAME in files]
    if not found:
        raise HundredError(f"no {SUMMARY_NAME} found in {path} or below it "
                           "(is it a run directory, or did the runs finish?)")
    return sorted(found)


def finite_number(value: Any) -> float | None:
    """A finite float, or None for anything else (null, NaN, text, booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _numbers(value: Any, allow_null: bool) -> list[float | None] | None:
    """A list of finite numbers (or nulls where allowed); None when ``value`` is not one."""
    if not isinstance(value, list):
        return None
    out = [finite_number(v) for v in value]
    for raw, num in zip(value, out):
        if num is None and not (allow_null and raw is None):
            return None
    return out


def _check_text(summary: dict[str, Any], key: str, optional: bool = False) -> None:
    value = summary.get(key)
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string, got {value!r}")


def _check_steps(summary: dict[str, Any], steps: StepSeries) -> None:
    """The per-step series and matrices the track's plots read: one value per step."""
    classes = summary.get(steps.steps)
    if not isinstance(classes, list) or not classes or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ValueError(f"{steps.steps!r} must be a non-empty list of integers")
    for key in (steps.curve, *steps.optional_curves):
        if key != steps.curve and summary.get(key) is None:
            continue
        values = _numbers(summary.get(key), allow_null=False)
        if values is None or len(values) != len(classes):
            raise ValueError(f"{key!r} must be a list of {len(classes)} numbers "
                             f"(one per entry of {steps.steps!r})")
    for key in (steps.matrix, *steps.optional_matrices):
        matrix = summary.get(key) if key else None
        if matrix is None:
            continue
        rows = matrix if isinstance(matrix, list) else []
        if len(rows) != len(classes) or any(
                _numbers(row, allow_null=True) is None or len(row) != len(classes) for row in rows):
            raise ValueError(f"{key!r} must be a {len(classes)}x{len(classes)} list of lists of "
                             "numbers or nulls")


def validate_summary(summary: Any) -> dict[str, Any]:
    """Check one parsed summary and return a normalised copy; ValueError says what is wrong.

    Normalisation fills the optional descriptors so grouping never meets a missing key:
    ``protocol`` (default ``"conventional"``; a tuning-phase trial's becomes
    ``"tune-then-evaluate (tuning trials)"`` so trials never mix with results), ``tuned_on``,
    ``scenario``, ``model``, the track's descriptors (``ReportSpec.descriptors``), ``settings`` (None when absent: a summary written
    before the engine recorded its settings digest) and ``data_fingerprint``.
    """
    if not isinstance(summary, dict):
        raise ValueError("not a JSON object")
    for key in ("track", "method", "data"):
        _check_text(summary, key)
    seed = summary.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"'seed' must be an integer, got {seed!r}")
    for key in ("protocol", "phase", "tuned_on", "scenario", "model", "settings",
                "data_fingerprint"):
        _check_text(summary, key, optional=True)
    if summary.get("tuned_params") is not None and not isinstance(summary["tuned_params"], dict):
        raise ValueError(f"'tuned_params' must be a mapping, got {summary['tuned_params']!r}")
    spec = spec_for(summary["track"])
    for key in spec.required:
        if finite_number(summary.get(key)) is None:
            problem = "missing" if key not in summary else f"not a finite number ({summary[key]!r})"
            raise ValueError(f"required metric {key!r} is {problem}")
    for metric in spec.metrics:
        value = summary.get(metric.key)
        if value is not None and finite_number(value) is None:
            raise ValueError(f"metric {metric.key!r} must be a finite number or null, got {value!r}")
    if spec.steps is not None:
        _check_steps(summary, spec.steps)
    normal = dict(summary)
    normal["protocol"] = summary.get("protocol") or DEFAULT_PROTOCOL
    if summary.get("phase") == "tuning" and not normal["protocol"].endswith(TUNING_SUFFIX):
        # a tuning trial's number is measured on the tuning data with candidate parameters:
        # never let it pass for a result of the protocol (Cha & Cho, TMLR 2025)
        normal["protocol"] += TUNING_SUFFIX
    for key in ("tuned_on", "scenario", "model", "settings", "data_fingerprint",
                *spec.descriptors):
        normal.setdefault(key, None)
    return normal


def load_summary(path: Path) -> dict[str, Any]:
    """Read and validate one summary; adds ``summary_path`` (where it was read from).

    ValueError on bad JSON or a bad schema (the message does not repeat the path)."""
    try:
        text = path.read_text(encoding="utf-8")
        parsed = json.loads(text)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"unreadable: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    summary = validate_summary(parsed)
    summary["summary_path"] = str(path)
    return summary


def collect_runs(paths: Iterable[str | os.PathLike], warn: Warn = print_warning,
                 skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Load every well-formed ``summary.json`` at or below ``paths``.

    Each returned dict is the summary, normalised (see :func:`validate_summary`), plus
    ``summary_path``. A file reached through two arguments is counted once. A malformed file
    is skipped: ``warn`` gets a message naming it and, when given, ``skipped`` collects the
    same message (so a report can list what it left out). Raises HundredError for a path that
    does not exist or holds no summary, and when nothing valid is left.
    """
    paths = list(paths)
    if not paths:
        raise HundredError("give at least one run directory")
    files: dict[Path, None] = {}  # insertion-ordered set, keyed by resolved path
    for path in paths:
        for file in find_summaries(path):
            files.setdefault(file.resolve(), None)
    runs: list[dict[str, Any]] = []
    for file in files:
        try:
            runs.append(load_summary(file))
        except ValueError as error:
            message = f"skipped {file}: {error}"
            warn(message)
            if skipped is not None:
                skipped.append(message)
    if not runs:
        raise HundredError(f"no valid {SUMMARY_NAME} in {', '.join(map(str, paths))} "
                           f"({len(files)} found, all malformed)")
    return runs


def load_run_config(run: dict[str, Any]) -> dict[str, Any] | None:
    """The ``config.yaml`` next to a run's summary, flattened to dotted keys
    (``{"optim.lr": 0.1, "data.options.noise": 0.2, ...}``) without the keys that never change
    results (:data:`CONFIG_IGNORED`: seed, run name, root, provenance, device...).

    None when the run has no readable config (a summary written elsewhere, a copied file, a
    broken YAML): the report then tells rows apart by their settings digest alone."""
    path = run.get("summary_path")
    if not path:
        return None
    try:
        raw = yaml.safe_load((Path(path).parent / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict):
        return None
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in CONFIG_IGNORED:
                continue
            if isinstance(value, dict):  # an empty section or option mapping sets nothing
                walk(value, f"{name}.")
            else:
                flat[name] = value

    walk(raw, "")
    return flat


def common_root(runs: Sequence[dict[str, Any]]) -> str:
    """The deepest folder that holds every run directory of ``runs`` (for provenance lines)."""
    dirs = [str(Path(run["summary_path"]).parent) for run in runs]
    try:
        return os.path.commonpath(dirs)
    except ValueError:  # different drives on Windows
        return ""


def load_epoch_records(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch records of the ``metrics.jsonl`` next to a run's summary (one JSON
    object a line, as the trainer writes them); [] when there is none. Lines that are not
    JSON objects (a line cut short by a crash) are skipped."""
    path = run.get("summary_path")
    if not path:
        return []
    try:
        lines = (Path(path).parent / METRICS_NAME).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass(frozen=True)
class Histogram:
    """One logged histogram (see :class:`~hundred.track.EpochHistogram`): equal-width bins
    over ``[low, high]`` and the counts of each series, all of the same length."""

    low: float
    high: float
    counts: dict[str, list[float]]

    @property
    def bins(self) -> int:
        return len(next(iter(self.counts.values())))


def parse_histogram(value: Any) -> Histogram | None:
    """``{"range": [low, high], "counts": {series: [n, ...]}}`` as a :class:`Histogram`; None
    when ``value`` is not one (a range that is not two increasing finite numbers, no series,
    series of different lengths, or counts that are not finite non-negative numbers)."""
    if not isinstance(value, dict):
        return None
    bounds = value.get("range")
    counts = value.get("counts")
    if not isinstance(bounds, list) or len(bounds) != 2 or not isinstance(counts, dict):
        return None
    low, high = (finite_number(b) for b in bounds)
    if low is None or high is None or not low < high or not counts:
        return None
    series: dict[str, list[float]] = {}
    for name, values in counts.items():
        numbers = _numbers(values, allow_null=False)
        if not numbers or any(n is None or n < 0 for n in numbers):
            return None
        series[str(name)] = [float(n) for n in numbers if n is not None]
    if len({len(v) for v in series.values()}) != 1:
        return None
    return Histogram(low, high, series)
