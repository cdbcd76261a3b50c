"""The compress track end to end, tiny: a dense run records every measurement in its summary
and exports a plain model that classify (--init) and hundred attack load; the report draws
accuracy against FLOPs / parameters / memory with the Pareto front; a compressing method's
model (not the trained one) is what is measured and exported; bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hundred.cli import main
from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.engine.init import load_finished_run
from hundred.engine.metrics import evaluate
from hundred.engine.run import load_data
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.tracks.compress import TRACK
from hundred.tracks.compress.methods.dense import Dense

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "model.name=resnet20", "model.options={width: 4}", "data.batch_size=16",
            "train.epochs=1", "quiet=true", "compress.latency_batch=4",
            "compress.latency_warmup=1", "compress.latency_repeats=2"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dense")
    assert main(["run", "compress", "dense", *COMMON, "--set", f"root={root}",
                 "--set", "name=dense"]) == 0
    return root / "compress" / "dense" / "dense"


def test_a_dense_run_records_every_measurement(dense_run):
    summary = summary_of(dense_run)
    model = create("resnet20", 4, img_size=8, width=4)
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["params_k"] == pytest.approx(summary["params"] / 1e3)
    assert summary["flops"] == 2 * summary["macs"] > 0
    assert summary["flop_count"]["input_shape"] == [1, 3, 8, 8]
    assert "multiply-add = 1" in summary["flop_count"]["convention"]
    assert summary["flop_count"]["by_operator"]["conv"] > 0
    assert summary["dense_flops"] == summary["flops"] and summary["flops_ratio"] == 1.0
    assert summary["sparsity_pct"] == 0.0 and summary["flops_target"] is None
    assert summary["structure"]["backbone.conv1"] == 4 and summary["structure"]["head"] == 4
    assert summary["latency_b1_ms"] > 0 and summary["latency_large_ms"] > 0
    latency = summary["latency"]
    assert set(latency["median_ms"]) == {"1", "4"} and latency["threads"] >= 1
    assert latency["device"] == "cpu" and latency["repeats"] == 2
    assert summary["saved_activation_bytes"] > 0 and summary["saved_parameter_bytes"] > 0
    assert summary["peak_train_bytes"] is None  # CPU: the saved bytes are the memory measure
    assert summary["export"]["weights"] == "model.safetensors"
    assert summary["export"]["model"]["options"] == {"width": 4}


def test_saved_activation_bytes_scale_with_the_training_batch(tmp_path, dense_run):
    assert main(["run", "compress", "dense", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "name=half", "--set", "data.batch_size=8"]) == 0
    half = summary_of(tmp_path / "compress" / "dense" / "half")["saved_activation_bytes"]
    full = summary_of(dense_run)["saved_activation_bytes"]
    assert full == pytest.approx(2 * half, rel=0.01)  # a few bytes do not scale (the mean)


def test_the_export_is_the_evaluated_model_and_the_checkpoint_holds_it(dense_run):
    exported = load_file(dense_run / "model.safetensors")
    found = load_finished_run(dense_run, "init")
    assert exported.keys() == found.weights.keys()
    assert all(torch.equal(exported[k], found.weights[k]) for k in exported)
    # measuring the saved activations ran a training-mode forward pass: the batch-norm
    # statistics it touched were restored, so the export scores what the run reported
    config = build_config([dense_run / "config.yaml"])
    model = create("resnet20", 4, img_size=8, width=4)
    model.load_state_dict(exported)
    dataset = load_data(config)
    batches = BatchLoader(dataset.arrays("val"), batch_size=64, shuffle=False, drop_last=False,
                          seed=0, train=False, mean=config.data.mean, std=config.data.std)
    result = evaluate(model, batches)
    summary = summary_of(dense_run)
    assert result["loss"] == pytest.approx(summary["val_loss"], abs=1e-5)


def test_classify_init_and_hundred_attack_load_a_compress_run(tmp_path, dense_run):
    assert main(["run", "classify", "erm", *COMMON[:-6], "--set", f"root={tmp_path}",
                 "--set", "name=tuned", "--init", str(dense_run)]) == 0
    tuned = summary_of(tmp_path / "classify" / "erm" / "tuned")
    assert tuned["init"] == str(dense_run)
    assert main(["attack", str(dense_run), "--eps", "8/255", "--steps", "2",
                 "--device", "cpu"]) == 0
    summary = summary_of(dense_run)
    assert summary["pgd_top1"] <= summary["attacks"][0]["clean_top1"]


def test_the_report_draws_accuracy_against_each_cost_with_the_pareto_front(tmp_path,
                                                                           dense_run, capsys):
    assert main(["report", str(dense_run), "--out", str(tmp_path / "report")]) == 0
    names = {path.name for path in (tmp_path / "report").glob("*.png")}
    assert {"top1_vs_flops_synth100.png", "top1_vs_params_synth100.png",
            "top1_vs_memory_synth100.png"} <= names
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Pareto front" in markdown and "MFLOPs" in markdown


class HalfZeroed(Dense):
    """A stand-in compression: zero the first half of every conv/linear weight."""

    def compressed_model(self, model: Classifier) -> Classifier:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    flat = module.weight.view(-1)
                    flat[: flat.numel() // 2] = 0
        return model


def test_the_compressed_model_is_what_is_measured_and_exported(tmp_path):
    config = build_config(overrides=["track=compress", "method=dense", "train.device=cpu",
                                     f"root={tmp_path}", "name=half", *SETTINGS])
    summary = TRACK.run(config, method=HalfZeroed(config.method_params, config))
    assert summary["sparsity_pct"] == pytest.approx(50.0, abs=0.5)
    assert summary["flops_ratio"] == 1.0  # zeroed weights do not lower dense FLOPs
    run_dir = Path(summary["run_dir"])
    found = load_finished_run(run_dir, "init")
    weight = found.weights["backbone.conv1.weight"].view(-1)
    assert (weight[: weight.numel() // 2] == 0).all()


def test_a_flops_target_outside_the_unit_interval_is_refused_and_writes_nothing(tmp_path):
    for bad in ("0", "1.5", "1", "-0.2"):
        assert main(["run", "compress", "dense", *COMMON, "--set", f"root={tmp_path}",
                     "--flops-target", bad]) == 2
        with pytest.raises(HundredError, match="flops_target"):
            build_config(overrides=["track=compress", f"compress.flops_target={bad}"])
    assert not any(tmp_path.iterdir())
    assert build_config(overrides=["track=compress", "compress.flops_target=0.5"]
                        ).compress.flops_target == 0.5


def test_a_method_that_needs_a_flops_target_refuses_to_start_without_one(tmp_path):
    class Pruner(Dense):
        needs_flops_target = True

    config = build_config(overrides=["track=compress", "method=dense", "train.device=cpu",
                                     f"root={tmp_path}", *SETTINGS])
    with pytest.raises(HundredError, match="compress.flops_target"):
        TRACK.run(config, method=Pruner(config.method_params, config))
    assert not any(tmp_path.iterdir())
