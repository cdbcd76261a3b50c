"""``hundred xscore``: cross-dataset robustness of classifiers — every model trained on every
dataset under one fixed schedule, scored by the Cross-Dataset Score (xScore).

Paper: Weidong Zhang, Pak Lun Kevin Ding, Huan Liu, "Beyond ImageNet: Understanding
Cross-Dataset Robustness of Lightweight Vision Models", arXiv:2511.00335 (2025); journal
version "xScore: A Simple Metric for Cross-Domain Robustness in Lightweight Vision Models",
Algorithms 19(1):14 (2026).

What the paper states (read in its abstracts): 11 lightweight models are trained "under a fixed
100-epoch schedule across 7 diverse datasets"; xScore is "a simple metric that captures both
average accuracy across domains and the stability of model rankings"; it can be estimated from
just four datasets; ImageNet accuracy does not reliably predict accuracy on other domains.

What is ASSUMED here: the paper's equation for xScore (its Sec. 3) could not be read where this
was written, so its equation number is not cited and this module implements the form the
abstract describes, with the stability term made explicit:

    xScore_m = mean_d A[m, d]  -  lambda * std_d P[m, d]

``A[m, d]`` is model m's top-1 (%) on dataset d; ``P[m, d] = 100 (rank[m, d] - 1) / (M - 1)``
is its rank among the M models on d as a percentile (0 = best, 100 = worst, ties share their
mean rank), so both terms are on the percent scale; ``std`` is the population standard
deviation over the D datasets; ``lambda`` is :class:`XScoreParams.rank_weight` (1 unless set).
Properties of this form (tested): xScore <= the mean accuracy, with equality exactly when the
model holds one rank on every dataset; xScore >= mean - 50 lambda; with one model it is the
mean; it does not depend on the order of models or datasets; adding a constant c to every
model's accuracy on one dataset shifts every xScore by c / D and leaves the ranking alone.
Replace :func:`xscore` when the paper's exact equation is confirmed.

The sweep is the paper's protocol at any scale: the classify track's ``erm`` method, one config
for every cell except the model and the data (``--set``/``--config`` may change the schedule,
never a cell's model, data, epochs or seed). Each cell is an ordinary run directory named from
(model, data, seed) under ``--out``: running the same command again reuses finished cells whose
settings match, resumes an interrupted cell from its checkpoint, and refuses a cell trained with
other settings rather than mixing results.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table as RichTable

from hundred.config import DataConfig, RunConfig, build_config
from hundred.errors import HundredError
from hundred.io import write_json, write_text
from hundred.terminal import table_console

TRACK_NAME, METHOD = "classify", "erm"
PAPER = ("Zhang, Ding & Liu, \"Beyond ImageNet: Understanding Cross-Dataset Robustness of "
         "Lightweight Vision Models\", arXiv:2511.00335 (2025)")
DEFINITION = ("xScore = mean top-1 over datasets - rank_weight * std over datasets of the "
              "model's rank percentile (0 best .. 100 worst); the paper's exact equation was "
              "not verified (see hundred/tracks/classify/xscore.py)")
# what the sweep sets per cell: --set/--config may not touch these
CELL_KEYS = ("track", "method", "name", "root", "seed", "model.name", "data.source",
             "data.classes", "data.options", "train.epochs")


class XScoreParams(BaseModel):
    """The metric's one setting."""

    model_config = ConfigDict(extra="forbid")
    rank_weight: float = Field(1.0, ge=0, description="lambda: weight of the rank-stability "
                               "penalty (std of rank percentiles), 0 = mean accuracy only")


# -- the score -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelScore:
    """One model's row: mean top-1, the spread of its rank percentiles, and xScore."""

    model: str
    mean_top1: float
    rank_std: float
    xscore: float
    ranks: tuple[float, ...]  # rank on each dataset, 1 = best (ties share the mean rank)


