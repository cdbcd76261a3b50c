"""``hundred check``: the whole tune-then-evaluate protocol for several methods, and what it
changes.

For each method: tune on the tuning data (:func:`~hundred.protocol.tune.tune`), then train
with the frozen best parameters on the evaluation data over several seeds
(:func:`~hundred.protocol.evaluate.evaluate`). Two leaderboards come out, side by side:

* **conventional** — each method's best tuning trial, i.e. tuned and reported on the same
  data: the practice Cha & Cho ("Hyperparameters in Continual Learning: a Reality Check",
  TMLR 2025) show overstates methods (one number per method, no spread);
* **tune-then-evaluate** — the evaluation phase, mean ± std over seeds, with each method's
  conventional rank and the change (``▲2`` moved up two places, ``▼1`` down one, ``=``).

The output folder holds everything: ``studies.db`` (the Optuna studies), ``best/*.yaml``,
the run directories (``<track>/<method>/tune-*`` and ``eval-*``) and ``report/`` (Markdown,
HTML, figures). Running the same command with the same ``--out`` again resumes: studies
continue to their trial count and finished evaluation runs are reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.columns import Columns
from rich.console import Console
from rich.table import Table as RichTable

from hundred.config import DataConfig
from hundred.errors import HundredError
from hundred.protocol import space as spaces
from hundred.protocol.evaluate import check_disjoint, check_frozen, evaluate
from hundred.protocol import DEFAULT_EVAL_DATA, DEFAULT_SEEDS, DEFAULT_TRIALS, DEFAULT_TUNE_DATA
from hundred.protocol.tune import BestParams, base_config, default_storage, tune
from hundred.report import GroupRow, ReportPaths, Table, aggregate, leaderboard, render_report
from hundred.report.collect import load_summary
from hundred.terminal import table_console
from hundred.track import Track

CONVENTIONAL = "conventional"


def rank_marker(before: int | None, after: int) -> str:
    """``▲k`` (moved up k places), ``▼k`` (down k), ``=`` (same rank); ``new`` without a
    conventional rank."""
    if before is None:
        return "new"
    delta = before - after
    return f"▲{delta}" if delta > 0 else f"▼{-delta}" if delta < 0 else "="


def rank_changes(conventional: Sequence[GroupRow],
                 evaluation: Sequence[GroupRow]) -> dict[str, tuple[int | None, int, str]]:
    """``method -> (conventional rank, evaluation rank, marker)`` for every evaluated method."""
    before = {row.method: row.rank for row in conventional}
    return {row.method: (before.get(row.method), row.rank,
                         rank_marker(before.get(row.method), row.rank)) for row in evaluation}


def conventional_run(best: BestParams) -> dict[str, Any]:
    """The best tuning trial's summary, presented as what a paper would report: tuned and
    reported on the tuning data (``protocol: conventional``, ``tuned_on``: that same data)."""
    summary = load_summary(Path(best.best_run_dir) / "summary.json")
    return {**summary, "protocol": CONVENTIONAL, "phase": None, "tuned_on": best.tuned_on}


def leaderboards(conventional_runs: Sequence[Mapping[str, Any]],
                 evaluation_runs: Sequence[Mapping[str, Any]]) -> tuple[Table, Table]:
    """The two leaderboards of a check from normalised summaries (see
    :func:`hundred.report.collect.load_summary`): ranks, mean ± std, rank changes."""
    conventional = aggregate(list(conventional_runs))
    evaluation = aggregate(list(evaluation_runs))
    if not conventional or not evaluation:
        raise HundredError("a check needs runs in both phases")
    changes = rank_changes(conventional, evaluation)
    first_c, first_e = conventional[0], evaluation[0]
    scenario = f" — {first_e.scenario}" if first_e.scenario else ""
    conv_table = leaderboard(
        conventional, title=f"Conventional: tuned and reported on {first_c.data}{scenario}",
        note=(f"Each method's best tuning trial (of its study on {first_c.data}): the "
              "hyperparameters were chosen on the very data the number is measured on — the "
              "practice Cha & Cho (TMLR 2025) show overstates methods. One run per method."),
        extra_columns={"rank": lambda row: str(row.rank)})
    eval_table = leaderboard(
        evaluation, title=(f"Tune-then-evaluate: tuned on {first_e.tuned_on}, evaluated on "
                           f"{first_e.data}{scenario}"),
        note=(f"Frozen best parameters of each study, trained on {first_e.data} (classes never "
              f"seen while tuning), mean ± sample std over seeds {', '.join(map(str, first_e.seeds))}. "
              "'change': rank here vs the conventional rank (▲ up, ▼ down, = same)."),
        extra_columns={"rank": lambda row: str(row.rank),
                       "conventional rank": lambda row: str(changes[row.method][0] or "–"),
                       "change": lambda row: changes[row.method][2]})
    return conv_table, eval_table


# wide columns left out of the terminal tables (the titles say the protocol, the parameters
# get a table of their own; the report files keep every column), besides the track's own
# ``ReportSpec.terminal_hidden``
TERMINAL_HIDDEN = ("protocol", "tuned params")


def rich_table(table: Table, hide: Sequence[str] = TERMINAL_HIDDEN) -> RichTable:
    """A report :class:`~hundred.report.Table` for the terminal (``hide`` and the track's
    ``terminal_hidden`` columns are dropped)."""
    hidden = set(hide) | set(table.rows[0].spec.terminal_hidden)
    shown = [i for i, name in enumerate(table.header) if name not in hidden]
    out = RichTable(title=table.title, title_style="bold", caption=None)
    for i in shown:
        out.add_column(table.header[i], justify="right" if table.align[i] == "r" else "left")
    for cells in table.body:
        out.add_row(*(cells[i] for i in shown))
    return out


def print_leaderboards(tables: Sequence[Table], bests: Sequence[BestParams],
                       console: Console | None = None) -> None:
    """Both leaderboards side by side (stacked when the terminal is narrow), then the tuned
    parameters of each method."""
    console = console or table_console()
    console.print(Columns([rich_table(t) for t in tables], padding=(0, 4)))
    params = RichTable(title="tuned parameters (best trial of each study)", title_style="bold")
    for column in ("method", "tuned on", "trials", "parameters"):
        params.add_column(column)
    for best in bests:
        params.add_row(best.method, best.tuned_on, str(best.trials_complete),
                       spaces.format_params(best.params))
    console.print(params)


@dataclass
class CheckResult:
    """What a check produced: the best parameters, both leaderboards and the report."""

    out: Path
    bests: list[BestParams]
    conventional: Table
    evaluation: Table
    report: ReportPaths


def default_out(track: str) -> Path:
    return Path("runs") / "check" / f"{track}-{time.strftime('%Y%m%d-%H%M%S')}"


def check(track: Track, methods: Sequence[str] = (),
          tune_data: str = DEFAULT_TUNE_DATA, eval_data: str = DEFAULT_EVAL_DATA,
          trials: int = DEFAULT_TRIALS, seeds: int = DEFAULT_SEEDS, budget: str = "quick",
          sampler: str = "random",
          sampler_seed: int = 0, out: str | Path | None = None,
          files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
          device: str | None = None, space_file: str | Path | None = None,
          verbose: bool = False, console: Console | None = None,
          heartbeat: int | None = None) -> CheckResult:
    """Tune every method on ``tune_data``, evaluate its best parameters on ``eval_data`` over
    ``seeds`` seeds, print both leaderboards and write the report into ``out``. ``heartbeat``
    is the tuning trials' heartbeat in seconds (see :func:`~hundred.protocol.tune.tune`).
    ``methods``
    defaults to the track's ``check_methods``; ``overrides`` (``--set`` and the track's
    shortcuts, e.g. its scenario) apply to every run."""
    methods = list(methods or track.check_methods)
    if not methods:
        raise HundredError("--methods: give at least one method")
    if seeds < 1:
        raise HundredError(f"--seeds must be at least 1, got {seeds}")
    log = console or Console(stderr=True)
    out = Path(out) if out is not None else default_out(track.name)
    started = time.perf_counter()
    # every input is checked before the first trial: data split, configs, spaces, overrides
    tuning, evaluation = (DataConfig.model_validate({"source": d}) for d in (tune_data, eval_data))
    check_disjoint(tuning, tuning.label, evaluation)
    classes = {m: track.method_class(m) for m in methods}
    bases = {m: base_config(track, classes[m], tune_data, budget, files, overrides,
                            root=str(out), device=device) for m in methods}
    # what each phase needs before its runs (a teacher of that phase's classes), as overrides
    tune_extra = track.prepare_phase(classes, bases[methods[0]], out, log)
    bases = {m: base_config(track, classes[m], tune_data, budget, files,
                            [*overrides, *tune_extra[m]], root=str(out), device=device)
             if tune_extra[m] else bases[m] for m in methods}
    space_overrides = spaces.load_space_file(space_file) if space_file else None
    for method, base in bases.items():
        space = spaces.space_for(classes[method], budget, space_overrides)
        spaces.validate_space(space, base, classes[method])
        check_frozen(list(space), files, overrides, f"the search space of {method}")
    scenario = track.scenario_label(bases[methods[0]])
    log.print(f"hundred check {track.name}: methods {', '.join(methods)}; tune on {tuning.label}, "
              f"evaluate on {evaluation.label}; {f'{scenario}; ' if scenario else ''}"
              f"{trials} trials, {seeds} seeds; "
              f"budget {budget} ({spaces.BUDGETS[budget].about}); output {out}", highlight=False, markup=False)

    storage = default_storage(out)
    log.print("[bold]Phase 1: tuning[/bold]")
    bests = [tune(bases[m], classes[m], trials, storage=storage, sampler=sampler, sampler_seed=sampler_seed,
                  budget=budget, space_file=space_file, verbose=verbose, console=log,
                  heartbeat=heartbeat).best
             for m in methods]
    log.print("[bold]Phase 2: evaluation with frozen parameters[/bold]")
    eval_extra = track.prepare_phase(
        classes, base_config(track, classes[methods[0]], eval_data, budget, files, overrides,
                             root=str(out), device=device), out, log)
    evaluation_runs = []
    for best in bests:
        for summary in evaluate(best, eval_data, list(range(seeds)), files,
                                [*overrides, *eval_extra[best.method]],
                                root=str(out), device=device, verbose=verbose, console=log,
                                method=classes[best.method]):
            evaluation_runs.append(load_summary(Path(summary["run_dir"]) / "summary.json"))

    conv_table, eval_table = leaderboards([conventional_run(b) for b in bests], evaluation_runs)
    minutes = (time.perf_counter() - started) / 60
    meta = [f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by hundred check {track.name} in "
            f"{minutes:.1f} min: {len(methods)} methods, {trials} tuning trials each on "
            f"{tuning.label} ({budget} budget, {sampler} search), evaluated on "
            f"{evaluation.label} over {seeds} seed{'s' * (seeds != 1)}.",
            "Protocol: Cha & Cho, \"Hyperparameters in Continual Learning: a Reality Check\", "
            "TMLR 2025. Only the tune-then-evaluate table measures methods on data their "
            "hyperparameters never saw."]
    report = render_report([conv_table, eval_table], [*conv_table.rows, *eval_table.rows],
                           out / "report", meta, title=f"hundred check: {track.name}")
    print_leaderboards([conv_table, eval_table], bests)
    table_console().print(f"report: {report.markdown}  {report.html}  ({len(report.plots)} figures); "
                    f"took {minutes:.1f} min", highlight=False, markup=False)
    return CheckResult(out, bests, conv_table, eval_table, report)
