"""Phase 2 of the tune-then-evaluate protocol: ``hundred evaluate`` — train with the frozen
best parameters of a study on a *different* dataset with the same scenario, over seeds.

Cha & Cho ("Hyperparameters in Continual Learning: a Reality Check", TMLR 2025) report only
this phase's numbers. What keeps it honest here:

* the configuration is the study's fixed settings (same scenario, model, memory ...) with the
  evaluation data swapped in and the tuned parameters applied; ``--config``/``--set`` may
  change other settings but not a tuned parameter nor the scenario;
* the evaluation data must not be the tuning data: the same source with overlapping classes
  is refused before anything runs, and each run refuses to train on data whose fingerprint
  is the tuning data's (:func:`hundred.engine.run.load_data`);
* every run records ``protocol: tune-then-evaluate, phase: evaluation``, ``tuned_on``, the
  tuning data's fingerprint and the tuned parameters (config.yaml and summary.json);
* runs are named from their settings and seed, so evaluating again reuses finished runs and
  resumes a killed one instead of training twice.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console

from hundred.config import (DataConfig, RunConfig, apply_overrides, build_config,
                            format_classes, parse_classes, read_yaml, with_values)
from hundred.errors import HundredError
from hundred.protocol import space as spaces
from hundred.protocol.tune import PROTOCOL, BestParams, _captured, slug
from hundred.registry import get_track

if TYPE_CHECKING:
    from hundred.engine.method import Method


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys += _flatten(value, path + ".") if isinstance(value, dict) and value else [path]
    return keys


def _user_keys(files: Sequence[str | Path], overrides: Sequence[str]) -> list[str]:
    """Every dotted key the user's files and ``--set`` options touch."""
    tree: dict[str, Any] = {}
    for file in files:
        tree.update(read_yaml(file))
    return _flatten(apply_overrides(tree, list(overrides)))


def _lookup(tree: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` of a nested mapping (None where a level is missing)."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_disjoint(tuning: DataConfig, tuned_on: str, evaluation: DataConfig) -> None:
    """Refuse evaluation data drawn from the tuning data's source with shared classes.

    Without a class selection a dataset holds all its classes, so the same source without
    ``classes`` on either side always overlaps. Different sources pass here; a copy of the
    tuning data under another path is caught by the fingerprint check when it loads."""
    if evaluation.source != tuning.source:
        return
    if evaluation.classes is None or tuning.classes is None:
        raise HundredError(f"evaluation data {evaluation.label} and tuning data {tuned_on} come "
                           f"from one source and one of them holds all its classes; select "
                           "class-disjoint halves, e.g. synth100[0-49] vs synth100[50-99]")
    shared = sorted(set(parse_classes(evaluation.classes)) & set(parse_classes(tuning.classes)))
    if shared:
        raise HundredError(f"evaluation data {evaluation.label} shares classes "
                           f"{format_classes(shared)} with the tuning data {tuned_on}; "
                           "the evaluation phase must not see the tuning data")


def check_frozen(tuned_keys: Sequence[str], files: Sequence[str | Path],
                 overrides: Sequence[str], study: str) -> None:
    """Refuse ``--config``/``--set`` keys that a study tunes: evaluation uses frozen values."""
    tuned = set(tuned_keys)
    clashes = [key for key in _user_keys(files, overrides)
               if any(key == t or key.startswith(t + ".") or t.startswith(key + ".") for t in tuned)]
    if clashes:
        raise HundredError(f"{', '.join(clashes)}: tuned by {study}; the evaluation phase uses "
                           "the frozen value (edit the best-parameters file to change it)")


def evaluation_config(best: BestParams, data: str, files: Sequence[str | Path] = (),
                      overrides: Sequence[str] = (), root: str | None = None,
                      device: str | None = None) -> RunConfig:
    """The config of every evaluation run (seed 0; :func:`evaluate` sets each seed)."""
    check_frozen(list(best.params), files, overrides, f"study {best.study}")
    raw = copy.deepcopy(best.fixed)
    evaluation_data = DataConfig.model_validate({"source": data})
    if evaluation_data.source != best.tuning_data.source:
        raw["data"]["options"] = {}  # a source's options belong to that source
    raw["data"]["source"], raw["data"]["classes"] = evaluation_data.source, evaluation_data.classes
    raw["track"], raw["method"] = best.track, best.method
    if root is None:  # next to the tuning runs: <root>/<track>/<method>/<run>
        parents = Path(best.best_run_dir).parents
        root = str(parents[2]) if len(parents) > 3 else None
    given = [f"root={json.dumps(root)}"] if root is not None else []
    given += [f"train.device={device}"] if device is not None else []
    config = build_config(list(files), given + list(overrides), base=raw)
    track = get_track(best.track)
    dumped = config.model_dump(mode="json")
    for key, reason in track.protocol_fixed.items():
        if _lookup(dumped, key) != _lookup(best.fixed, key):
            raise HundredError(f"the evaluation phase keeps {key} as it was tuned ({reason}); "
                               f"drop the {key}.* overrides")
    tuning = DataConfig.model_validate({"source": best.tuning_data.source,
                                        "classes": best.tuning_data.classes})
    check_disjoint(tuning, best.tuned_on, config.data)
    config = spaces.apply(config, best.params, origin=f"tuned parameters of {best.study}")
    return with_values(config, {"provenance": {
        "protocol": PROTOCOL, "phase": "evaluation", "study": best.study,
        "tuned_on": best.tuned_on, "tuning_fingerprint": best.tuning_data.fingerprint,
        "tuned_params": best.params}})


def evaluate(best: BestParams, data: str, seeds: Sequence[int], files: Sequence[str | Path] = (),
             overrides: Sequence[str] = (), root: str | None = None, device: str | None = None,
             verbose: bool = False, console: Console | None = None,
             method: "type[Method] | None" = None) -> list[dict[str, Any]]:
    """Train ``best.method`` with ``best.params`` on ``data`` once per seed; returns the
    summaries (finished runs of the same settings and seed are reused, killed ones resumed).
    ``method`` is the method's class when the caller has resolved it already."""
    from hundred.engine.run import settings_digest

    if not seeds:
        raise HundredError("give at least one seed")
    console = console or Console(stderr=True)
    track = get_track(best.track)
    method = method or track.method_class(best.method)
    config = evaluation_config(best, data, files, overrides, root, device)
    method(config.method_params, config)  # the method validates its params before any run
    tag = settings_digest(config)[:8]
    summaries = []
    for seed in seeds:
        name = f"eval-{slug(config.data.label)}-{tag}-s{seed}"
        run = with_values(config, {"seed": seed, "name": name,
                                   "quiet": config.quiet or not verbose})
        run_dir = Path(run.root) / run.track / run.method / name
        if (run_dir / "summary.json").is_file():
            console.print(f"[evaluate {run.method}] seed {seed}: already done ({run_dir})",
                          highlight=False, markup=False)
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
            continue
        resume = run_dir if (run_dir / "config.yaml").is_file() else None
        with _captured(not verbose) as output:
            try:
                summary = track.run(run, resume, method(run.method_params, run))
            finally:
                if output is not None and run_dir.is_dir():
                    log = run_dir / "console.log"
                    with open(log, "a", encoding="utf-8") as handle:
                        handle.write(output.getvalue())
        console.print(f"[evaluate {run.method}] seed {seed} on {summary['data']}: "
                      f"{track.primary.key} {summary[track.primary.key]:.2f} "
                      f"({run_dir})", highlight=False, markup=False)
        summaries.append(summary)
    return summaries
