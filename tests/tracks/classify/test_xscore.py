"""``hundred xscore``: the score (a hand-computed example and the properties of its form), the
Spearman correlation, a tiny models x datasets sweep through the CLI, and a sweep that is
interrupted inside one cell and then completed without retraining the finished cells."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hundred.cli import main
from hundred.engine.trainer import Trainer
from hundred.errors import HundredError
from hundred.track import Track
from hundred.tracks.classify.xscore import (XScoreParams, parse_data_options, spearman,
                                            split_list, xscore)

# three models on four datasets (top-1, %)
ACCURACY = {"m1": {"a": 90, "b": 80, "c": 70, "d": 60},
            "m2": {"a": 80, "b": 90, "c": 60, "d": 70},
            "m3": {"a": 70, "b": 70, "c": 80, "d": 50}}


def test_xscore_by_hand():
    # ranks per dataset: a 1,2,3  b 2,1,3  c 2,3,1  d 2,1,3 -> percentiles 0 / 50 / 100
    # m1 [0,50,50,50]: mean 37.5, var (37.5² + 3·12.5²)/4 = 468.75
    # m2 [50,0,100,0]: mean 37.5, var (12.5² + 2·37.5² + 62.5²)/4 = 1718.75
    # m3 [100,100,0,100]: mean 75, var (3·25² + 75²)/4 = 1875
    rows = {row.model: row for row in xscore(ACCURACY)}
    assert [rows[m].ranks for m in ("m1", "m2", "m3")] == [(1, 2, 2, 2), (2, 1, 3, 1),
                                                          (3, 3, 1, 3)]
    expected = {"m1": (75.0, math.sqrt(468.75)), "m2": (75.0, math.sqrt(1718.75)),
                "m3": (67.5, math.sqrt(1875.0))}
    for model, (mean, spread) in expected.items():
        assert rows[model].mean_top1 == pytest.approx(mean)
        assert rows[model].rank_std == pytest.approx(spread)
        assert rows[model].xscore == pytest.approx(mean - spread)
    # the defining claim: same mean accuracy, the model with the steadier ranking scores higher
    assert rows["m1"].xscore > rows["m2"].xscore
    half = {row.model: row.xscore for row in xscore(ACCURACY, XScoreParams(rank_weight=0.5))}
    assert half["m2"] == pytest.approx(75.0 - 0.5 * math.sqrt(1718.75))


def test_xscore_ties_share_their_mean_rank():
    rows = xscore({"p": {"a": 50, "b": 60}, "q": {"a": 50, "b": 40}})
    assert rows[0].ranks == (1.5, 1) and rows[1].ranks == (1.5, 2)
    # percentiles p [50, 0], q [50, 100]: both spread 25
    assert [row.xscore for row in rows] == pytest.approx([55 - 25, 45 - 25])


def test_xscore_properties():
    rng = np.random.default_rng(0)
    models, datasets = [f"m{i}" for i in range(5)], list("abcd")
    matrix = rng.uniform(10, 90, size=(5, 4))
    table = {m: dict(zip(datasets, row)) for m, row in zip(models, matrix)}
    rows = xscore(table)
    for row in rows:  # bounded by the mean accuracy and by mean - 50 (rank_weight 1)
        assert row.mean_top1 - 50 <= row.xscore <= row.mean_top1
    # a model holding one rank everywhere loses nothing to the stability term
    steady = {m: dict(zip(datasets, np.full(4, 10.0 * (i + 1)))) for i, m in enumerate(models)}
    assert all(row.xscore == pytest.approx(row.mean_top1) for row in xscore(steady))
    # one model: its mean; rank_weight 0: the mean
    assert xscore({"m0": table["m0"]})[0].xscore == pytest.approx(matrix[0].mean())
    assert [r.xscore for r in xscore(table, XScoreParams(rank_weight=0))] == \
        pytest.approx(matrix.mean(axis=1))
    # the order of models and datasets does not matter
    shuffled = {m: {d: table[m][d] for d in reversed(datasets)} for m in reversed(models)}
    assert {r.model: r.xscore for r in xscore(shuffled)} == \
        pytest.approx({r.model: r.xscore for r in rows})
    # +c on one dataset for every model: every xScore moves by c / D, the ranking stays
    shifted = {m: {**table[m], "b": table[m]["b"] + 8.0} for m in models}
    assert [r.xscore for r in xscore(shifted)] == pytest.approx([r.xscore + 2.0 for r in rows])
    with pytest.raises(HundredError, match="expected"):
        xscore({"p": {"a": 1, "b": 2}, "q": {"a": 1}})
    with pytest.raises(ValueError):
        XScoreParams(rank_weight=-1)


def test_spearman():
    # ranks 1,2,3,4 vs 1,2,4,3: sum d² = 2, rho = 1 - 6·2 / (4·15) = 0.8
    result = spearman([1, 2, 3, 4], [10, 20, 40, 30])
    assert result.rho == pytest.approx(0.8) and result.models == 4
    assert spearman([3, 1, 2], [30, 10, 20]).rho == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]).rho == pytest.approx(-1.0)
    two = spearman([1, 2], [2, 1])
    assert two.rho is None and "undefined" in two.describe() and "at least 3" in two.note
    assert spearman([1, 1, 1], [1, 2, 3]).rho is None


def test_argument_lists():
    assert split_list("synth100[0,3-5], digits", "--data") == ["synth100[0,3-5]", "digits"]
    with pytest.raises(HundredError, match="more than once"):
        split_list("a,b,a", "--models")
    with pytest.raises(HundredError, match="empty entry"):
        split_list("a,,b", "--models")
    options = parse_data_options(["synth100[0-3]:classes=8", "digits:res=8"],
                                 ["synth100[0-3]", "digits"])
    assert options == {"synth100[0-3]": {"classes": 8}, "digits": {"res": 8}}
    with pytest.raises(HundredError, match="not one of --data"):
        parse_data_options(["cifar10:res=8"], ["digits"])


SYNTH = ["--data-option", "synth100:classes=4", "--data-option", "synth100:res=8",
         "--data-option", "synth100:train_per_class=8", "--data-option",
         "synth100:val_per_class=4"]


def sweep_args(out: Path, *extra: str) -> list[str]:
    return ["xscore", "--models", "convnet_d3,resnet20", "--data", "synth100,digits",
            "--epochs", "1", "--out", str(out), *SYNTH, "--data-option", "digits:res=8",
            "--set", "data.batch_size=32", "--device", "cpu", *extra]


def test_sweep_end_to_end_and_rerun_reuses_every_cell(tmp_path, capsys, monkeypatch):
    out = tmp_path / "xs"
    assert main(sweep_args(out)) == 0
    printed = capsys.readouterr()
    report = json.loads((out / "xscore.json").read_text())
    assert report["models"] == ["convnet_d3", "resnet20"]
    assert report["data"] == ["synth100", "digits"] and report["reference"] == "synth100"
    for model in report["models"]:
        for data in report["data"]:
            run_dir = Path(report["runs"][model][data])
            assert run_dir.parent == out / "classify" / "erm"
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["model"] == model and summary["epochs"] == 1
            assert report["accuracy"][model][data] == summary["val_top1"]
    expected = {r.model: r.xscore for r in xscore(report["accuracy"])}
    assert {s["model"]: s["xscore"] for s in report["scores"]} == pytest.approx(expected)
    assert report["spearman"]["rho"] is None and report["spearman"]["models"] == 2
    assert "xScore" in printed.out and "undefined" in printed.out
    assert "| convnet_d3 |" in (out / "xscore.md").read_text()
    # the same command again trains nothing and writes the same numbers
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}

    def no_training(self, *args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(Track, "run", no_training)
    assert main(sweep_args(out)) == 0
    assert "already done" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == stamps
    assert json.loads((out / "xscore.json").read_text())["scores"] == report["scores"]
    # other settings under the same --out are refused, naming what differs
    assert main(sweep_args(out, "--seed", "0", "--set", "optim.lr=0.05")) == 2
    assert "optim.lr: 0.1 -> 0.05" in capsys.readouterr().err


def test_bad_arguments_fail_before_anything_trains(tmp_path, capsys):
    out = tmp_path / "bad"
    cases = [(["--models", "convnet_d3,nonet"], "unknown model 'nonet'"),
             (["--models", "resnet20,resnet20"], "more than once"),
             (["--data", "synth100,digits,nodata"], "not a data source"),
             (["--epochs", "0"], "at least 1"),
             (["--set", "train.epochs=3"], "set by hundred xscore"),
             (["--reference", "cifar10"], "not one of --data")]
    for (flag, value), message in cases:
        args = sweep_args(out)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
        assert main(args) == 2, flag
        assert message in capsys.readouterr().err, flag
    assert not out.exists()


def test_interrupted_sweep_resumes_without_retraining_finished_cells(tmp_path, monkeypatch,
                                                                      capsys):
    out = tmp_path / "xs"
    args = ["xscore", "--models", "convnet_d3,resnet20", "--data",
            "synth100[0-3],synth100[4-7]", "--epochs", "2", "--out", str(out), "--device", "cpu",
            "--set", "data.batch_size=16"]
    for data in ("synth100[0-3]", "synth100[4-7]"):
        args += ["--data-option", f"{data}:classes=8", "--data-option", f"{data}:res=8",
                 "--data-option", f"{data}:train_per_class=8",
                 "--data-option", f"{data}:val_per_class=4"]
    runs = out / "classify" / "erm"
    victim = "resnet20-synth100_0-3-s0"  # the third of four cells
    save = Trainer._save

    def interrupted(self, epoch):
        save(self, epoch)
        if self.run_dir.name == victim and epoch == 0:
            raise RuntimeError("simulated interruption after the first checkpoint")

    monkeypatch.setattr(Trainer, "_save", interrupted)
    with pytest.raises(RuntimeError, match="simulated"):
        main(args)
    finished = ["convnet_d3-synth100_0-3-s0", "convnet_d3-synth100_4-7-s0"]
    assert all((runs / name / "summary.json").is_file() for name in finished)
    assert not (runs / victim / "summary.json").exists()
    assert (runs / victim / "failed.json").is_file()
    assert not (out / "xscore.json").exists()
    monkeypatch.setattr(Trainer, "_save", save)
    stamps = {name: (runs / name / "summary.json").stat().st_mtime_ns for name in finished}
    calls = []
    run = Track.run

    def recorded(self, config, resume_dir=None, method=None):
        calls.append((config.name, resume_dir))
        return run(self, config, resume_dir, method)

    monkeypatch.setattr(Track, "run", recorded)
    capsys.readouterr()
    assert main(args) == 0
    assert calls == [(victim, runs / victim), ("resnet20-synth100_4-7-s0", None)]
    assert {name: (runs / name / "summary.json").stat().st_mtime_ns
            for name in finished} == stamps
    epochs = [json.loads(line)["epoch"]
              for line in (runs / victim / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # epoch 1 before the interruption, epoch 2 from its checkpoint
    assert not (runs / victim / "failed.json").exists()
    report = json.loads((out / "xscore.json").read_text())
    assert sorted(report["accuracy"]) == ["convnet_d3", "resnet20"]
    assert all(len(row) == 2 for row in report["accuracy"].values())
