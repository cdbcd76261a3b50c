"""``incremental.init``: the first task (or stage 0 of a C-GCD run) starts from the backbone of
a finished run, e.g. a self-supervised pre-training, checked before anything is written."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.errors import HundredError
from hundred.registry import get_track
from hundred.tracks.incremental import TRACK

DATA = "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}"
COMMON = ["train.device=cpu", "quiet=true", DATA, "model.name=convnet_d3",
          "data.batch_size=8", "train.epochs=1", "optim.weight_decay=0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A finished classify run whose backbone the incremental runs start from."""
    root = tmp_path_factory.mktemp("pretrained")
    config = build_config(overrides=["track=classify", "method=erm", f"root={root}",
                                     "name=pre", *COMMON])
    get_track("classify").run(config)
    return root / "classify" / "erm" / "pre"


def backbone(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}


@pytest.mark.parametrize("method, scenario", [("finetune", "B0-Inc2"), ("simgcd", "CGCD-2-1x2")])
def test_the_first_task_starts_from_the_init_runs_backbone(tmp_path, pretrained, method,
                                                           scenario):
    from hundred.engine.init import load_finished_run

    # a learning rate so small that one epoch leaves the weights where they started
    config = build_config(overrides=["track=incremental", f"method={method}",
                                     f"root={tmp_path}", "name=inc", *COMMON, "optim.lr=1e-20",
                                     f"incremental.scenario={scenario}",
                                     f"incremental.init={pretrained}"])
    TRACK.run(config)
    started = backbone(load_file(tmp_path / "incremental" / method / "inc" / "tasks" /
                                 "task-00" / "final.safetensors"))
    expected = backbone(load_finished_run(pretrained, "init").weights)
    assert started.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(started[key], expected[key], msg=key)


def test_an_init_of_another_architecture_is_refused_before_anything_is_written(tmp_path,
                                                                                pretrained):
    config = build_config(overrides=["track=incremental", "method=finetune",
                                     f"root={tmp_path}", "name=inc", *COMMON,
                                     "model.name=resnet20", "incremental.scenario=B0-Inc2",
                                     f"incremental.init={pretrained}"])
    with pytest.raises(HundredError, match="convnet_d3"):
        TRACK.run(config)
    assert not (tmp_path / "incremental").exists()
