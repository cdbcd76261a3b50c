"""The track contract: what a track declares so that the core never has to name it.

A track is one folder, ``hundred/tracks/<name>/`` (or any package named in the
``HUNDRED_TRACKS`` environment variable), whose ``__init__.py`` exports ``TRACK``, a
:class:`Track`. The core asks that object for everything track-specific:

* ``section`` — the track's own config section (a pydantic model named after the track),
  validated with the rest of the run config (:func:`hundred.config.config_class`);
* ``method_base`` — the base class its methods subclass (``"module:Class"``);
* ``runner`` — ``run(config, method, resume_dir) -> summary``: the scenario that drives the
  phases and calls the method's hooks (``"module:function"``);
* ``report`` — the metrics (the first is the primary one: what a leaderboard ranks by and
  what ``hundred tune`` optimises), the columns, the per-step plots and the per-epoch
  histograms of its reports;
* ``shortcuts`` — CLI flags for its section (``--scenario`` -> ``<track>.scenario``);
* what the tune-then-evaluate protocol needs: the config path naming the scenario, the keys
  held fixed between tuning and evaluation, the default methods of ``hundred check``, and
  base settings per tuning budget;
* ``phase_setup`` — ``(track, methods, config, out, console) -> {method: overrides}``,
  called by ``hundred check`` once per phase with that phase's base config: what the phase's
  runs need first (e.g. a teacher trained on that phase's classes), as extra overrides per
  method;
* ``grid`` — per tuning budget, the shared search grid that replaces the budget's own for this
  track's methods (for a track whose loop does not train a network, where epochs and batch
  sizes mean nothing);
* ``seed_paired`` — config keys naming an upstream run that an experiment takes one of per
  seed (the trained network a sampling run reuses, the condition classifier of PPGN): the
  settings digest ignores them, so runs differing only in them and in the seed are one
  report row (averaged over seeds) rather than one row per seed;
* ``commands`` — a function adding the track's own CLI commands (``hundred X``,
  ``hundred data X``), ``"module:function"``.

Nothing here imports torch: the CLI and config validation read a track without loading it.
Module paths in ``runner`` and ``method_base`` are resolved on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pydantic import BaseModel

from hundred.errors import HundredError

if TYPE_CHECKING:
    from hundred.config import RunConfig
    from hundred.engine.method import Method


@dataclass(frozen=True)
class Metric:
    """One reported metric: the summary key, its column label, and which way is better."""

    key: str
    label: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class StepSeries:
    """Per-step results a track's summaries hold (e.g. one value after each task), which
    reports validate and plot: a curve over the steps and a step x step matrix.

    ``steps`` is the summary key of the x values (integers, one per step), ``curve`` the key
    of the plotted series, ``matrix`` the key of the lower-triangular matrix (row t: after
    step t; column j: measured on step j's part). ``optional_curves``/``optional_matrices``
    are validated when present (null allowed) but not plotted. ``figure_names`` name the two
    figures (file names and captions).
    """

    steps: str
    steps_label: str
    curve: str
    curve_label: str
    matrix: str | None = None
    matrix_row_label: str = "after step"
    matrix_column_label: str = "evaluated on step"
    optional_curves: tuple[str, ...] = ()
    optional_matrices: tuple[str, ...] = ()
    figure_names: tuple[str, str] = ("curve", "matrix")


@dataclass(frozen=True)
class EpochHistogram:
    """Per-epoch histograms that a track's methods log in ``metrics.jsonl`` (through
    ``Method.epoch_log``), which reports draw for each row: the run of its first seed, at its
    first, middle and last logged epochs, one panel per epoch.

    ``key`` is the record key. Its value is ``{"range": [low, high], "counts": {series:
    [n_1, ..., n_B]}}``: B equal-width bins over ``[low, high]``, one list of counts per
    series (e.g. ``positive`` and ``negative`` pair scores); each series is drawn as the
    fraction of its pairs per bin. ``label`` is the x-axis label, ``title`` the figure's
    title and caption, ``name`` the stem of its file names. Runs without the key (methods
    that log no such histogram) get no figure.
    """

    key: str
    label: str
    title: str
    name: str = "histogram"


@dataclass(frozen=True)
class RunImage:
    """A picture each run writes into its directory (``file``, e.g. a grid of the images a
    condensation run learned), which HTML reports show for each row: the run of its first
    seed. Runs without the file get none."""

    file: str
    caption: str


@dataclass(frozen=True)
class CostScatter:
    """A scatter plot of a metric against a cost that every run records in its summary
    (e.g. top-1 against FLOPs): one point per run, the Pareto front of the points drawn
    (lower cost and a better metric dominate), the cost axis logarithmic when ``log_cost``.

    ``cost`` is the summary key of the x value (a positive number), ``cost_label`` its axis
    label; ``metric`` the summary key of the y value (None: the primary metric), whose
    :class:`Metric` in the report spec says which way is better (higher when it has none).
    ``name`` is the stem of its file names."""

    cost: str
    cost_label: str
    metric: str | None = None
    log_cost: bool = True
    name: str = "scatter"


@dataclass(frozen=True)
class ReportSpec:
    """What reports need from a track's summaries and which columns its tables show.

    ``metrics[0]`` is the primary metric. ``required`` metrics must be finite numbers in every
    summary; the others may be null or absent. ``always_shown`` descriptor columns appear
    even when every row has the same value (a declared descriptor: when some row has one);
    ``terminal_hidden`` column labels are left out of terminal tables (the report files keep
    them). ``descriptors`` are summary keys of the track's own that tell runs apart like the
    model does (e.g. an exemplar memory size, or the teacher a run distilled): they split
    rows and get a column when rows differ in them. ``steps`` declares per-step series,
    ``histograms`` per-epoch histograms of the runs' ``metrics.jsonl`` (:class:`EpochHistogram`),
    ``images`` pictures the runs write (:class:`RunImage`), ``scatters`` metric-against-cost
    plots with their Pareto fronts (:class:`CostScatter`).
    """

    metrics: tuple[Metric, ...]
    required: tuple[str, ...]
    always_shown: tuple[str, ...] = ()
    descriptors: tuple[str, ...] = ()
    terminal_hidden: tuple[str, ...] = ()
    steps: StepSeries | None = None
    histograms: tuple[EpochHistogram, ...] = ()
    images: tuple[RunImage, ...] = ()
    scatters: tuple[CostScatter, ...] = ()

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError("a report spec needs at least one metric (the primary one)")

    @property
    def primary(self) -> Metric:
        return self.metrics[0]


# What ``hundred attack RUN_DIR`` (a track's own command) adds to a classifier's summary:
# the robust accuracy of the latest run of each attack, and its threat model in words (every
# run of it, with the whole threat model, is in the summary's ``attacks`` list). Tracks whose
# runs it may attack list these in their report spec.
ATTACK_METRICS = (Metric("pgd_top1", "PGD top-1"), Metric("autoattack_top1", "AutoAttack top-1"))
ATTACK_DESCRIPTORS = ("pgd_threat", "autoattack_threat")

# Validation accuracy: the report of plain classification, and of summaries whose track is
# not installed here.
ACCURACY_REPORT = ReportSpec(
    metrics=(Metric("val_top1", "top-1"), Metric("val_top5", "top-5")),
    required=("val_top1",), always_shown=("model",))


@dataclass(frozen=True)
class Shortcut:
    """A command-line flag for one config key of the track: ``--<flag> VALUE`` sets ``key``."""

    flag: str
    key: str
    type: Callable[[str], Any] = str
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")


def _resolve(path: str, package: str) -> Any:
    """``"module:attr"`` (``module`` relative to ``package`` when it starts with a dot)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module, package), attr)


