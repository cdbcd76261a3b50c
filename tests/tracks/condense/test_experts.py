"""Expert trajectories: ``hundred condense experts`` writes safetensors files (init + every
epoch), resumes without retraining finished experts, and a buffer that does not fit a run is
refused with one clear error."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from hundred.cli import main as hundred
from hundred.config import build_config
from hundred.engine.run import image_size, load_data
from hundred.errors import HundredError
from hundred.models import create
from hundred.tracks.condense import experts as experts_module
from hundred.tracks.condense.experts import ExpertBank, ParamLayout, expert_path

DATA = "data.options={classes: 4, train_per_class: 6, val_per_class: 2, res: 8}"
WIDTH = "model.options={width: 8}"


def expert_command(out: Path, *extra: str, experts: int = 2, epochs: int = 2) -> list[str]:
    return ["condense", "experts", "--data", "synth100", "--model", "convnet_d3", "--set", DATA,
            "--set", WIDTH, "--experts", str(experts), "--epochs", str(epochs), "--batch-size",
            "8", "--device", "cpu", "--out", str(out), *extra]


def run_config(*extra: str):
    return build_config(overrides=["data.source=synth100", DATA, "model.name=convnet_d3",
                                   WIDTH, *extra])


def open_bank(directory: Path, *extra: str) -> ExpertBank:
    config = run_config(*extra)
    dataset = load_data(config)
    size = image_size(config, dataset)
    network = create(config.model.name, dataset.num_classes, img_size=size,
                     **config.model.options)
    return ExpertBank.open(directory, config, dataset, size, ParamLayout.of(network))


@pytest.fixture(scope="module")
def buffer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("experts") / "buffer"
    assert hundred(expert_command(out)) == 0
    return out


def test_experts_are_safetensors_with_every_epoch(buffer):
    meta = json.loads((buffer / "meta.json").read_text())
    assert meta["model"] == {"name": "convnet_d3", "head": "linear", "options": {"width": 8}}
    assert meta["image_size"] == 8 and meta["training"]["epochs"] == 2
    assert meta["training"]["lr"] == 0.01 and meta["training"]["momentum"] == 0.0
    assert meta["training"]["dsa_strategy"]  # DSA on by default
    assert meta["data"]["fingerprint"]
    names = [name for name, _ in meta["parameters"]]
    for index in range(2):
        path = expert_path(buffer, index)
        with safe_open(str(path), framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(names)
            weight = handle.get_tensor(names[0])
        assert weight.shape[0] == 3  # initialisation + 2 epochs
        assert not torch.equal(weight[0], weight[2])  # training moved the parameters
    with pytest.raises(Exception):  # not a pickle
        pickle.loads(expert_path(buffer, 0).read_bytes())
    bank = open_bank(buffer)
    start, target = bank.segment(1, 0, 2, torch.device("cpu"))
    assert start.shape == target.shape == (bank.layout.numel,)
    assert len(bank) == 2 and bank.epochs == 2


def test_rerun_trains_only_the_missing_expert(tmp_path, monkeypatch):
    out = tmp_path / "buffer"
    assert hundred(expert_command(out)) == 0
    finished = expert_path(out, 0)
    before = (finished.read_bytes(), finished.stat().st_mtime_ns)
    killed = expert_path(out, 1)
    original = load_file(killed)
    killed.unlink()  # expert 1 was killed before its file was written...
    stale = out / f".{killed.name}.x1y2z3.tmp"
    stale.write_bytes(b"half a file")  # ...leaving atomic_open's temporary file
    trained = []
    real_train = experts_module.train_expert

    def counting(*args, **kwargs):
        trained.append(args[6])  # the expert's index
        return real_train(*args, **kwargs)

    monkeypatch.setattr(experts_module, "train_expert", counting)
    assert hundred(expert_command(out)) == 0
    assert trained == [1]
    assert (finished.read_bytes(), finished.stat().st_mtime_ns) == before
    assert not stale.exists()
    again = load_file(killed)  # seeded per expert: the same expert again
    assert again.keys() == original.keys()
    assert all(torch.equal(again[name], original[name]) for name in original)
    trained.clear()
    assert hundred(expert_command(out, experts=3)) == 0  # more experts: only the new one
    assert trained == [2]


def test_other_settings_into_the_same_directory_are_refused(buffer, capsys):
    assert hundred(expert_command(buffer, "--lr", "0.05")) == 2
    assert "trained otherwise (training differ)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("model.options={width: 16}",), "model.options"),
    (("data.image_size=16",), "image size 8 (this run: 16)"),
    (("data.mean=[0.5, 0.5, 0.5]",), "data.mean"),
    (("data.options={classes: 4, train_per_class: 5, val_per_class: 2, res: 8}",), "data:"),
])
def test_a_buffer_that_does_not_fit_the_run_is_refused(buffer, extra, message):
    with pytest.raises(HundredError, match="do not fit this run") as error:
        open_bank(buffer, *extra)
    assert message in str(error.value)


def test_bad_directories_give_clear_errors(buffer, tmp_path):
    with pytest.raises(HundredError, match="no expert directory"):
        open_bank(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HundredError, match="not an expert directory"):
        open_bank(tmp_path / "empty")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "meta.json").write_text((buffer / "meta.json").read_text())
    with pytest.raises(HundredError, match="no finished expert"):
        open_bank(copy)
    expert_path(copy, 0).write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(HundredError, match="not a readable safetensors file"):
        open_bank(copy)
