"""A compat run killed in either phase resumes to the uninterrupted result: killed while the
old model trains, it continues the old model from ``old/checkpoints``; killed while the new
model trains, it reads the finished old model back and continues the new one."""

from __future__ import annotations

import json

import pytest

from hundred.config import build_config
from hundred.tracks.compat import TRACK
from hundred.tracks.compat.methods.oca import OCA
from hundred.tracks.compat.scenario import OldTraining

SETTINGS = ["track=compat", "method=oca", "train.device=cpu", "quiet=true", "train.epochs=2",
            "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}",
            "model.name=resnet20", "model.options={width: 4}", "data.batch_size=16",
            "compat.embed_dim=8", "method_params={extra_dims: 4}"]
KEYS = [f"{s}_{m}" for s in ("oldold", "newold", "newnew") for m in ("top1", "map")]


class Killed(Exception):
    pass


def config(root, name: str):
    return build_config(overrides=[*SETTINGS, f"root={root}", f"name={name}"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    return TRACK.run(config(tmp_path_factory.mktemp("whole"), "whole"))


@pytest.mark.slow
@pytest.mark.parametrize("phase", [OldTraining, OCA])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, phase,
                                                          reference):

    def die_at_epoch_1(self, epoch):
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(phase, "on_epoch_start", die_at_epoch_1)
    with pytest.raises(Killed):
        TRACK.run(config(tmp_path, "cut"))
    monkeypatch.undo()
    cut = tmp_path / "compat" / "oca" / "cut"
    assert (cut / "old_model.safetensors").is_file() == (phase is OCA)
    resumed = TRACK.run(build_config([cut / "config.yaml"]), resume_dir=cut)
    for key in [*KEYS, "val_top1", "val_loss"]:
        assert resumed[key] == pytest.approx(reference[key], abs=1e-6), key
    assert resumed["old"]["val_top1"] == reference["old"]["val_top1"]
    assert json.loads((cut / "old" / "checkpoints" / "latest.json").read_text())["epoch"] == 1
