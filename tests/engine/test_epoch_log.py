"""``Method.epoch_log``: what a method returns joins that epoch's record in metrics.jsonl (and
the history); a key the trainer writes itself is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hundred.config import build_config
from hundred.errors import HundredError
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.methods.erm import ERM

TINY = ["track=classify", "method=erm", "model.name=convnet_d3", "train.device=cpu",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 8}",
        "data.batch_size=16", "train.epochs=2", "quiet=true"]


class Logging(ERM):
    """ERM that logs the epoch and the number of batches it saw."""

    key = "batches"

    def __init__(self, params=None, config=None):
        super().__init__(params, config)
        self.batches = 0

    def loss(self, model, images, labels):
        self.batches += 1
        return super().loss(model, images, labels)

    def epoch_log(self, epoch):
        logged, self.batches = {self.key: {"epoch0": epoch, "count": self.batches}}, 0
        return logged


def test_epoch_log_joins_the_epoch_record(tmp_path):
    config = build_config(overrides=[*TINY, f"root={tmp_path}", "name=log"])
    summary = TRACK.run(config, method=Logging(config.method_params, config))
    records = [json.loads(line) for line in
               (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["batches"] for r in records] == [{"epoch0": 0, "count": 2},
                                               {"epoch0": 1, "count": 2}]
    assert all("train_loss" in r and "val_top1" in r for r in records)


def test_a_key_of_the_trainer_is_refused(tmp_path):
    config = build_config(overrides=[*TINY, f"root={tmp_path}", "name=clash"])
    method = Logging(config.method_params, config)
    method.key = "train_loss"
    with pytest.raises(HundredError, match="train_loss"):
        TRACK.run(config, method=method)
