"""Config validation: bad keys and values fail up front, naming the key."""

import subprocess
import sys
import time

import pytest

from hundred.config import build_config, dump_yaml
from hundred.errors import HundredError


def test_misspelt_key_names_the_key_and_allowed_ones():
    with pytest.raises(HundredError) as error:
        build_config(overrides=["optim.lrr=0.1"])
    assert "optim.lrr" in str(error.value) and "lr" in str(error.value)


def test_negative_learning_rate_is_rejected():
    with pytest.raises(HundredError, match="optim.lr"):
        build_config(overrides=["optim.lr=-0.1"])


def test_yaml_file_then_overrides_win(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("optim:\n  lr: 0.3\ntrain:\n  epochs: 7\n")
    config = build_config([file], ["optim.lr=0.05"])
    assert (config.optim.lr, config.train.epochs) == (0.05, 7)


def test_resolved_config_round_trips(tmp_path):
    config = build_config(overrides=["model.name=resnet32", "data.options={classes: 10}"])
    file = tmp_path / "config.yaml"
    file.write_text(dump_yaml(config))
    assert build_config([file]) == config


def test_milestones_outside_training_rejected():
    with pytest.raises(HundredError, match="milestones"):
        build_config(overrides=["schedule.name=step", "schedule.milestones=[5, 50]",
                                "train.epochs=10"])


def test_cli_bad_config_fails_fast_with_clear_message(tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "hundred.cli", "run", "classify", "erm", "--set", "optim.lrr=1",
         "--root", str(tmp_path)], capture_output=True, text=True)
    assert time.perf_counter() - start < 10  # the issue asks < 2 s; generous for loaded CI
    assert result.returncode == 2
    assert "optim.lrr" in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was created


def test_the_settings_digest_follows_results_not_bookkeeping():
    from hundred.engine.run import settings_digest

    base = build_config(overrides=["track=incremental"])
    digest = settings_digest(base)
    for neutral in ("seed=3", "name=x", "train.keep_checkpoints=4", "train.eval_every=2",
                    "data.eval_batch_size=64", "train.device=cpu", "model.compile=true"):
        assert settings_digest(build_config(overrides=["track=incremental", neutral])) == digest
    for changing in ("optim.lr=0.05", "data.options={res: 16}", "incremental.memory=10",
                     "method_params={temperature: 1.0}", "train.amp=off"):
        assert settings_digest(build_config(overrides=["track=incremental", changing])) != digest


def test_amp_off_on_the_command_line_means_off():
    assert build_config(overrides=["train.amp=off"]).train.amp == "off"  # YAML reads False


@pytest.mark.parametrize("override, key", [
    ("optim.lr={a: [}", "not valid YAML"), ("train.device=banana", "train.device"),
    ("train.device=cuda:x", "train.device"), ("optim.lr=.inf", "optim.lr"),
    ("name=../elsewhere", "name"), ("incremental.memory=10", "incremental: unknown key")])
def test_bad_values_on_the_command_line_are_one_clear_error(override, key):
    with pytest.raises(HundredError, match=key):
        build_config(overrides=[override])
