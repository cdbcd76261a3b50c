"""Phase 1 of the tune-then-evaluate protocol: ``hundred tune`` — an Optuna study over a
method's search space on the *tuning* data.

Cha & Cho ("Hyperparameters in Continual Learning: a Reality Check", TMLR 2025) show that
tuning on the data one then reports overstates methods, and tune instead on a separate
dataset with the same scenario; the best parameters are then frozen (:mod:`.evaluate`).

How a study is kept honest and robust:

* every trial is a normal run (``<root>/<track>/<method>/tune-<study>-tNNNN/``) whose config
  records ``protocol: tune-then-evaluate, phase: tuning``, the study and the trial number;
  the trial stores its run directory, worker and error (if any) as user attributes;
* the objective is the track's declared primary metric (``Track.primary``) in its direction;
* storage is any SQLAlchemy URL (SQLite by default), opened with ``load_if_exists``, so a
  killed study resumes and several processes or machines add trials to one study; ``--trials
  N`` means "until the study holds N complete trials", so a rerun finishes the remainder;
* random search draws each trial's point from ``(sampler seed, trial number)``: reproducible,
  and concurrent workers never repeat each other; TPE is available too;
* a trial that fails (a HundredError, e.g. a NaN loss or a batch larger than a task's data)
  is recorded as FAIL and the study continues (up to a cap of failures per worker);
* every running trial sends a heartbeat (``--heartbeat`` seconds, default 60); a trial whose
  heartbeat is older than the grace period (2 heartbeats) belonged to a worker that died and
  is marked FAIL, with the reason in its ``error`` attribute, as soon as any worker of the
  study starts or finishes a trial, so no trial stays RUNNING forever; it counts neither
  toward ``--trials`` nor toward the failure cap of the worker that notices it;
* the study remembers its base settings and space, and refuses to be continued with
  different ones (the trials would not be comparable);
* the best parameters go to a YAML file with everything the evaluation phase needs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console

from hundred.config import RunConfig, apply_overrides, build_config, with_values
from hundred.errors import HundredError
from hundred.io import write_text
from hundred.protocol import space as spaces
from hundred.registry import get_track
from hundred.track import Track

if TYPE_CHECKING:
    import optuna

    from hundred.engine.method import Method

PROTOCOL = "tune-then-evaluate"
SAMPLERS = ("random", "tpe")
DEFAULT_HEARTBEAT = 60  # seconds between a running trial's heartbeats
GRACE_HEARTBEATS = 2  # a trial is stale after this many heartbeat intervals without one
STALE = "stopped (no heartbeat for"  # in the error of a trial failed for a stale heartbeat


# -- names -------------------------------------------------------------------------------------
def slug(text: str) -> str:
    """A file-name-safe form of a study or dataset name (``synth100[0-49]`` -> ``synth100_0-49``)."""
    import re

    text = text.replace("[", "_").replace("]", "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def worker_id() -> str:
    """``host:pid``: which process ran a trial (recorded on every trial)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# -- configs ----------------------------------------------------------------------------------
def base_config(track: Track, method: "type[Method]", data: str, budget: str,
                files: Sequence[str | Path] = (), overrides: Sequence[str] = (),
                root: str | None = None, device: str | None = None) -> RunConfig:
    """The config every trial starts from: the budget's base settings (the shared ones, then
    the track's ``budget_base``), then ``files``, then the data/root/device given, then
    ``overrides`` (track shortcuts and ``--set``, which win). With the quick budget, the
    built-in ``synth100`` is generated small unless options were given."""
    if budget not in spaces.BUDGETS:
        raise HundredError(f"unknown budget {budget!r}; known: {', '.join(spaces.BUDGETS)}")
    chosen = spaces.BUDGETS[budget]
    given = [f"track={track.name}", f"method={method.name}", f"data.source={json.dumps(data)}"]
    if root is not None:
        given.append(f"root={json.dumps(root)}")
    if device is not None:
        given.append(f"train.device={device}")
    budget_base = [f"track={track.name}", *chosen.base, *track.budget_base.get(budget, ())]
    config = build_config(list(files), given + list(overrides),
                          base=apply_overrides({}, budget_base))
    if config.data.source == "synth100" and not config.data.options and chosen.synth100_options:
        config = with_values(config, {"data.options": dict(chosen.synth100_options)}, "budget")
    method(config.method_params, config)  # the method validates its params
    return config


