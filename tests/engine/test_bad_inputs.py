"""Bad input to runs and resumes gets one clear error and loses nothing: run names stay inside
the root, a failed run says so and can be continued or replaced, killed writes leave no
temporaries behind, and unreadable checkpoints are named and skipped for older ones."""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import pytest
import torch

from hundred.config import build_config
from hundred.engine.checkpoint import load_checkpoint, save_checkpoint
from hundred.engine.rundir import new_run_dir
from hundred.errors import HundredError
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.methods.erm import ERM

TINY = ["track=classify", "method=erm", "model.name=convnet_d3", "train.device=cpu",
        "data.options={classes: 4, train_per_class: 16, val_per_class: 4, res: 8}",
        "data.batch_size=16", "train.epochs=3", "quiet=true", "optim.lr=0.05",
        "train.keep_checkpoints=3"]


def tiny(root: Path, *extra: str):
    return build_config(overrides=TINY + [f"root={root}", *extra])


class Killed(Exception):
    """Stands in for a crash during training."""


def crash_at_epoch(epoch: int):
    def on_epoch_start(self, current):
        if current == epoch:
            raise Killed("the machine went down")
    return on_epoch_start


def crashed_run(root: Path, name: str, epoch: int, monkeypatch) -> Path:
    """Run ``name`` until it crashes at the start of ``epoch``; returns its run directory."""
    with monkeypatch.context() as patch:
        patch.setattr(ERM, "on_epoch_start", crash_at_epoch(epoch))
        with pytest.raises(Killed):
            TRACK.run(tiny(root, f"name={name}"))
    return root / "classify/erm" / name


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", "a\\b", " "])
def test_run_names_that_would_leave_the_root_are_refused(tmp_path, name):
    with pytest.raises(HundredError, match="name"):
        tiny(tmp_path, f"name={json.dumps(name)}")
    with pytest.raises(HundredError):  # the run directory code checks again
        new_run_dir(tmp_path, "classify", "erm", name, "x")
    assert not (tmp_path.parent / "escape").exists()


