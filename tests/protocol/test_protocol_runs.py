"""The protocol end to end at tiny scale: `check` prints both leaderboards and writes its
report; the evaluation phase never loads the tuning data; every run records its provenance;
a killed study resumes keeping its trials; two workers on one SQLite study both add trials;
a dead worker's trial is failed by its stale heartbeat (PostgreSQL: test_postgres.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from hundred.cli import main
from hundred.protocol.check import check
from hundred.registry import get_method, get_track
from hundred.tracks.incremental import scenario

WA = get_method("incremental", "wa")

TUNE, EVAL, SCENARIO = "synth100[0-9]", "synth100[10-19]", "B0-Inc5"
OPTIONS = "data.options={classes: 20, train_per_class: 10, val_per_class: 5, res: 8}"
SPACE = "train.epochs: [1]\ndata.batch_size: [16, 32]\n"  # small and never failing
# One thread per process: these models are tiny, and two processes with two OpenMP threads
# each on a 2-core machine spend most of their time waiting for each other.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def checked(tmp_path_factory, space_file):
    """One tiny `check` of two methods, recording every dataset a run loads."""
    out = tmp_path_factory.mktemp("check") / "out"
    loads: list[dict] = []
    original = scenario.load_data

    def recording(config):
        dataset = original(config)
        loads.append({"phase": config.provenance.phase, "spec": config.data.label,
                      "class_ids": set(dataset.class_ids), "fingerprint": dataset.info["fingerprint"]})
        return dataset

    patch = pytest.MonkeyPatch()
    patch.setattr(scenario, "load_data", recording)
    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(printed):
            result = check(get_track("incremental"), ["finetune", "wa"], TUNE, EVAL, trials=2,
                           seeds=2, out=out, space_file=space_file,
                           overrides=[OPTIONS, "train.device=cpu",
                                      f"incremental.scenario={SCENARIO}"])
    finally:
        patch.undo()
        torch.set_num_threads(threads)
    return result, loads, printed.getvalue()


def test_check_prints_both_leaderboards_and_writes_the_report(checked):
    result, _, printed = checked
    assert "Conventional" in printed and "Tune-then-evaluate" in printed
    assert "tuned parameters" in printed and "change" in printed
    assert "conventional rank" in printed  # printed to a non-terminal: headers are not cut
    markdown = result.report.markdown.read_text()
    assert "tuned and reported on synth100[0-9]" in markdown
    assert "evaluated on synth100[10-19]" in markdown and "conventional rank" in markdown
    assert result.report.html.is_file() and len(result.report.plots) >= 2
    assert {row.method for row in result.evaluation.rows} == {"finetune", "wa"}
    assert all(len(row.runs) == 2 for row in result.evaluation.rows)
    assert (result.out / "studies.db").is_file() and len(list((result.out / "best").glob("*.yaml"))) == 2


def test_evaluation_phase_never_reads_the_tuning_data(checked):
    _, loads, _ = checked
    tuning = [load for load in loads if load["phase"] == "tuning"]
    evaluation = [load for load in loads if load["phase"] == "evaluation"]
    assert len(tuning) == 4 and len(evaluation) == 4  # 2 methods x (2 trials | 2 seeds)
    assert {load["spec"] for load in tuning} == {TUNE}
    assert {load["spec"] for load in evaluation} == {EVAL}
    tuning_classes = set().union(*(load["class_ids"] for load in tuning))
    assert all(not (load["class_ids"] & tuning_classes) for load in evaluation)
    assert not ({load["fingerprint"] for load in evaluation} & {load["fingerprint"] for load in tuning})


def test_every_run_records_protocol_phase_and_tuned_parameters(checked):
    result, _, _ = checked
    for best in result.bests:
        runs = result.out / "incremental" / best.method
        evaluations = sorted(runs.glob("eval-*"))
        assert len(evaluations) == 2
        for run_dir in evaluations:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())["provenance"]
            summary = json.loads((run_dir / "summary.json").read_text())
            for record in (config, summary):
                assert record["protocol"] == "tune-then-evaluate" and record["phase"] == "evaluation"
                assert record["tuned_on"] == TUNE and record["tuned_params"] == best.params
                assert record["tuning_fingerprint"] == best.tuning_data.fingerprint
            assert summary["data_fingerprint"] != best.tuning_data.fingerprint
        trials = sorted(runs.glob("tune-*"))
        assert len(trials) == 2
        for number, run_dir in enumerate(trials):
            summary = json.loads((run_dir / "summary.json").read_text())
            assert (summary["phase"], summary["study"], summary["trial"]) == ("tuning", best.study, number)
            assert summary["tuned_on"] is None and summary["data"] == TUNE


def test_evaluate_again_reuses_finished_runs(checked, capsys):
    result, _, _ = checked
    best = next(b for b in result.bests if b.method == "wa")
    path = next((result.out / "best").glob("*-wa-*.yaml"))
    before = sorted((result.out / "incremental" / "wa").iterdir())
    assert main(["evaluate", "incremental", "wa", "--params", str(path), "--data", EVAL,
                 "--seeds", "2"]) == 0
    assert "already done" in capsys.readouterr().err
    assert sorted((result.out / "incremental" / "wa").iterdir()) == before
    assert best.params == yaml.safe_load(path.read_text())["params"]


# -- several processes on one study ---------------------------------------------------------------
def tune_command(root: Path, study: str, trials: int, space_file: Path) -> list[str]:
    return [sys.executable, "-m", "hundred.cli", "tune", "incremental", "finetune", "--data", TUNE,
            "--scenario", SCENARIO, "--trials", str(trials), "--root", str(root), "--study", study,
            "--space", str(space_file), "--set", OPTIONS, "--device", "cpu"]


def complete_count(database: Path, study: str) -> int:
    """COMPLETE trials of ``study``, read straight from the SQLite file (0 before it exists)."""
    if not database.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection:
            return connection.execute(
                "SELECT count(*) FROM trials JOIN studies USING (study_id) "
                "WHERE study_name = ? AND state = 'COMPLETE'", (study,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def load(root: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{root / 'studies.db'}")


def test_killed_study_resumes_and_keeps_its_finished_trials(tmp_path, space_file):
    study, trials = "killed", 5
    worker = subprocess.Popen(tune_command(tmp_path, study, trials, space_file),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)
    deadline = time.monotonic() + 240
    while complete_count(tmp_path / "studies.db", study) < 1:
        assert worker.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.1)
    worker.kill()  # SIGKILL: no cleanup of any kind
    worker.wait()
    finished = {t.number: t.value for t in load(tmp_path, study).trials
                if t.state == optuna.trial.TrialState.COMPLETE}
    assert 1 <= len(finished) < trials

    rerun = subprocess.run(tune_command(tmp_path, study, trials, space_file), capture_output=True,
                           text=True, timeout=300, env=ONE_THREAD)
    assert rerun.returncode == 0, rerun.stderr
    after = load(tmp_path, study).trials
    complete = {t.number: t.value for t in after if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(complete) == trials
    assert all(complete.get(number) == value for number, value in finished.items())
    best = yaml.safe_load(next((tmp_path / "best").glob("*.yaml")).read_text())
    assert best["trials_complete"] == trials


def test_two_workers_on_one_sqlite_study_both_add_trials(tmp_path, space_file):
    study, trials = "shared", 10
    workers = [subprocess.Popen(tune_command(tmp_path, study, trials, space_file),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=ONE_THREAD)
               for _ in range(2)]
    for worker in workers:
        _, errors = worker.communicate(timeout=400)
        assert worker.returncode == 0, errors
    all_trials = load(tmp_path, study).trials
    complete = [t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= trials
    assert not [t for t in all_trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    assert len({t.number for t in all_trials}) == len(all_trials)
    for trial in complete:  # every trial is a normal, finished run directory
        assert (Path(trial.user_attrs["run_dir"]) / "summary.json").is_file()


# -- in one process -------------------------------------------------------------------------------
def tiny_base(root: Path, *extra: str):
    from hundred.protocol.tune import base_config

    track = get_track("incremental")
    return base_config(track, WA, TUNE, "quick", root=str(root), overrides=[
        OPTIONS, "train.device=cpu", f"incremental.scenario={SCENARIO}", *extra])


def test_tpe_study_refuses_other_settings_and_failures_are_recorded(tmp_path, space_file):
    from hundred.errors import HundredError
    from hundred.protocol.tune import tune

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = tune(tiny_base(tmp_path), WA, 2, sampler="tpe", study_name="s", space_file=space_file)
        assert result.best.trials_complete == 2 and result.best.sampler == "tpe"
        assert result.best_path.is_file()
        with pytest.raises(HundredError, match="different space"):
            tune(tiny_base(tmp_path), WA, 3, study_name="s")  # the quick grid, not space_file
        with pytest.raises(HundredError, match="different fixed settings"):
            tune(tiny_base(tmp_path, "incremental.memory=50"), WA, 3, study_name="s",
                 space_file=space_file)
        # every candidate fails (a batch larger than a task's 50 images): FAIL, then a stop
        impossible = tmp_path / "impossible.yaml"
        impossible.write_text("train.epochs: [1]\ndata.batch_size: [64, 128]\n")
        with pytest.raises(HundredError, match="trials failed"):
            tune(tiny_base(tmp_path), WA, 2, study_name="bad", space_file=impossible, max_failures=2)
    finally:
        torch.set_num_threads(threads)
    failed = load(tmp_path, "bad").trials
    assert [t.state for t in failed] == [optuna.trial.TrialState.FAIL] * 2
    assert all("no batch" in t.user_attrs["error"] for t in failed)



def age_heartbeat(database: Path, study: str, number: int) -> None:
    """Make trial ``number``'s last heartbeat a minute old, as if its worker had died then."""
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as connection, connection:
        connection.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds') WHERE trial_id ="
            " (SELECT trial_id FROM trials JOIN studies USING (study_id) WHERE study_name = ?"
            " AND number = ?)", (study, number))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the abandoned trial's study.ask()