def fixed_settings(config: RunConfig) -> dict[str, Any]:
    """What a study holds fixed (everything but run identity, provenance and the device), as
    stored with the study and in the best-parameters file."""
    fixed = config.model_dump(mode="json", exclude={"name", "root", "seed", "quiet", "provenance"})
    fixed["train"].pop("device")  # where a run executes is not a setting (workers may differ)
    return fixed


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


# -- storage and samplers ---------------------------------------------------------------------
def default_storage(root: str | Path) -> str:
    """``sqlite:///<root>/studies.db``."""
    return f"sqlite:///{Path(root) / 'studies.db'}"


def grace_period(heartbeat: int) -> int:
    """Seconds without a heartbeat after which a running trial counts as abandoned."""
    return GRACE_HEARTBEATS * heartbeat


def stale_error(worker: str | None, heartbeat: int) -> str:
    """The ``error`` recorded on a trial failed because its worker's heartbeat stopped."""
    return f"worker {worker or '(unknown)'} {STALE} {grace_period(heartbeat)} s)"


@functools.cache
def _storage_class() -> type:
    """``RDBStorage`` that writes the reason on a stale trial before it is failed (Optuna
    refuses attributes on a finished trial, so its failure callback comes too late for that)."""
    import optuna

    class Storage(optuna.storages.RDBStorage):  # type: ignore[misc]
        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            stale = []
            for trial_id in super()._get_stale_trial_ids(study_id):
                try:
                    worker = self.get_trial(trial_id).user_attrs.get("worker")
                    self.set_trial_user_attr(trial_id, "error",
                                             stale_error(worker, int(self.heartbeat_interval)))
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # another worker failed it a moment ago
                stale.append(trial_id)
            return stale

    return Storage


def open_storage(url: str, heartbeat: int = DEFAULT_HEARTBEAT,
                 on_stale: "Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None" = None,
                 ) -> "optuna.storages.RDBStorage":
    """An RDB storage for ``url``. SQLite gets a long lock timeout (several workers write to
    one file) and its folder is created. Running trials send a heartbeat every ``heartbeat``
    seconds; one silent for :func:`grace_period` is failed (``on_stale`` is then called with
    it) when a worker next calls :func:`optuna.storages.fail_stale_trials`, which
    ``study.optimize`` does before every trial and :func:`tune` after every trial."""
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if heartbeat < 1:
        raise HundredError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise HundredError(f"--storage {url!r} is not a database URL (e.g. "
                           "sqlite:///runs/studies.db, postgresql+psycopg://user@host/db)") from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 120}}
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    storage_class = _storage_class()
    callback: dict[str, Any] = {}
    if on_stale is not None:  # renamed in Optuna 4.9 (the old name warns)
        name = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(storage_class).parameters
                else "failed_trial_callback")
        callback = {name: on_stale}
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return storage_class(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                     grace_period=grace_period(heartbeat), **callback)
        except (OperationalError, IntegrityError) as error:
            # two workers creating the schema of a new database (SQLite file or PostgreSQL)
            # at once: one of them finds "table ... already exists" or a duplicate alembic
            # version row; the schema is complete a moment later
            if attempt == 5:
                raise HundredError(f"cannot open the study storage {redact(url)}: {error}") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as error:  # other driver errors: say which storage, not a traceback
            raise HundredError(f"cannot open the study storage {redact(url)}: {error}") from None
    raise AssertionError("unreachable")


def fail_stale_trials(study: "optuna.Study") -> None:
    """Fail the study's trials whose worker stopped sending heartbeats (see :func:`open_storage`)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def redact(url: str) -> str:
    """``url`` without its password (it goes into files and logs)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _derive_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "big")