def test_an_unwritable_root_is_one_clear_error(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(HundredError, match="Read-only file system"):
        new_run_dir(tmp_path / "runs", "classify", "erm", None, "x")


def test_a_failed_run_is_marked_and_can_be_resumed(tmp_path, monkeypatch):
    run_dir = crashed_run(tmp_path, "crashed", 1, monkeypatch)
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["error"] == "the machine went down" and failed["type"] == "Killed"
    with pytest.raises(HundredError, match="unfinished run .it failed: the machine went down.*"
                                           "--resume.*--replace"):
        TRACK.run(tiny(tmp_path, "name=crashed"))
    summary = TRACK.run(tiny(tmp_path, "name=crashed"), resume_dir=run_dir)
    assert summary["epochs"] == 3 and not (run_dir / "failed.json").exists()
    with pytest.raises(HundredError, match="finished run"):
        TRACK.run(tiny(tmp_path, "name=crashed"))


def test_resume_removes_the_temporaries_of_a_killed_write(tmp_path, monkeypatch):
    run_dir = crashed_run(tmp_path, "cut", 2, monkeypatch)
    stale = [run_dir / "checkpoints/.epoch-0002.safetensors.k2j4x_0a.tmp",
             run_dir / ".metrics.jsonl.abc123.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    TRACK.run(tiny(tmp_path, "name=cut"), resume_dir=run_dir)
    assert not any(path.exists() for path in stale)
    assert (run_dir / "summary.json").is_file()


def checkpoints(directory: Path, epochs: int = 3) -> None:
    for epoch in range(epochs):
        state = {"epoch": epoch, "optimizer": {}, "method": {}, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": [], "loader": {"epoch": epoch + 1, "batch": 0}}
        save_checkpoint(directory, epoch, {"w": torch.full((2,), float(epoch))}, state, keep=3)


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("damage", ["truncated weights", "pickle with code", "missing key",
                                    "empty state"])
def test_an_unreadable_newest_checkpoint_falls_back_to_an_older_one(tmp_path, damage):
    checkpoints(tmp_path)
    newest = tmp_path / "epoch-0002"
    if damage == "truncated weights":
        data = Path(f"{newest}.safetensors").read_bytes()
        Path(f"{newest}.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "pickle with code":
        Path(f"{newest}.state.pt").write_bytes(pickle.dumps(Payload()))
    elif damage == "missing key":
        state = torch.load(f"{newest}.state.pt", weights_only=True)
        del state["optimizer"]
        torch.save(state, f"{newest}.state.pt")
    else:
        Path(f"{newest}.state.pt").write_bytes(b"")
    warnings: list[str] = []
    epoch, weights, _ = load_checkpoint(tmp_path, warn=warnings.append)
    assert epoch == 1 and torch.equal(weights["w"], torch.full((2,), 1.0))
    assert len(warnings) == 1 and "epoch-0002" in warnings[0] and "epoch-0001" in warnings[0]


def test_a_broken_pointer_or_no_loadable_checkpoint_is_named(tmp_path):
    checkpoints(tmp_path)
    (tmp_path / "latest.json").write_text("{not json")
    assert load_checkpoint(tmp_path)[0] == 2  # the files themselves say what exists
    for path in tmp_path.glob("*.safetensors"):
        path.write_bytes(b"\x00" * 7)
    with pytest.raises(HundredError) as error:
        load_checkpoint(tmp_path)
    assert all(f"epoch-000{k}.safetensors" in str(error.value) for k in range(3))
    assert "--replace" in str(error.value)


def test_a_resumed_run_skips_a_damaged_newest_checkpoint(tmp_path, monkeypatch):
    reference = TRACK.run(tiny(tmp_path, "name=reference"))
    run_dir = crashed_run(tmp_path, "damaged", 2, monkeypatch)
    (run_dir / "checkpoints/epoch-0001.state.pt").write_bytes(b"garbage")
    resumed = TRACK.run(tiny(tmp_path, "name=damaged"), resume_dir=run_dir)
    assert resumed["val_loss"] == reference["val_loss"]  # redone from epoch 1, same result


@pytest.mark.parametrize("lr, message", [("1e300", "optim.lr"), ("nan", "optim.lr"),
                                         ("1e30", "NaN or infinite")])
def test_a_diverging_learning_rate_stops_with_one_line(tmp_path, capsys, lr, message):
    """A rate no float32 weight can take is refused up front; one that makes the loss blow up
    stops the run at the step it happened, and the run is marked failed."""
    from hundred.cli import main

    code = main(["run", "classify", "erm", "--root", str(tmp_path), "--lr", lr,
                 "--name", "diverged",
                 *[a for s in TINY[2:] if not s.startswith("optim.lr") for a in ("--set", s)]])
    assert code == 2
    printed = capsys.readouterr().err
    error = printed[printed.index("error:"):]  # after the run's own progress lines
    assert message in error and "Traceback" not in printed and error.count("error:") == 1
    assert not (tmp_path / "classify/erm/diverged/summary.json").exists()
    if message == "NaN or infinite":
        assert (tmp_path / "classify/erm/diverged/failed.json").is_file()


def cli_args(root: Path, name: str) -> list[str]:
    sets = [a for s in TINY[2:] for a in ("--set", s)]
    return ["run", "classify", "erm", "--root", str(root), "--name", name, *sets]


def test_replace_starts_an_unfinished_run_again_but_keeps_a_finished_one(tmp_path, monkeypatch,
                                                                          capsys):
    from hundred.cli import main

    crashed_run(tmp_path, "again", 1, monkeypatch)
    assert main(cli_args(tmp_path, "again")) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(cli_args(tmp_path, "again") + ["--replace"]) == 0
    run_dir = tmp_path / "classify/erm/again"
    assert (run_dir / "summary.json").is_file() and not (run_dir / "failed.json").exists()
    assert main(cli_args(tmp_path, "again") + ["--replace"]) == 2
    assert "finished run; it is kept" in capsys.readouterr().err
    assert (run_dir / "summary.json").is_file()


def test_a_file_system_that_says_no_is_one_line(tmp_path, monkeypatch, capsys):
    from hundred.cli import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x"))

    monkeypatch.setattr("hundred.io.tempfile.mkstemp", read_only)  # every file write's first step
    assert main(cli_args(tmp_path, "ro")) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: Read-only file system") and len(
        [line for line in error if line.startswith("error:")]) == 1
