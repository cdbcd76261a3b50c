"""`hundred check compress --methods otov2,tas` tunes on one class half and evaluates on the
other: both leaderboards rank the methods by top-1 at the FLOPs target, and every
evaluation run kept the target (its measured FLOPs ratio)."""

from __future__ import annotations

import json

from hundred.cli import main


def test_check_compress_tunes_on_one_half_and_evaluates_pruning_on_the_other(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: null\ndata.batch_size: null\noptim.lr: [0.05]\n")
    out = tmp_path / "check"
    assert main(["check", "compress", "--methods", "otov2,tas", "--trials", "1", "--seeds",
                 "1", "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
                 "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--flops-target", "0.5",
                 "--set", "data.options={classes: 8, train_per_class: 16, val_per_class: 4, "
                 "res: 16}", "--set", "model.name=resnet20", "--set",
                 "model.options={width: 4}", "--set", "train.epochs=1",
                 "--set", "data.batch_size=16", "--set", "compress.latency_repeats=2",
                 "--set", "compress.latency_warmup=1"]) == 0
    for method in ("otov2", "tas"):
        [tuned] = (out / "compress" / method).glob("tune-*/summary.json")
        [evaluated] = (out / "compress" / method).glob("eval-*/summary.json")
        tune, evaluation = (json.loads(path.read_text()) for path in (tuned, evaluated))
        assert tune["data"] == "synth100[0-3]" and tune["phase"] == "tuning"
        assert evaluation["data"] == "synth100[4-7]"
        assert evaluation["tuned_on"] == "synth100[0-3]"
        assert evaluation["flops_target"] == 0.5 and evaluation["flops_ratio"] <= 0.56
        assert 0 <= evaluation["val_top1"] <= 100


def test_check_compress_tunes_and_evaluates_the_supernet_methods(tmp_path):
    # bignas and deps with a FLOPs target: each run trains the supernet, then exports the best
    # child under the target (chosen on training images), evaluated on the other classes
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: null\ndata.batch_size: null\noptim.lr: [0.05]\n")
    out = tmp_path / "check"
    assert main(["check", "compress", "--methods", "bignas,deps", "--trials", "1", "--seeds",
                 "1", "--tune-data", "synth100[0-3]", "--eval-data", "synth100[4-7]",
                 "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--flops-target", "0.5",
                 "--set", "data.options={classes: 8, train_per_class: 16, val_per_class: 4, "
                 "res: 16}", "--set", "model.name=elastic_resnet", "--set",
                 "model.options={widths: [8, 16], depths: [2, 2]}", "--set", "train.epochs=2",
                 "--set", "data.batch_size=16", "--set", "compress.latency_repeats=2",
                 "--set", "compress.latency_warmup=1"]) == 0
    for method in ("bignas", "deps"):
        [evaluated] = (out / "compress" / method).glob("eval-*/summary.json")
        evaluation = json.loads(evaluated.read_text())
        assert evaluation["data"] == "synth100[4-7]"
        assert evaluation["tuned_on"] == "synth100[0-3]"
        assert evaluation["flops_ratio"] <= 0.5
