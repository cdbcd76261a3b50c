"""Tuning workers on many machines, the way a user runs them: several `hundred tune`
processes share one study in a PostgreSQL database. One of two workers is killed (SIGKILL)
in the middle of a trial and restarted; the study must end with every trial COMPLETE or FAIL
(the killed one FAIL, failed for its stale heartbeat), at least --trials complete ones, no
duplicate, and one best-parameters file naming the study's best trial.

Needs a server: HUNDRED_TEST_POSTGRES=postgresql+psycopg://USER:PASS@HOST:PORT/DB (.ci/run
starts one with .ci/postgres.sh and sets it) and the driver the URL names; skipped otherwise.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url

URL = os.environ.get("HUNDRED_TEST_POSTGRES", "")
pytestmark = pytest.mark.skipif(
    not URL, reason="HUNDRED_TEST_POSTGRES is not set (.ci/run sets it after starting a "
    "PostgreSQL server with .ci/postgres.sh)")

TRIALS = 6
HEARTBEAT = 2  # seconds; the grace period is two heartbeats
GRACE = 2 * HEARTBEAT
TUNE, SCENARIO = "synth100[0-9]", "B0-Inc5"
# as in test_protocol_runs.py: a trial runs about a second (mostly making the data and the
# model), long enough to be caught running
OPTIONS = "data.options={classes: 20, train_per_class: 10, val_per_class: 5, res: 8}"
SPACE = "train.epochs: [1]\ndata.batch_size: [16, 32]\n"  # never failing
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
RUNNING, COMPLETE, FAIL = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE,
                           optuna.trial.TrialState.FAIL)


@pytest.fixture(scope="module")
def storage():
    """An RDB storage on the server (no heartbeat: this process only reads), or a skip."""
    from sqlalchemy import create_engine, text

    url = make_url(URL)
    driver = url.get_driver_name()  # psycopg (postgresql+psycopg://) or psycopg2 (postgresql://)
    pytest.importorskip(driver, reason=f"the PostgreSQL driver {driver} is not installed")
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - any driver error means: no server to test on
        pytest.skip(f"cannot reach PostgreSQL at {url.render_as_string(hide_password=True)}: "
                    f"{str(error).splitlines()[0]}")
    finally:
        engine.dispose()
    return optuna.storages.RDBStorage(URL)


def worker(root: Path, study: str, space: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "hundred.cli", "tune", "incremental", "finetune",
               "--data", TUNE, "--scenario", SCENARIO, "--trials", str(TRIALS),
               "--root", str(root), "--study", study, "--space", str(space), "--set", OPTIONS,
               "--device", "cpu", "--storage", URL, "--heartbeat", str(HEARTBEAT)]
    with open(log, "a") as handle:  # a file, not a pipe: nobody reads while they run
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=ONE_THREAD)


def trials_of(storage, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def test_killed_worker_on_a_postgres_study(tmp_path, storage):
    study = f"pg-{uuid.uuid4().hex[:10]}"  # a fresh study in a shared database
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    logs = [tmp_path / "survivor.log", tmp_path / "victim.log", tmp_path / "restarted.log"]
    started = time.monotonic()
    survivor = worker(tmp_path, study, space, logs[0])
    victim = worker(tmp_path, study, space, logs[1])
    processes = [survivor, victim]
    try:
        # kill the victim while one of its trials runs (the trials record their worker)
        tag = f"{socket.gethostname()}:{victim.pid}"
        deadline = time.monotonic() + 90
        while True:
            running = [t for t in trials_of(storage, study)
                       if t.state == RUNNING and t.user_attrs.get("worker") == tag]
            if running:
                break
            assert victim.poll() is None, f"the victim ended first:\n{logs[1].read_text()}"
            assert time.monotonic() < deadline, "the victim never ran a trial"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)  # no cleanup of any kind
        victim.wait()
        killed = running[0].number
        # once its heartbeat is older than the grace period, the restarted worker (if the
        # survivor has not done it meanwhile) fails the killed trial as it starts
        time.sleep(GRACE + 0.5)
        restarted = worker(tmp_path, study, space, logs[2])
        processes.append(restarted)
        for process, log in ((survivor, logs[0]), (restarted, logs[2])):
            process.wait(timeout=120)
            assert process.returncode == 0, log.read_text()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = time.monotonic() - started

    try:
        trials = trials_of(storage, study)
        best_trial = optuna.load_study(study_name=study, storage=storage).best_trial
    finally:
        optuna.delete_study(study_name=study, storage=storage)
    complete = [t for t in trials if t.state == COMPLETE]
    failed = [t for t in trials if t.state == FAIL]
    # no trial left RUNNING (or WAITING): each is complete or failed
    assert len(complete) + len(failed) == len(trials), [(t.number, t.state) for t in trials]
    # --trials counts complete trials: at least N; a worker stops after its own trial once the
    # study holds N, so two concurrent workers may add one more (never N + 2)
    assert TRIALS <= len(complete) <= TRIALS + 1
    # only the killed trial failed, for its stale heartbeat, and a live worker said so
    assert [t.number for t in failed] == [killed]
    error = failed[0].user_attrs["error"]
    assert error == f"worker {tag} stopped (no heartbeat for {GRACE} s)"
    said = "".join(log.read_text() for log in (logs[0], logs[2]))
    assert f"trial {killed} FAILED: worker {tag} stopped" in " ".join(said.split())
    # nothing duplicated: trial numbers and run directories are unique, each a finished run
    assert len({t.number for t in trials}) == len(trials)
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(run_dirs)
    for trial in complete:
        assert (Path(trial.user_attrs["run_dir"]) / "summary.json").is_file()
    assert not (Path(failed[0].user_attrs["run_dir"]) / "summary.json").exists()
    # one best-parameters file, written from the final study
    files = list((tmp_path / "best").glob("*.yaml"))
    assert [f.name for f in files] == [f"{study}.yaml"]
    from hundred.protocol.tune import read_best

    best = read_best(files[0])
    assert best.study == study and best.best_trial == best_trial.number
    assert best.value == best_trial.value and best.params == best_trial.params
    assert (best.trials_complete, best.trials_failed) == (len(complete), 1)
    assert best.storage == make_url(URL).render_as_string(hide_password=True)  # no password
    print(f"{len(complete)} complete, trial {killed} failed; {elapsed:.1f} s")
