"""``classify.init`` (``--init RUN_DIR``): a run starts from a finished run's backbone with a
new head for its own classes; a run that cannot start from it gives one clear error and
writes nothing; a resumed run continues from its checkpoint, never from the init weights;
``classify.freeze_backbone`` trains the head alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hundred.config import build_config
from hundred.engine.checkpoint import strip_prefix
from hundred.errors import HundredError
from hundred.registry import get_method
from hundred.tracks.classify import TRACK
from hundred.tracks.classify import scenario as classify_scenario
from hundred.tracks.classify.methods.erm import ERM


def tiny(root: Path, *extra: str, classes: int = 4, model: str = "resnet20"):
    return build_config(overrides=[
        "track=classify", "method=erm", f"model.name={model}", "train.device=cpu",
        "quiet=true", "data.batch_size=16", "train.epochs=1", f"root={root}",
        f"data.options={{classes: {classes}, train_per_class: 8, val_per_class: 4, res: 8}}",
        *extra])


def latest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = run_dir / "checkpoints"
    return load_file(checkpoints / json.loads((checkpoints / "latest.json").read_text())["weights"])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished resnet20 run on 6 classes (the pre-training: other classes than the runs
    that start from it)."""
    root = tmp_path_factory.mktemp("source")
    return Path(TRACK.run(tiny(root, "name=source", "seed=5", classes=6))["run_dir"])


def weights_at_setup(config) -> tuple[dict[str, torch.Tensor], dict]:
    """The model's state dict when the trainer calls ``setup`` (before any step), and the
    run's summary."""
    method = ERM(config.method_params, config)
    seen: dict[str, torch.Tensor] = {}
    method.setup = lambda model, ctx: seen.update(
        {k: v.detach().clone() for k, v in model.state_dict().items()})
    summary = TRACK.run(config, method=method)
    return seen, summary


def test_init_copies_the_backbone_exactly_and_builds_a_new_head(tmp_path, source):
    started, summary = weights_at_setup(tiny(tmp_path, "name=tuned", f"classify.init={source}"))
    pretrained = latest_weights(source)
    backbone = strip_prefix(started, "backbone.")
    assert backbone.keys() == strip_prefix(pretrained, "backbone.").keys()
    for key, value in backbone.items():  # weights and BN statistics alike
        assert torch.equal(value, pretrained[f"backbone.{key}"]), key
    assert started["head.weight"].shape[0] == 4 != pretrained["head.weight"].shape[0]
    assert summary["init"] == str(source) and summary["classes"] == 4
    # the head is the fresh one a run from scratch with the same seed builds
    scratch, _ = weights_at_setup(tiny(tmp_path, "name=scratch"))
    assert torch.equal(started["head.weight"], scratch["head.weight"])
    assert not torch.equal(started["backbone.conv1.weight"], scratch["backbone.conv1.weight"])
    # and it trained: the run's own checkpoint moved away from the pre-trained backbone
    tuned = latest_weights(Path(summary["run_dir"]))
    assert not torch.equal(tuned["backbone.conv1.weight"], pretrained["backbone.conv1.weight"])


def test_init_starts_from_the_weights_the_run_evaluated_its_ema(tmp_path):
    ema_run = Path(TRACK.run(tiny(tmp_path / "src", "name=ema", "train.ema_decay=0.5",
                                  classes=6))["run_dir"])
    stored = latest_weights(ema_run)
    assert not torch.equal(stored["ema.backbone.conv1.weight"], stored["backbone.conv1.weight"])
    started, _ = weights_at_setup(tiny(tmp_path, "name=tuned", f"classify.init={ema_run}"))
    for key, value in strip_prefix(started, "backbone.").items():
        assert torch.equal(value, stored[f"ema.backbone.{key}"]), key


def copy_run(source: Path, target: Path, *, summary: bool = True) -> Path:
    shutil.copytree(source, target)
    if not summary:
        (target / "summary.json").unlink()
    return target


def test_a_run_that_cannot_start_from_the_init_writes_nothing(tmp_path, source):
    runs = tmp_path / "runs"

    def refused(match: str, init: Path | str, *extra: str, model: str = "resnet20") -> None:
        with pytest.raises(HundredError, match=match):
            TRACK.run(tiny(runs, "name=x", f"classify.init={init}", *extra, model=model))
        assert not runs.exists()

    refused(r"trained resnet20, but this run's model is convnet_d3", source, model="convnet_d3")
    refused(r"trained resnet20, but this run's model is resnet20 \{'width': 32\}", source,
            "model.options={width: 32}")
    refused("does not exist", tmp_path / "nowhere")
    refused("not a finished run", copy_run(source, tmp_path / "unfinished", summary=False))
    truncated = copy_run(source, tmp_path / "truncated")
    for path in (truncated / "checkpoints").glob("*.safetensors"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused("newest checkpoint epoch-0000.safetensors is unreadable", truncated)
    no_checkpoint = copy_run(source, tmp_path / "no-checkpoint")
    shutil.rmtree(no_checkpoint / "checkpoints")
    refused("has no checkpoint", no_checkpoint)
    # strict: a backbone key missing, and one the backbone does not have
    edited = copy_run(source, tmp_path / "edited")
    weights_file = next((edited / "checkpoints").glob("*.safetensors"))
    weights = load_file(weights_file)
    weights.pop("backbone.conv1.weight")
    weights["backbone.extra.weight"] = torch.zeros(3)
    save_file(weights, str(weights_file))
    refused(r"missing conv1\.weight; unexpected extra\.weight", edited)


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at, reads_init", [(1, False), (0, True)])
def test_a_resumed_init_run_continues_from_its_checkpoint(tmp_path, source, monkeypatch,
                                                          kill_at, reads_init):
    """Killed after epoch 1's checkpoint, the resumed run loads that checkpoint and never
    reads the init run; killed before any checkpoint, it starts from the init again. Both
    reach the uninterrupted result."""
    extra = (f"classify.init={source}", "train.epochs=2")
    reference = TRACK.run(tiny(tmp_path, "name=reference", *extra))

    def die(self, epoch):
        if epoch == kill_at:
            raise Killed

    monkeypatch.setattr(get_method("classify", "erm"), "on_epoch_start", die)
    with pytest.raises(Killed):
        TRACK.run(tiny(tmp_path, "name=cut", *extra))
    monkeypatch.undo()
    cut = tmp_path / "classify" / "erm" / "cut"
    assert any((cut / "checkpoints").glob("*.safetensors")) == (not reads_init)

    reads = []
    original = classify_scenario.init_backbone_weights

    def counted(*args, **kwargs):
        reads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(classify_scenario, "init_backbone_weights", counted)
    resumed = TRACK.run(build_config([cut / "config.yaml"]), resume_dir=cut)
    assert reads == ([source] if reads_init else [])
    for key in ("val_top1", "val_top5", "val_loss"):
        assert resumed[key] == reference[key], key
    assert resumed["init"] == str(source)


def test_freeze_backbone_trains_only_the_head(tmp_path, source):
    summary = TRACK.run(tiny(tmp_path, "name=linear", f"classify.init={source}",
                             "classify.freeze_backbone=true", "optim.lr=0.5"))
    pretrained, trained = latest_weights(source), latest_weights(Path(summary["run_dir"]))
    for key, value in strip_prefix(pretrained, "backbone.").items():  # BN statistics too
        assert torch.equal(trained[f"backbone.{key}"], value), key
    started, _ = weights_at_setup(tiny(tmp_path, "name=head", f"classify.init={source}"))
    assert not torch.equal(trained["head.weight"], started["head.weight"])