def test_stale_trials_are_failed_and_not_counted(tmp_path, space_file, monkeypatch):
    """Heartbeats (1 s, grace 2 s): a trial left RUNNING by a dead worker is failed when a worker
    starts; a trial of this worker whose heartbeat stops is failed by another worker meanwhile
    and dropped here; neither counts toward --trials or this worker's failure cap (1)."""
    from rich.console import Console

    from hundred.protocol import tune as tuning

    url, database = f"sqlite:///{tmp_path / 'studies.db'}", tmp_path / "studies.db"
    storage = tuning.open_storage(url, heartbeat=1)
    abandoned = optuna.create_study(study_name="stale", storage=storage, direction="maximize").ask()
    abandoned.set_user_attr("worker", "elsewhere:1")
    storage.record_heartbeat(abandoned._trial_id)
    age_heartbeat(database, "stale", abandoned.number)

    beaten: set[int] = set()
    record = tuning._storage_class().record_heartbeat

    def first_heartbeat_only(self, trial_id):  # from here on, a trial beats once, then stalls
        if trial_id not in beaten:
            beaten.add(trial_id)
            record(self, trial_id)

    original = scenario.load_data
    stalled: list[int] = []

    def fail_first_trial(config):  # meanwhile "another worker" finds trial 1 stale and fails it
        if not stalled:
            stalled.append(config.provenance.trial)
            age_heartbeat(database, "stale", config.provenance.trial)
            tuning.fail_stale_trials(optuna.load_study(study_name="stale",
                                                       storage=tuning.open_storage(url, 1)))
        return original(config)

    monkeypatch.setattr(tuning._storage_class(), "record_heartbeat", first_heartbeat_only)
    monkeypatch.setattr(scenario, "load_data", fail_first_trial)
    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = tuning.tune(tiny_base(tmp_path), WA, 2, storage=url, study_name="stale",
                             space_file=space_file, heartbeat=1, max_failures=1,
                             console=Console(file=printed, width=400))
    finally:
        torch.set_num_threads(threads)
    said = printed.getvalue()
    trials = load(tmp_path, "stale").trials
    fail, complete = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    assert [t.state for t in trials] == [fail, fail, complete, complete] and stalled == [1]
    assert trials[0].user_attrs["error"] == "worker elsewhere:1 stopped (no heartbeat for 2 s)"
    assert trials[1].user_attrs["error"] == f"worker {tuning.worker_id()} stopped (no heartbeat for 2 s)"
    assert "trial 0 FAILED: worker elsewhere:1 stopped (no heartbeat for 2 s); not counted" in said
    assert "a trial of this worker was failed by another one" in said
    assert (result.best.trials_complete, result.best.trials_failed) == (2, 2)
    assert result.best.best_trial in (2, 3)