def rank_percentiles(accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ranks, percentiles)`` of an ``M x D`` accuracy matrix, per dataset (column): rank 1 is
    the most accurate model, ties share their mean rank; percentile = 100 (rank-1)/(M-1), all
    0 for a single model."""
    from scipy.stats import rankdata

    accuracy = np.asarray(accuracy, dtype=float)
    ranks = rankdata(-accuracy, method="average", axis=0)
    models = accuracy.shape[0]
    percentiles = np.zeros_like(ranks) if models < 2 else 100.0 * (ranks - 1) / (models - 1)
    return ranks, percentiles


def xscore(accuracy: Mapping[str, Mapping[str, float]],
           params: XScoreParams | None = None) -> list[ModelScore]:
    """xScore of every model from ``accuracy[model][data]`` (top-1, %); every model needs the
    same datasets. Rows come in the models' order (see the module docstring for the form)."""
    params = params or XScoreParams()
    models = list(accuracy)
    if not models:
        raise HundredError("xScore needs at least one model")
    datasets = list(accuracy[models[0]])
    if not datasets:
        raise HundredError("xScore needs at least one dataset")
    for model in models:
        if sorted(accuracy[model]) != sorted(datasets):
            raise HundredError(f"model {model} has results on {sorted(accuracy[model])}, "
                               f"expected {sorted(datasets)}")
    matrix = np.array([[float(accuracy[m][d]) for d in datasets] for m in models])
    if not np.isfinite(matrix).all():
        raise HundredError("xScore needs finite accuracies")
    ranks, percentiles = rank_percentiles(matrix)
    means, spreads = matrix.mean(axis=1), percentiles.std(axis=1)
    return [ModelScore(m, float(means[i]), float(spreads[i]),
                       float(means[i] - params.rank_weight * spreads[i]),
                       tuple(float(r) for r in ranks[i])) for i, m in enumerate(models)]


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho between two per-model series; ``rho`` None when undefined."""

    rho: float | None
    p_value: float | None
    models: int
    note: str

    def describe(self) -> str:
        return (f"{self.rho:+.3f} (p={self.p_value:.3g}, {self.models} models)"
                if self.rho is not None else f"undefined ({self.note})")


def spearman(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Spearman's rank correlation (scipy.stats.spearmanr) of ``x`` and ``y``; undefined for
    fewer than 3 models or when either series is constant."""
    from scipy.stats import spearmanr

    if len(x) != len(y):
        raise ValueError("spearman: series of different lengths")
    if len(x) < 3:
        return Correlation(None, None, len(x), f"{len(x)} model{'s' * (len(x) != 1)}; "
                                                "a rank correlation needs at least 3")
    if np.ptp(np.asarray(x, float)) == 0 or np.ptp(np.asarray(y, float)) == 0:
        return Correlation(None, None, len(x), "one series is constant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spearmanr(x, y)
    rho, p_value = float(result.statistic), float(result.pvalue)
    if not math.isfinite(rho):
        return Correlation(None, None, len(x), "not finite")
    return Correlation(rho, p_value, len(x), "")


# -- arguments -------------------------------------------------------------------------------

def split_list(text: str, what: str) -> list[str]:
    """``a,b[0,3-5],c`` -> ``["a", "b[0,3-5]", "c"]``: commas inside ``[]`` belong to a class
    selection. Empty entries and duplicates are refused."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    if any(not item for item in items):
        raise HundredError(f"{what}: empty entry in {text!r} (give NAME,NAME,...)")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise HundredError(f"{what}: {', '.join(duplicates)} given more than once")
    return items


def parse_data_options(pairs: Sequence[str], data: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["synth100:classes=4", ...]`` -> ``{"synth100": {"classes": "4"}}``; the part before
    the last ``:`` (before ``=``) must be one of the ``--data`` entries."""
    import yaml

    options: dict[str, dict[str, Any]] = {label: {} for label in data}
    for pair in pairs:
        head, sep, value = pair.partition("=")
        label, colon, key = head.rpartition(":")
        if not sep or not colon or not key.strip():
            raise HundredError(f"--data-option expects DATA:KEY=VALUE, got {pair!r}")
        if label.strip() not in options:
            raise HundredError(f"--data-option {pair!r}: {label.strip()!r} is not one of --data "
                               f"({', '.join(data)})")
        options[label.strip()][key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return options


def _slug(text: str) -> str:
    from hundred.protocol.tune import slug

    return slug(text)


def check_model(name: str) -> None:
    """A local model or a timm name, else one clear error (before anything trains)."""
    from hundred.models import LOCAL_MODELS

    if name in LOCAL_MODELS:
        return
    import timm

    if name not in timm.list_models():
        raise HundredError(f"--models: unknown model {name!r}; not a local model "
                           f"({', '.join(LOCAL_MODELS)}) nor a timm model name")


def check_data(data: DataConfig) -> None:
    """The source exists and takes its options (cheap: nothing is generated or read)."""
    from hundred.data.pack import packed_path
    from hundred.data.sources import _builder, coerce_options

    path = packed_path(data.source)
    if path is not None:
        if data.options:
            raise HundredError(f"--data {data.label}: a packed directory takes no options")
        return
    name = data.source.partition(":")[0]
    coerce_options(_builder(name), dict(data.options), f"--data {data.label}: source {name}")


# -- the sweep -------------------------------------------------------------------------------

@dataclass
class Cell:
    """One (model, data) run of the sweep."""

    model: str
    data: str  # the --data entry as given
    config: RunConfig
    run_dir: Path
    state: str = "new"  # new | done | resume
    summary: dict[str, Any] | None = None


@dataclass
class XScoreResult:
    """What a sweep produced."""

    out: Path
    models: list[str]
    data: list[str]
    reference: str
    accuracy: dict[str, dict[str, float]]
    scores: list[ModelScore]
    correlation: Correlation
    cells: list[Cell] = field(default_factory=list)


def default_out() -> Path:
    return Path("runs") / "xscore" / time.strftime("%Y%m%d-%H%M%S")


def cell_name(model: str, data: str, seed: int) -> str:
    """The run directory name of a cell: deterministic in (model, data, seed)."""
    return f"{_slug(model)}-{_slug(data)}-s{seed}"


def _check_user_keys(files: Sequence[str | Path], overrides: Sequence[str]) -> None:
    from hundred.protocol.evaluate import _user_keys

    clashes = [key for key in _user_keys(files, overrides)
               if any(key == k or key.startswith(k + ".") for k in CELL_KEYS)]
    if clashes:
        raise HundredError(f"{', '.join(clashes)}: set by hundred xscore for each cell (use "
                           "--models, --data, --data-option, --epochs, --seed, --out)")


def plan(models: Sequence[str], data: Sequence[str], epochs: int, out: Path, seed: int = 0,
         files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
         data_options: Mapping[str, Mapping[str, Any]] | None = None,
         device: str | None = None) -> list[Cell]:
    """Validate everything and build every cell's config, and find which cells are finished
    or interrupted; raises :class:`HundredError` before anything trains."""
    from hundred.engine.run import settings_digest
    from hundred.registry import get_method

    if not models:
        raise HundredError("--models: give at least one model")
    if not data:
        raise HundredError("--data: give at least one dataset")
    for what, items in (("--models", models), ("--data", data)):
        duplicates = sorted({i for i in items if list(items).count(i) > 1})
        if duplicates:
            raise HundredError(f"{what}: {', '.join(duplicates)} given more than once")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise HundredError(f"--epochs must be at least 1, got {epochs}")
    _check_user_keys(files, overrides)
    for model in models:
        check_model(model)
    data_options = data_options or {}
    configs: dict[str, DataConfig] = {}
    for label in data:
        try:
            configs[label] = DataConfig.model_validate(
                {"source": label, "options": dict(data_options.get(label, {}))})
        except ValueError as error:
            raise HundredError(f"--data {label}: {error}") from None
        check_data(configs[label])
    slugs = [(_slug(m), _slug(d)) for m in models for d in data]
    clashing = sorted({f"{m}-{d}" for m, d in slugs if slugs.count((m, d)) > 1})
    if clashing:
        raise HundredError("--models/--data: entries that differ only in punctuation share a "
                           f"run directory name ({', '.join(clashing)})")
    method_class = get_method(TRACK_NAME, METHOD)
    cells = []
    for model in models:
        for label in data:
            name = cell_name(model, label, seed)
            given = [f"track={TRACK_NAME}", f"method={METHOD}", f"model.name={json.dumps(model)}",
                     f"data.source={json.dumps(configs[label].source)}",
                     f"data.classes={json.dumps(configs[label].classes)}",
                     f"data.options={json.dumps(configs[label].options)}",
                     f"train.epochs={epochs}", f"seed={seed}", f"name={json.dumps(name)}",
                     f"root={json.dumps(str(out))}"]
            given += [f"train.device={json.dumps(device)}"] if device is not None else []
            config = build_config(list(files), [*overrides, *given])
            method_class(config.method_params, config)  # the method validates its params
            cells.append(Cell(model, label, config, out / TRACK_NAME / METHOD / name))
    for cell in cells:
        _find_state(cell, settings_digest(cell.config))
    return cells


def _find_state(cell: Cell, digest: str) -> None:
    """Mark ``cell`` done (finished, same settings), resume (unfinished, same settings) or new;
    a cell trained with other settings is an error (results are never mixed or overwritten)."""
    from hundred.engine.run import settings_digest

    summary_path, config_path = cell.run_dir / "summary.json", cell.run_dir / "config.yaml"
    differing = _differences(cell.config, config_path)
    other = (f"{cell.run_dir} was trained with other settings than this sweep's"
             f"{' (' + ', '.join(differing) + ')' if differing else ''}; pick another --out "
             "(or remove that directory yourself)")
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as error:
            raise HundredError(f"{summary_path} cannot be read: {error}") from None
        if summary.get("settings") != digest or summary.get("seed") != cell.config.seed:
            raise HundredError(other)
        cell.state, cell.summary = "done", summary
    elif config_path.is_file():
        stored = build_config([config_path])
        if settings_digest(stored) != digest or stored.seed != cell.config.seed:
            raise HundredError(other)
        cell.state = "resume"
    elif cell.run_dir.exists():
        try:  # created but killed before its config was written: nothing to keep
            cell.run_dir.rmdir()
        except OSError:
            raise HundredError(f"{cell.run_dir} exists but holds no run (no config.yaml); "
                               "remove it or pick another --out") from None


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(config: RunConfig, stored_path: Path) -> list[str]:
    """``key: stored -> wanted`` for each result-relevant setting (and the seed) in which the
    run stored at ``stored_path`` differs from ``config``; empty when unreadable or equal."""
    from hundred.config import result_settings

    try:
        stored = build_config([stored_path])
    except (HundredError, OSError):
        return []
    old, new = _flat(result_settings(stored)), _flat(result_settings(config))
    old["seed"], new["seed"] = stored.seed, config.seed
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)][:5]