def make_sampler(name: str, seed: int, trials: int) -> "optuna.samplers.BaseSampler":
    """``random`` (the paper's search) or ``tpe``."""
    import optuna

    class TrialSeededRandomSampler(optuna.samplers.BaseSampler):
        """Random search whose draw for trial ``n`` depends only on ``(seed, n, parameter)``:
        rerunning a study reproduces it, and workers sharing one study never draw the same
        sequence (Optuna's RandomSampler, seeded alike in two processes, would)."""

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {}

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
            return {}

        def sample_independent(self, study: Any, trial: Any, param_name: str,
                               param_distribution: Any) -> Any:
            draw = optuna.samplers.RandomSampler(seed=_derive_seed(seed, trial.number, param_name))
            return draw.sample_independent(study, trial, param_name, param_distribution)

    if name == "random":
        return TrialSeededRandomSampler()
    if name == "tpe":
        # TPE proposes from the trials finished so far, which differ between concurrent
        # workers anyway, so each worker gets its own seed (else their random start-up
        # trials would coincide); constant liar keeps concurrent proposals apart.
        return optuna.samplers.TPESampler(seed=_derive_seed(seed, worker_id()),
                                          n_startup_trials=min(10, max(3, trials // 3)),
                                          constant_liar=True)
    raise HundredError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")


# -- the best-parameters file -----------------------------------------------------------------
class TuningData(BaseModel):
    """Which data a study tuned on: the spec and the loaded data's identity."""

    model_config = ConfigDict(extra="forbid")
    source: str
    classes: Optional[str] = None
    options: dict[str, Any] = {}
    name: str
    fingerprint: str


class BestParams(BaseModel):
    """The YAML file ``hundred tune`` writes and ``hundred evaluate`` reads."""

    model_config = ConfigDict(extra="forbid")
    protocol: Literal["tune-then-evaluate"] = PROTOCOL
    track: str
    method: str
    study: str
    storage: str
    sampler: str
    budget: str
    scenario: Optional[str]
    objective: str
    direction: str
    value: float
    best_trial: int
    best_run_dir: str
    trials_complete: int
    trials_failed: int
    tuned_on: str
    tuning_data: TuningData
    params: dict[str, Any]
    space: dict[str, Any]
    fixed: dict[str, Any]


def read_best(path: str | Path) -> BestParams:
    """Read and validate a best-parameters file (clear errors for a wrong file)."""
    from hundred.config import read_yaml

    raw = read_yaml(path)
    try:
        return BestParams.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}"
                             for e in error.errors())
        raise HundredError(f"{path} is not a best-parameters file of hundred tune: "
                           f"{problems}") from None


def default_best_path(root: str | Path, study: str) -> Path:
    return Path(root) / "best" / f"{slug(study)}.yaml"


# -- the study --------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """What a tuning session left: the study, the best parameters and where they are."""

    study_name: str
    storage: str
    best: BestParams
    best_path: Path


def _complete(study: "optuna.Study") -> list["optuna.trial.FrozenTrial"]:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _remember_setup(study: "optuna.Study", setup: dict[str, Any]) -> None:
    """Store the study's fixed settings on first use; refuse to continue with others."""
    stored = study.user_attrs
    for key, value in setup.items():
        if key not in stored:
            study.set_user_attr(key, value)
        elif stored[key] != value:
            raise HundredError(
                f"study {study.study_name!r} was started with a different {key.replace('_', ' ')}"
                f" ({stored[key]!r}, now {value!r}); its trials would not be comparable — "
                "give another --study name or the original settings")