@dataclass(frozen=True)
class Track:
    """Everything the core needs to know about one track (see the module docstring)."""

    name: str
    package: str
    about: str
    runner: str
    method_base: str
    report: ReportSpec
    section: type[BaseModel] | None = None
    shortcuts: tuple[Shortcut, ...] = ()
    scenario_key: str | None = None
    protocol_fixed: Mapping[str, str] = field(default_factory=dict)
    check_methods: tuple[str, ...] = ()
    budget_base: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    commands: str | None = None
    phase_setup: str | None = None
    grid: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed_paired: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        keys = [s.key for s in self.shortcuts] + list(self.protocol_fixed)
        keys += [self.scenario_key] if self.scenario_key else []
        for key in keys:
            head = key.split(".")[0]
            if self.section is None or head != self.name:
                raise ValueError(f"track {self.name}: {key} is not in its own config section "
                                 f"({self.name}.*)")

    # -- what the protocol and reports ask ----------------------------------------------------
    @property
    def primary(self) -> Metric:
        """The metric a leaderboard ranks by and ``hundred tune`` optimises."""
        return self.report.primary

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize`` (Optuna's words) for the primary metric."""
        return "maximize" if self.primary.higher_is_better else "minimize"

    def scenario_label(self, config: "RunConfig") -> str | None:
        """The scenario a config runs (e.g. ``B0-Inc10``); None for tracks without one."""
        if self.scenario_key is None:
            return None
        value: Any = config
        for part in self.scenario_key.split("."):
            value = getattr(value, part)
        return None if value is None else str(value)

    @property
    def quick_preset(self) -> Path | None:
        """``quick.yaml`` in the track's folder: the ``--quick`` budget, when it has one."""
        module = importlib.import_module(self.package)
        path = Path(module.__file__ or "").parent / "quick.yaml"
        return path if path.is_file() else None

    def add_commands(self, commands: Any, data_commands: Any) -> None:
        """Let the track add its own CLI commands: ``commands`` (``hundred X``) and
        ``data_commands`` (``hundred data X``) are argparse sub-parser groups. ``commands``
        names a function ``(commands, data_commands) -> None`` in the track's package (e.g.
        ``".cli:add_commands"``); each command it adds sets ``func`` like the core's."""
        if self.commands is not None:
            _resolve(self.commands, self.package)(commands, data_commands)

    def prepare_phase(self, methods: Mapping[str, "type[Method]"], config: "RunConfig",
                      out: Path, console: Any) -> dict[str, list[str]]:
        """Extra overrides, per method, that the runs of one protocol phase need
        (``phase_setup``); none by default. ``config`` is the phase's base config (its data),
        ``out`` the check's folder."""
        extra = ({} if self.phase_setup is None else
                 _resolve(self.phase_setup, self.package)(self, methods, config, out, console))
        return {method: list(extra.get(method, ())) for method in methods}

    # -- methods and running ------------------------------------------------------------------
    @property
    def method_base_class(self) -> "type[Method]":
        return _resolve(self.method_base, self.package)

    def method_class(self, name: str) -> "type[Method]":
        from hundred.registry import get_method

        return get_method(self.name, name)

    def run(self, config: "RunConfig", resume_dir: Path | None = None,
            method: "Method | None" = None) -> dict[str, Any]:
        """Run ``config`` through the track's scenario; returns the summary it wrote.

        ``method`` is the validated method instance when the caller has built it already
        (the CLI and the protocol do, to fail before anything runs)."""
        if config.track != self.name:
            raise HundredError(f"a {config.track} config cannot run on track {self.name}")
        if method is None:
            method = self.method_class(config.method)(config.method_params, config)
        runner = _resolve(self.runner, self.package)
        return runner(config, method, resume_dir)