def run_cell(cell: Cell, verbose: bool, console: Console) -> dict[str, Any]:
    """Train one cell (or resume it); its console output goes to ``console.log`` unless
    ``verbose``."""
    from hundred.protocol.tune import _captured
    from hundred.registry import get_track

    track = get_track(TRACK_NAME)
    resume = cell.run_dir if cell.state == "resume" else None
    with _captured(not verbose) as output:
        try:
            return track.run(cell.config, resume)
        finally:
            if output is not None and cell.run_dir.is_dir():
                with open(cell.run_dir / "console.log", "a", encoding="utf-8") as handle:
                    handle.write(output.getvalue())


def sweep(models: Sequence[str], data: Sequence[str], epochs: int,
          reference: str | None = None, out: str | Path | None = None, seed: int = 0,
          files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
          data_options: Mapping[str, Mapping[str, Any]] | None = None,
          params: XScoreParams | None = None, device: str | None = None,
          verbose: bool = False, console: Console | None = None) -> XScoreResult:
    """Train every model on every dataset (finished cells reused, interrupted ones resumed),
    score them, write ``xscore.md``/``xscore.json`` into ``out`` and print the table."""
    params = params or XScoreParams()
    log = console or table_console(stderr=True)
    out = Path(out) if out is not None else default_out()
    reference = data[0] if reference is None and data else reference
    if reference not in data:
        raise HundredError(f"--reference {reference!r} is not one of --data ({', '.join(data)})")
    cells = plan(models, data, epochs, out, seed, files, overrides, data_options, device)
    done = sum(cell.state == "done" for cell in cells)
    log.print(f"hundred xscore: {len(models)} models x {len(data)} datasets, {_epochs(epochs)}, "
              f"seed {seed}; {done} of {len(cells)} cells already done; output {out}",
              highlight=False, markup=False)
    for cell in cells:
        where = f"{cell.model} on {cell.data}"
        if cell.state == "done":
            log.print(f"[xscore] {where}: already done ({cell.run_dir})", highlight=False,
                      markup=False)
            continue
        log.print(f"[xscore] {where}: {'resuming' if cell.state == 'resume' else 'training'}",
                  highlight=False, markup=False)
        cell.summary = run_cell(cell, verbose, log)
        cell.state = "done"
        log.print(f"[xscore] {where}: top-1 {cell.summary['val_top1']:.2f} ({cell.run_dir})",
                  highlight=False, markup=False)
    accuracy = {m: {c.data: float(c.summary["val_top1"]) for c in cells if c.model == m}
                for m in models}
    scores = xscore(accuracy, params)
    correlation = spearman([accuracy[m][reference] for m in models],
                           [s.xscore for s in scores])
    result = XScoreResult(out, list(models), list(data), reference, accuracy, scores,
                          correlation, cells)
    write_outputs(result, epochs, seed, params)
    print_table(result)
    table_console().print(f"wrote {out / 'xscore.md'} and {out / 'xscore.json'}",
                          highlight=False, markup=False)
    return result