@contextlib.contextmanager
def _captured(enabled: bool) -> Iterator[io.StringIO | None]:
    """Collect a run's console output (tables, per-task lines) instead of printing it."""
    if not enabled:
        yield None
        return
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def tune(base: RunConfig, method: "type[Method]", trials: int, storage: str | None = None,
         study_name: str | None = None, sampler: str = "random", sampler_seed: int = 0, budget: str = "quick",
         space_file: str | Path | None = None, out: str | Path | None = None,
         verbose: bool = False, console: Console | None = None,
         max_failures: int | None = None, heartbeat: int | None = None) -> TuneResult:
    """Run trials of ``method`` (the class of ``base.method``) on ``base``'s data until the
    study holds ``trials`` complete trials, then write the best parameters (YAML) and return
    them.

    ``base`` comes from :func:`base_config`. ``storage`` defaults to
    ``sqlite:///<root>/studies.db``, ``study_name`` to ``<track>-<method>-<data>-<scenario>``,
    ``out`` to ``<root>/best/<study>.yaml``, ``heartbeat`` (seconds between a running trial's
    heartbeats) to 60. Unless ``verbose``, each trial's console output goes to
    ``console.log`` in its run directory and one line per trial is printed.

    Several workers (processes, machines) may run this on one study at once: each stops once
    the study holds ``trials`` complete trials after one of its own trials, so the study ends
    with at least ``trials`` and at most ``trials + workers - 1`` complete ones (the others'
    trials then under way still finish). Each writes the best-parameters file from the study
    as it stands when it stops; the last one to stop writes the final one.
    """
    import optuna

    if trials < 1:
        raise HundredError(f"--trials must be at least 1, got {trials}")
    heartbeat = heartbeat if heartbeat is not None else DEFAULT_HEARTBEAT
    console = console or Console(stderr=True)
    track = get_track(base.track)
    objective_name = track.primary.key
    overrides = spaces.load_space_file(space_file) if space_file else None
    space = spaces.space_for(method, budget, overrides)
    spaces.validate_space(space, base, method)

    label = track.scenario_label(base)
    study_name = study_name or "-".join(
        part for part in (base.track, base.method, base.data.label, label) if part)
    storage = storage or default_storage(base.root)

    def on_stale(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
        error = trial.user_attrs.get("error") or stale_error(trial.user_attrs.get("worker"), heartbeat)
        console.print(f"[{study_name}] trial {trial.number} FAILED: {error}; not counted",
                      highlight=False, markup=False)

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from here
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(storage, heartbeat, on_stale),
        sampler=make_sampler(sampler, sampler_seed, trials),
        direction=track.direction, load_if_exists=True)
    fixed = fixed_settings(base)
    _remember_setup(study, {"track": base.track, "method": base.method,
                            "fixed_settings": _digest(fixed), "space": spaces.describe(space)})

    me = worker_id()
    failures: list[str] = []
    max_failures = max_failures if max_failures is not None else max(3, trials)
    current: dict[str, int] = {}  # the number of the trial this worker is running

    def objective(trial: "optuna.Trial") -> float:
        current["number"] = trial.number
        params = spaces.suggest(trial, space)
        name = f"tune-{slug(study_name)}-t{trial.number:04d}"
        config = spaces.apply(base, params, origin=f"trial {trial.number}")
        config = with_values(config, {
            "name": name, "quiet": base.quiet or not verbose,
            "provenance": {"protocol": PROTOCOL, "phase": "tuning", "study": study_name,
                           "trial": trial.number, "tuned_params": params}})
        run_dir = Path(config.root) / config.track / config.method / name
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", me)
        output = None
        try:
            with _captured(not verbose) as output:
                summary = track.run(config, method=method(config.method_params, config))
        except HundredError as error:
            trial.set_user_attr("error", str(error))
            raise
        finally:
            if output is not None and run_dir.is_dir():
                write_text(run_dir / "console.log", output.getvalue())
        trial.set_user_attr("data", summary.get("data"))
        trial.set_user_attr("data_fingerprint", summary.get("data_fingerprint"))
        return float(summary[objective_name])

    def after_trial(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
        current.pop("number", None)
        fail_stale_trials(study)  # another worker's abandoned trial: FAIL, not counted here
        complete = len(_complete(study))
        params = spaces.format_params(trial.params)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            console.print(f"[{study_name}] trial {trial.number}: {objective_name} "
                          f"{trial.value:.2f}  ({params})  {complete}/{trials} complete",
                          highlight=False, markup=False)
        else:
            error = trial.user_attrs.get("error", "objective was not a finite number")
            failures.append(error)
            console.print(f"[{study_name}] trial {trial.number} FAILED: {error}  ({params})",
                          highlight=False, markup=False)
        if complete >= trials or len(failures) >= max_failures:
            study.stop()

    def lost_to_heartbeat() -> bool:
        """Whether this worker's running trial was failed meanwhile by another worker that
        found its heartbeat stale (this process was stalled longer than the grace period)."""
        number = current.pop("number", None)
        if number is None:
            return False
        mine = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        return bool(mine) and mine[0].state == optuna.trial.TrialState.FAIL \
            and STALE in str(mine[0].user_attrs.get("error", ""))

    fail_stale_trials(study)
    done = len(_complete(study))
    if done < trials:
        console.print(f"[{study_name}] {done} complete trials in {redact(storage)}; running "
                      f"until {trials} ({sampler} search, budget {budget}, worker {me}, "
                      f"heartbeat {heartbeat} s)", highlight=False, markup=False)
    while len(_complete(study)) < trials and len(failures) < max_failures:
        try:
            study.optimize(objective, callbacks=[after_trial], catch=(HundredError,),
                           gc_after_trial=True)
        except Exception as error:  # Optuna, telling a trial failed meanwhile: "Cannot tell a
            if not lost_to_heartbeat():  # FAIL trial" (or else, depending on the moment)
                raise
            console.print(f"[{study_name}] a trial of this worker was failed by another one "
                          f"(no heartbeat for {grace_period(heartbeat)} s: was this process "
                          f"stalled?); its result is dropped ({error})",
                          highlight=False, markup=False)
            fail_stale_trials(study)
    fail_stale_trials(study)
    if len(_complete(study)) < trials and len(failures) >= max_failures:
        raise HundredError(f"study {study_name}: {len(failures)} trials failed in this worker "
                           f"(last error: {failures[-1]}); stopped")
    best_path = Path(out) if out else default_best_path(base.root, study_name)
    best = None
    for _ in range(5):  # rewritten while other workers' trials end meanwhile
        latest = best_params(study, storage, sampler, budget, space, fixed, base)
        if latest == best:
            break
        best = latest
        write_text(best_path, yaml.safe_dump(best.model_dump(mode="json"), sort_keys=False))
    assert best is not None
    console.print(f"[{study_name}] best: trial {best.best_trial}, {best.objective} "
                  f"{best.value:.2f} ({spaces.format_params(best.params)}) -> {best_path}",
                  highlight=False, markup=False)
    return TuneResult(study_name, storage, best, best_path)


def best_params(study: "optuna.Study", storage: str, sampler: str, budget: str,
                space: spaces.SearchSpace, fixed: dict[str, Any], base: RunConfig) -> BestParams:
    """The study's best complete trial as a :class:`BestParams` record."""
    import optuna

    complete = _complete(study)
    if not complete:
        raise HundredError(f"study {study.study_name} has no complete trial yet")
    best = study.best_trial
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    attrs = best.user_attrs
    if not attrs.get("data_fingerprint"):
        raise HundredError(f"trial {best.number} of {study.study_name} did not record its data")
    track = get_track(base.track)
    return BestParams(
        track=base.track, method=base.method, study=study.study_name, storage=redact(storage),
        sampler=sampler, budget=budget, scenario=track.scenario_label(base),
        objective=track.primary.key, direction=study.direction.name.lower(),
        value=float(best.value), best_trial=best.number, best_run_dir=attrs.get("run_dir", ""),
        trials_complete=len(complete), trials_failed=len(failed), tuned_on=attrs["data"],
        tuning_data=TuningData(source=base.data.source, classes=base.data.classes,
                               options=base.data.options, name=attrs["data"],
                               fingerprint=attrs["data_fingerprint"]),
        params=dict(best.params), space=spaces.describe(space), fixed=fixed)
