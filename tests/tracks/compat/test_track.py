"""The compat track end to end, tiny: a run trains an old and a new model and records the
three retrieval settings and the compatibility verdict; a run reusing that old model
(``--old RUN_DIR``) sees the very same old/old retrieval; bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hundred.cli import main
from hundred.config import build_config
from hundred.errors import HundredError
from hundred.tracks.compat import TRACK
from hundred.tracks.compat.methods.oca import OCA

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "model.name=resnet20", "model.options={width: 4}", "data.batch_size=16",
            "train.epochs=1", "quiet=true", "compat.embed_dim=8"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]
SETTING_KEYS = [f"{s}_{m}" for s in ("oldold", "newold", "newnew") for m in ("top1", "map")]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compat")
    assert main(["run", "compat", "independent", *COMMON, "--set", f"root={root}",
                 "--set", "name=first"]) == 0
    return root / "compat" / "independent" / "first"


def test_a_run_records_the_three_retrieval_settings(old_run):
    summary = summary_of(old_run)
    for key in SETTING_KEYS:
        assert 0.0 <= summary[key] <= 100.0
    assert isinstance(summary["compatible"], bool)
    assert summary["compatible"] == (summary["newold_top1"] > summary["oldold_top1"])
    assert summary["compat_gain_top1"] == pytest.approx(summary["newold_top1"]
                                                        - summary["oldold_top1"])
    assert summary["old"]["classes"] == 2 and summary["old"]["source"] == "trained"
    assert summary["old"]["train_images"] == 32  # 2 of 4 classes x 16
    assert summary["retrieval"]["queries"] == 32 and summary["retrieval"]["old_dim"] == 8
    assert summary["embed_dim"] == summary["new_embed_dim"] == 8
    assert (old_run / "old_model.safetensors").is_file()
    assert (old_run / "old" / "checkpoints" / "latest.json").is_file()
    assert "val_top1" in summary and summary["scenario"] == "0.5"


def test_a_run_reusing_the_old_model_sees_the_same_old_retrieval(old_run, tmp_path):
    assert main(["run", "compat", "oca", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "name=reuse", "--set", "method_params.extra_dims=4",
                 "--old", str(old_run)]) == 0
    run_dir = tmp_path / "compat" / "oca" / "reuse"
    summary, first = summary_of(run_dir), summary_of(old_run)
    assert summary["oldold_top1"] == first["oldold_top1"]
    assert summary["oldold_map"] == first["oldold_map"]
    assert summary["old"]["source"] == str(old_run)
    assert summary["new_embed_dim"] == 12 and summary["retrieval"]["new_dim"] == 12
    assert not (run_dir / "old" / "checkpoints").exists()  # nothing trained for the old model


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.2"])
def test_a_share_of_old_classes_outside_the_unit_interval_is_refused(bad, tmp_path):
    assert main(["run", "compat", "oca", *COMMON, "--set", f"root={tmp_path}",
                 "--old-classes", bad]) == 2
    with pytest.raises(HundredError, match="old_classes"):
        build_config(overrides=["track=compat", f"compat.old_classes={bad}"])
    assert not any(tmp_path.iterdir())


def test_a_split_that_leaves_a_side_without_classes_writes_nothing(tmp_path):
    config = build_config(overrides=["track=compat", "method=oca", "train.device=cpu",
                                     f"root={tmp_path}", *SETTINGS, "compat.old_classes=0.1"])
    with pytest.raises(HundredError, match="0 old classes"):
        TRACK.run(config, method=OCA(config.method_params, config))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("change, message", [
    ("model.options={width: 8}", "model.name and model.options"),
    ("compat.embed_dim=16", "8-d old embedding"),
    ("compat.old_classes=0.75", "knows 2 classes"),
    (TINY.replace("res: 8", "res: 12"), "other data"),
])
def test_an_old_run_that_does_not_fit_is_refused_and_nothing_is_written(
        old_run, tmp_path, change, message):
    config = build_config(overrides=["track=compat", "method=bct", "train.device=cpu",
                                     f"root={tmp_path}", *SETTINGS, change,
                                     f"compat.old={old_run}"])
    with pytest.raises(HundredError, match=message):
        TRACK.run(config)
    assert not any(tmp_path.iterdir())


def test_an_old_run_that_is_not_a_finished_compat_run_is_refused(tmp_path):
    for old in (tmp_path / "missing", tmp_path):
        config = build_config(overrides=["track=compat", "method=bct", "train.device=cpu",
                                         f"root={tmp_path / 'runs'}", *SETTINGS,
                                         f"compat.old={old}"])
        with pytest.raises(HundredError, match="compat.old"):
            TRACK.run(config)
    assert not (tmp_path / "runs").exists()