# -- output ----------------------------------------------------------------------------------

def _epochs(epochs: int) -> str:
    return f"{epochs} epoch{'s' * (epochs != 1)}"


def _ordered(result: XScoreResult) -> list[ModelScore]:
    """Rows by xScore, best first (ties keep the --models order)."""
    return sorted(result.scores, key=lambda s: -s.xscore)


def _header(result: XScoreResult) -> list[str]:
    return ["rank", "model", *[f"{d} top-1" for d in result.data], "mean top-1",
            "rank std", "xScore"]


def _cells(result: XScoreResult, position: int, score: ModelScore) -> list[str]:
    return [str(position), score.model,
            *[f"{result.accuracy[score.model][d]:.2f}" for d in result.data],
            f"{score.mean_top1:.2f}", f"{score.rank_std:.1f}", f"{score.xscore:.2f}"]


def correlation_line(result: XScoreResult) -> str:
    return (f"Spearman rank correlation between {result.reference} top-1 and xScore across "
            f"models: {result.correlation.describe()}")


def markdown(result: XScoreResult, epochs: int, seed: int, params: XScoreParams) -> str:
    header = _header(result)
    lines = ["# hundred xscore", "",
             f"{len(result.models)} models x {len(result.data)} datasets, each trained with "
             f"classify/{METHOD} for {_epochs(epochs)} (seed {seed}), one config for every "
             "cell except model and data.", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if h not in ("model",) else "---" for h in header) + "|"]
    for position, score in enumerate(_ordered(result), 1):
        lines.append("| " + " | ".join(_cells(result, position, score)) + " |")
    lines += ["", correlation_line(result) + ".", "",
              f"xScore: {DEFINITION}; rank_weight = {params.rank_weight:g}. "
              f"'rank std': std over datasets of the model's rank percentile.", "",
              f"Paper: {PAPER}.", ""]
    return "\n".join(lines)


