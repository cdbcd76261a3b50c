"""The worst-case selection of Fan et al. (ECCV 2024) at tiny scale: exactly m rows, and the
rows it picks are the ones the model still fits best after the lower-level unlearning (the
upper level minimises their forget loss), so their loss is below a random set's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from rich.console import Console

from hundred.config import build_config
from hundred.engine.distributed import DistInfo
from hundred.engine.run import RunContext, eval_loader, load_data
from hundred.models import create
from hundred.tracks.unlearn.evaluation import true_class_outputs
from hundred.tracks.unlearn.selection import worst_case_forget_set

SETTINGS = ["track=unlearn", "method=finetune", "train.device=cpu", "data.batch_size=8",
            "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 8}",
            "model.name=resnet20", "model.options={width: 4}",
            "unlearn.select_iterations=3", "unlearn.select_lower_steps=2"]


@pytest.mark.parametrize("lower", ["finetune", "random_labels"])
def test_the_selection_picks_m_rows_that_the_model_still_fits_best(lower, tmp_path):
    config = build_config(overrides=[*SETTINGS, f"root={tmp_path}",
                                     f"unlearn.select_lower={lower}"])
    dataset = load_data(config)
    ctx = RunContext(config, torch.device("cpu"), DistInfo(), tmp_path, Console(quiet=True))
    torch.manual_seed(0)
    model = create("resnet20", 4, img_size=8, width=4)
    before = copy.deepcopy(model.state_dict())
    count = 5
    forget, record = worst_case_forget_set(ctx, model, dataset, count, seed=0)
    assert len(forget) == len(np.unique(forget)) == count and forget.max() < 32
    assert record["weight_sum"] == pytest.approx(count, abs=1e-6)
    assert len(record["objective"]) == 3 and record["lower"] == lower
    for key, value in model.state_dict().items():  # the original model is left unchanged
        assert torch.equal(value, before[key]), key
    _, _, losses = true_class_outputs(model, eval_loader(ctx, dataset, "train"))
    assert losses[forget].mean() < losses.mean()
