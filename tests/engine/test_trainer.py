"""The training engine: learning, schedules, run directories, NaN stop, exact resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.engine.trainer import build_optimizer, lr_factor
from hundred.errors import HundredError
from hundred.models import create
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.methods.erm import ERM

TINY = ["track=classify", "method=erm", "model.name=convnet_d3", "train.device=cpu",
        "data.options={classes: 4, train_per_class: 24, val_per_class: 6, res: 16}",
        "data.batch_size=16", "train.epochs=3", "quiet=true", "optim.lr=0.05"]


def tiny(tmp_path, *extra):
    return build_config(overrides=TINY + [f"root={tmp_path}", *extra])


def final_weights(run_dir: Path) -> dict:
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    return load_file(run_dir / "checkpoints" / latest["weights"])


def test_erm_clearly_beats_chance_on_digits(tmp_path):
    config = build_config(overrides=[
        "track=classify", "method=erm", "model.name=convnet_d3", "train.device=cpu",
        "data.source=digits", "data.options={res: 16}", "data.batch_size=64",
        "data.augment=flip", "train.epochs=4", "quiet=true", "optim.lr=0.1", f"root={tmp_path}"])
    summary = TRACK.run(config)
    assert summary["val_top1"] > 85  # chance is 10 %


def test_run_directory_holds_everything(tmp_path):
    summary = TRACK.run(tiny(tmp_path, "name=first"))
    run_dir = Path(summary["run_dir"])
    assert run_dir == tmp_path / "classify" / "erm" / "first"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"val_top1", "val_top5", "train_loss", "lr"} <= set(records[-1])
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["seed"] == 0
    with pytest.raises(HundredError, match="holds a finished run"):
        TRACK.run(tiny(tmp_path, "name=first"))


def test_interrupted_run_resumes_bit_identical(tmp_path, monkeypatch):
    reference = TRACK.run(tiny(tmp_path, "name=reference"))

    class Killed(Exception):
        pass

    def die_at_epoch_2(self, epoch):
        if epoch == 2:
            raise Killed

    monkeypatch.setattr(ERM, "on_epoch_start", die_at_epoch_2)
    with pytest.raises(Killed):
        TRACK.run(tiny(tmp_path, "name=killed"))
    monkeypatch.undo()
    killed_dir = tmp_path / "classify" / "erm" / "killed"
    assert json.loads((killed_dir / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    resumed = TRACK.run(tiny(tmp_path, "name=killed"), resume_dir=killed_dir)

    for key in ("val_top1", "val_top5", "val_loss"):
        assert resumed[key] == reference[key]
    ref_w, res_w = final_weights(Path(reference["run_dir"])), final_weights(killed_dir)
    assert ref_w.keys() == res_w.keys()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)
    lines = (killed_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_kill_9_then_resume_matches_uninterrupted(tmp_path):
    """The acceptance test: SIGKILL a real process mid-run, then --resume it."""
    sets = [arg for s in TINY[2:] + ["train.epochs=6",
            "data.options={classes: 6, train_per_class: 100, val_per_class: 6, res: 16}"]
            for arg in ("--set", s)]
    base = [sys.executable, "-m", "hundred.cli", "run", "classify", "erm", "--root", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(base + sets + ["--name", "whole"], check=True, env=env, capture_output=True)
    victim = subprocess.Popen(base + sets + ["--name", "victim"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim_dir = tmp_path / "classify" / "erm" / "victim"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if (victim_dir / "metrics.jsonl").is_file() and \
                len((victim_dir / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    if victim.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (victim_dir / "summary.json").exists()
    subprocess.run(base[:-2] + ["--resume", str(victim_dir)], check=True, env=env,
                   capture_output=True)
    whole = json.loads((tmp_path / "classify/erm/whole/summary.json").read_text())
    resumed = json.loads((victim_dir / "summary.json").read_text())
    for key in ("val_top1", "val_top5", "val_loss"):
        assert resumed[key] == whole[key]
    assert all(torch.equal(a, b) for a, b in zip(
        final_weights(victim_dir).values(), final_weights(tmp_path / "classify/erm/whole").values()))


def test_nan_loss_stops_with_the_step(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = ERM.loss

    def poisoned(self, model, images, labels):
        calls["n"] += 1
        loss = original(self, model, images, labels)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(ERM, "loss", poisoned)
    with pytest.raises(HundredError, match="step 3"):
        TRACK.run(tiny(tmp_path))


def test_schedules():
    config = build_config(overrides=["schedule.warmup_epochs=1"]).schedule
    assert lr_factor(0, 10, 5, config) == pytest.approx(0.1)
    assert lr_factor(9, 10, 5, config) == pytest.approx(1.0)
    assert lr_factor(49, 10, 5, config) < 0.01  # cosine reaches ~0 at the end
    step = build_config(overrides=["schedule.name=step", "schedule.milestones=[2, 4]",
                                   "train.epochs=5"]).schedule
    assert [lr_factor(e * 10, 10, 5, step) for e in range(5)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01])


def test_no_weight_decay_on_norms_and_biases():
    model = create("resnet20", 10)
    optimizer = build_optimizer(model, build_config().optim)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in decayed) == (parameter.ndim > 1), name


def test_ema_and_label_smoothing_run(tmp_path):
    summary = TRACK.run(tiny(tmp_path, "train.ema_decay=0.9", "train.label_smoothing=0.1",
                                "train.epochs=1"))
    assert 0 <= summary["val_top1"] <= 100
    weights = final_weights(Path(summary["run_dir"]))
    assert any(k.startswith("ema.") for k in weights)


def test_the_ema_follows_the_weights_after_every_step(tmp_path):
    """decay ~0: the EMA is the model itself after each step; decay 0.9: an average that
    lags the model (a never-updated EMA would stay at the initial weights)."""
    for decay, name in ((1e-6, "copy"), (0.9, "lagging")):
        summary = TRACK.run(tiny(tmp_path, f"train.ema_decay={decay}", "train.epochs=1",
                                 f"name={name}"))
        weights = final_weights(Path(summary["run_dir"]))
        model = {k: v for k, v in weights.items() if not k.startswith(("ema.", "method."))}
        ema = {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}
        assert ema.keys() == model.keys()
        same = all(torch.allclose(ema[k], model[k], atol=1e-4) for k in model
                   if model[k].is_floating_point())
        assert same == (decay < 0.5)


def test_ema_warmup_forgets_the_initialisation_faster(tmp_path):
    """With a decay close to 1 a short run's plain EMA is still mostly the initial weights;
    with the warm-up (decay 1 - (1 + step)^(-2/3), capped) it is close to the trained model."""
    distances = {}
    for warmup in (False, True):
        summary = TRACK.run(tiny(tmp_path, "train.ema_decay=0.9999", f"train.ema_warmup={warmup}",
                                 "train.epochs=1", f"name=warmup-{warmup}"))
        weights = final_weights(Path(summary["run_dir"]))
        model = {k: v for k, v in weights.items() if not k.startswith(("ema.", "method."))}
        ema = {k[4:]: v for k, v in weights.items() if k.startswith("ema.")}
        distances[warmup] = sum(float((ema[k] - model[k]).norm()) for k in model
                                if model[k].is_floating_point() and "running" not in k)
    assert distances[True] < 0.5 * distances[False]


def test_model_input_size_can_differ_from_the_data_resolution(tmp_path):
    """Pack a margin (20 px), train and evaluate on 16 px crops: the usual ImageNet recipe."""
    summary = TRACK.run(tiny(tmp_path, "train.epochs=1", "data.image_size=16",
                                "data.augment=rrc-flip",
                                "data.options={classes: 4, train_per_class: 24, val_per_class: 6, res: 20}"))
    assert 0 <= summary["val_top1"] <= 100