def to_json(result: XScoreResult, epochs: int, seed: int, params: XScoreParams) -> dict[str, Any]:
    corr = result.correlation
    return {
        "paper": PAPER, "definition": DEFINITION, "rank_weight": params.rank_weight,
        "track": TRACK_NAME, "method": METHOD, "epochs": epochs, "seed": seed,
        "models": result.models, "data": result.data, "reference": result.reference,
        "accuracy": result.accuracy,
        "scores": [{"model": s.model, "mean_top1": s.mean_top1, "rank_std": s.rank_std,
                    "xscore": s.xscore, "ranks": dict(zip(result.data, s.ranks))}
                   for s in result.scores],
        "spearman": {"between": [f"{result.reference} top-1", "xScore"], "rho": corr.rho,
                     "p_value": corr.p_value, "models": corr.models,
                     "note": corr.note or None},
        "runs": {m: {c.data: str(c.run_dir) for c in result.cells if c.model == m}
                 for m in result.models},
    }


def write_outputs(result: XScoreResult, epochs: int, seed: int, params: XScoreParams) -> None:
    """``xscore.md`` and ``xscore.json`` in ``result.out``, each written atomically."""
    write_text(result.out / "xscore.md", markdown(result, epochs, seed, params))
    write_json(result.out / "xscore.json", to_json(result, epochs, seed, params))


