"""The condense scenario end to end at tiny scale: baselines, the exported set, evaluation,
exact resume, the report's image grid, and bad input refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.data.pack import load_packed
from hundred.errors import HundredError
from hundred.registry import get_track
from hundred.tracks.condense.evaluation import accuracy, soft_cross_entropy, train_network

DATA = "{classes: 4, train_per_class: 6, val_per_class: 3, res: 8}"


def tiny(root: Path, method: str, *extra: str):
    return build_config(overrides=[
        "track=condense", f"method={method}", "data.source=synth100", f"data.options={DATA}",
        "model.name=convnet_d3", "model.options={width: 8}", f"root={root}", "name=run",
        "quiet=true", "condense.ipc=2", "condense.eval_runs=2", "condense.eval_epochs=3",
        "condense.eval_augment=[none]", *extra])


def run(config, resume: Path | None = None) -> dict:
    return get_track("condense").run(config, resume)


def test_random_real_baseline_exports_a_packed_set_classify_can_read(tmp_path):
    summary = run(tiny(tmp_path, "random"))
    run_dir = Path(summary["run_dir"])
    assert summary["ipc"] == 2 and summary["images"] == 8 and summary["iterations"] == 0
    assert len(summary["evaluations"]) == 1 and summary["evaluations"][0]["runs"] == 2
    assert summary["eval_top1"] == summary["evaluations"][0]["mean"]
    packed = load_packed(run_dir / "synthetic")
    train, val = packed.arrays("train"), packed.arrays("val")
    assert sorted(train.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(val) == 12  # the source's held-out split, for testing on real images
    assert (run_dir / "synthetic.png").is_file()
    source = build_config(overrides=["data.source=synth100", f"data.options={DATA}"])
    from hundred.engine.run import load_data

    real = load_data(source).arrays("train").images
    for image in train.images:  # every stored image is one of the real training images
        assert any((image == candidate).all() for candidate in real)
    classify = build_config(overrides=[
        "track=classify", "method=erm", f"data.source={run_dir / 'synthetic'}",
        "model.name=convnet_d3", "model.options={width: 8}", f"root={tmp_path}",
        "name=on-synthetic", "train.epochs=1", "data.batch_size=4", "quiet=true"])
    assert get_track("classify").run(classify)["train_images"] == 8


def test_herding_picks_distinct_images_of_each_class_and_full_uses_everything(tmp_path):
    herding = run(tiny(tmp_path, "herding", "method_params.feature_epochs=1"))
    train = load_packed(Path(herding["run_dir"]) / "synthetic").arrays("train")
    for label in range(4):
        images = train.images[train.labels == label]
        assert len(images) == 2 and not (images[0] == images[1]).all()
    full = run(tiny(tmp_path, "full", "name=full"))
    assert full["images"] == 24 and full["ipc"] is None
    assert not (Path(full["run_dir"]) / "synthetic").exists()


def test_every_evaluation_setting_is_labelled_and_seeded_alike(tmp_path):
    config = tiny(tmp_path, "random", "condense.eval_augment=[none, none]")
    summary = run(config)
    first, second = summary["evaluations"]
    assert first["top1"] == second["top1"]  # run r of every setting starts from one seed
    assert (first["augment"], first["labels"], first["lr_source"]) == ("none", "hard",
                                                                       "eval_lr")


def test_training_a_fresh_network_separates_separable_data():
    torch.manual_seed(0)
    images = torch.randn(40, 3, 8, 8)
    labels = torch.arange(40) % 2
    images[labels == 1] += 2.0
    from hundred.models import create

    model = create("convnet_d3", 2, img_size=8, width=8)
    train_network(model, images, labels, epochs=30, lr=0.05, batch_size=16)
    assert accuracy(model, images, labels) == 100.0


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot_targets():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


def test_soft_labels_are_refused_for_a_baseline_before_anything_is_written(tmp_path):
    with pytest.raises(HundredError, match="soft labels"):
        run(tiny(tmp_path, "random", "condense.eval_labels=soft"))
    assert not (tmp_path / "condense").exists()


def test_a_killed_run_resumes_to_the_same_set(tmp_path):
    extra = ("condense.iterations=4", "condense.checkpoint_every=2", "condense.log_every=1",
             "condense.real_batch=4", "condense.dsa=false")
    whole = run(tiny(tmp_path / "whole", "dm", *extra))
    killed = tiny(tmp_path / "killed", "dm", *extra)
    from hundred.tracks.condense import scenario

    original, calls = scenario.checkpoint, []

    def stop_after_first(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(args[-1])
        raise KeyboardInterrupt  # killed right after the checkpoint of iteration 2

    scenario.checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            run(killed)
    finally:
        scenario.checkpoint = original
    run_dir = tmp_path / "killed" / "condense" / "dm" / "run"
    resumed = run(build_config([run_dir / "config.yaml"]), resume=run_dir)
    assert calls == [2]
    for name in ("synthetic/train_images.npy",):
        assert (Path(whole["run_dir"]) / name).read_bytes() == (run_dir / name).read_bytes()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert resumed["eval_top1"] == whole["eval_top1"]
    weights = load_file(run_dir / "checkpoints" / "epoch-0004.safetensors")
    assert "synthetic.images" in weights


def test_a_missing_expert_directory_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(HundredError, match="expert"):
        run(tiny(tmp_path, "mtt", f"method_params.experts={tmp_path / 'nowhere'}"))
    assert not (tmp_path / "condense").exists()


def test_the_html_report_shows_each_rows_learned_set(tmp_path):
    from hundred.report import write_report

    run(tiny(tmp_path, "random"))
    out = tmp_path / "report"
    write_report([tmp_path / "condense"], out)
    pictures = sorted(out.glob("synthetic_*.png"))
    assert len(pictures) == 1
    assert pictures[0].name in (out / "index.html").read_text()
    assert pictures[0].read_bytes() == (tmp_path / "condense/random/run/synthetic.png").read_bytes()


def test_herding_selects_by_herding_on_the_feature_network(make_context):
    """Each class's block is herding_order of that class's features under the network the
    method trained (here untrained: feature_epochs=0), in selection order."""
    from hundred.engine.selection import herding_order
    from hundred.tracks.condense.methods.herding import HerdingReal

    ctx = make_context("method=herding", "condense.ipc=2", "method_params.feature_epochs=0",
                       per_class=5)
    torch.manual_seed(0)
    network = ctx.new_network()
    ctx.new_network = lambda name=None: network  # the method's feature network, kept here
    chosen = HerdingReal({"feature_epochs": 0}, ctx.config).select(ctx)
    network.eval()
    with torch.no_grad():
        for label in range(4):
            indices = ctx.real.class_indices[label]
            features = network.features(ctx.real.take(indices))
            assert chosen[2 * label:2 * label + 2].tolist() == \
                indices[herding_order(features, 2)].tolist()