def print_table(result: XScoreResult, console: Console | None = None) -> None:
    console = console or table_console()
    table = RichTable(title=f"xScore: {len(result.models)} models x {len(result.data)} datasets",
                      title_style="bold")
    for name in _header(result):
        table.add_column(name, justify="left" if name == "model" else "right")
    for position, score in enumerate(_ordered(result), 1):
        table.add_row(*_cells(result, position, score))
    console.print(table)
    console.print(correlation_line(result), highlight=False, markup=False)


# -- command line ----------------------------------------------------------------------------

def add_parser(commands: Any) -> None:
    """``hundred xscore``: add the sub-parser to the core's command group."""
    parser = commands.add_parser(
        "xscore", help="train models x datasets under one schedule; per-dataset top-1, mean, "
        "xScore (Zhang et al. 2025) and Spearman(reference top-1, xScore)")
    parser.add_argument("--models", required=True, help="comma-separated, e.g. resnet20,convnet_d3")
    parser.add_argument("--data", required=True,
                        help="comma-separated data specs, e.g. synth100,digits,'synth100[0-9]'")
    parser.add_argument("--epochs", required=True, type=int, help="epochs of every cell (>= 1)")
    parser.add_argument("--reference", help="dataset whose top-1 is correlated with xScore "
                        "(default: the first of --data)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: "
                        "runs/xscore/<time>); the same --out again reuses finished cells")
    parser.add_argument("--seed", type=int, default=0, help="seed of every cell (default 0)")
    parser.add_argument("--data-option", action="append", default=[],
                        metavar="DATA:KEY=VALUE", help="a source option of one --data entry, "
                        "e.g. synth100:classes=10 (repeatable)")
    parser.add_argument("--rank-weight", type=float, default=XScoreParams().rank_weight,
                        help="lambda of xScore's rank-stability penalty (default 1)")
    parser.add_argument("--config", action="append", default=[], help="YAML file, repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every cell, e.g. data.batch_size=64")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every run's output (default: kept in its console.log)")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> None:
    """Run ``hundred xscore`` from parsed arguments."""
    models = split_list(args.models, "--models")
    data = split_list(args.data, "--data")
    try:
        params = XScoreParams(rank_weight=args.rank_weight)
    except ValueError as error:
        raise HundredError(f"--rank-weight: {error.errors()[0]['msg']}") from None
    sweep(models, data, args.epochs, reference=args.reference, out=args.out, seed=args.seed,
          files=args.config, overrides=args.set,
          data_options=parse_data_options(args.data_option, data), params=params,
          device=args.device, verbose=args.verbose)
