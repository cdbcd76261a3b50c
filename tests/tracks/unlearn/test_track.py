"""The unlearn track end to end, tiny: a run trains the original model (a finished run of its
own), writes its forget set and measures UA/RA/TA/MIA; retraining never reads a forget row;
the worst-case selection keeps its budget exactly; a reference retrain run gives the gaps;
bad input is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hundred.cli import main
from hundred.config import build_config
from hundred.errors import HundredError
from hundred.tracks.unlearn import scenario
from hundred.tracks.unlearn.evaluation import retrain_gap
from hundred.tracks.unlearn.selection import project_budget, top_rows

TINY = "data.options={classes: 4, train_per_class: 8, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "model.name=resnet20", "model.options={width: 4}", "data.batch_size=8",
            "train.epochs=2", "quiet=true", "unlearn.forget_fraction=0.25",
            "unlearn.select_iterations=2", "unlearn.select_lower_steps=2"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]
TRAIN_SIZE, FORGET = 32, 8


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def run(root: Path, method: str, name: str, *settings: str) -> Path:
    extra = [part for setting in settings for part in ("--set", setting)]
    assert main(["run", "unlearn", method, *COMMON, "--set", f"root={root}", "--set",
                 f"name={name}", *extra]) == 0
    return root / "unlearn" / method / name


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    """A fine-tuning run that trains its original model (random forget set)."""
    return run(tmp_path_factory.mktemp("unlearn"), "finetune", "first",
               "method_params.epochs=1")


@pytest.mark.slow
def test_a_run_records_its_forget_set_metrics_and_original_model(first):
    summary = summary_of(first)
    forget = np.load(first / "forget_indices.npy")
    assert len(forget) == summary["forget_count"] == FORGET
    assert len(np.unique(forget)) == FORGET and forget.max() < TRAIN_SIZE
    assert summary["retain_count"] == TRAIN_SIZE - FORGET and summary["forget"] == "random"
    for key in ("ua", "ra", "ta", "mia", "mia_svc", "original_ua", "original_ta"):
        assert 0.0 <= summary[key] <= 100.0
    assert summary["ta"] == pytest.approx(summary["val_top1"])
    assert "avg_gap" not in summary  # no reference run
    assert summary["unlearn_seconds"] > 0 and summary["phase_images"] == TRAIN_SIZE - FORGET
    # the original model is a finished run of its own, which --init reads
    original = summary_of(first / "original")
    assert original["classes"] == 4 and (first / "original" / "checkpoints").is_dir()
    # ... and the report's unlearn/original row: no unlearning at all
    assert original["ua"] == pytest.approx(summary["original_ua"])
    assert original["forget_count"] == FORGET


@pytest.mark.slow
def test_the_random_forget_set_is_the_same_for_the_same_seed(first, tmp_path):
    again = run(tmp_path, "grad_ascent", "ga", f"unlearn.init={first / 'original'}",
                "method_params.epochs=1")
    assert np.array_equal(np.load(again / "forget_indices.npy"),
                          np.load(first / "forget_indices.npy"))
    summary = summary_of(again)
    assert summary["original_ua"] == pytest.approx(summary_of(first)["original_ua"])
    assert summary["original_train_seconds"] == 0  # loaded, not trained


@pytest.mark.slow
def test_retraining_never_reads_a_forget_row(first, tmp_path, monkeypatch):
    seen: list[np.ndarray] = []

    class Recording(scenario.Trainer):
        def fit(self):
            for epoch in range(self.config.train.epochs):
                seen.append(self.train_loader.epoch_indices(epoch))
            return super().fit()

    monkeypatch.setattr(scenario, "Trainer", Recording)
    retrained = run(tmp_path, "retrain", "rt", f"unlearn.forget_from={first}")
    forget = np.load(retrained / "forget_indices.npy")
    assert np.array_equal(forget, np.load(first / "forget_indices.npy"))
    read = np.concatenate(seen)
    assert len(seen) == 2 and not np.isin(read, forget).any()
    assert set(read.tolist()) <= set(range(TRAIN_SIZE)) - set(forget.tolist())
    assert not (retrained / "original").exists()  # the forget set was known: no original
    summary = summary_of(retrained)
    assert "original_ua" not in summary and summary["forget_from"] == str(first)

    # a reference retrain run gives each metric's gap and their average
    compared = run(tmp_path, "finetune", "ft", f"unlearn.init={first / 'original'}",
                   f"unlearn.reference={retrained}", "method_params.epochs=1")
    result, reference = summary_of(compared), summary_of(retrained)
    for key in ("ua", "ra", "ta", "mia"):
        assert result[f"gap_{key}"] == pytest.approx(abs(result[key] - reference[key]))
    assert result["avg_gap"] == pytest.approx(
        np.mean([result[f"gap_{key}"] for key in ("ua", "ra", "ta", "mia")]))

    # a reference that retrained without another forget set is refused, nothing written
    assert main(["run", "unlearn", "finetune", *COMMON, "--set", f"root={tmp_path / 'bad'}",
                 "--set", f"unlearn.reference={retrained}", "--set", "unlearn.forget_seed=7",
                 "--set", f"unlearn.init={first / 'original'}"]) != 0
    assert not (tmp_path / "bad").exists()
    # ... and so is a reference that is not a retrain run
    assert main(["run", "unlearn", "finetune", *COMMON, "--set", f"root={tmp_path / 'bad'}",
                 "--set", f"unlearn.reference={first}"]) != 0
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_the_worst_case_selection_keeps_its_budget_exactly(first, tmp_path):
    selected = run(tmp_path, "grad_ascent", "wc", "unlearn.forget=worst_case",
                   f"unlearn.init={first / 'original'}", "method_params.epochs=1")
    forget = np.load(selected / "forget_indices.npy")
    summary = summary_of(selected)
    assert len(forget) == len(np.unique(forget)) == FORGET == summary["forget_count"]
    record = summary["selection"]
    assert len(record["objective"]) == 2
    assert record["weight_sum"] == pytest.approx(FORGET, abs=1e-6)


def test_the_budget_projection_and_the_top_rows():
    torch.manual_seed(0)
    for budget in (1, 5, 17.5, 39):
        values = torch.randn(40) * 3
        projected = project_budget(values, budget)
        assert float(projected.sum()) == pytest.approx(budget, abs=1e-6)
        assert float(projected.min()) >= 0 and float(projected.max()) <= 1
        # the projection is the nearest point: moving mass between two free coordinates
        # never brings it closer
        assert float((projected - values).norm()) <= float(
            (torch.full((40,), budget / 40, dtype=torch.float64) - values).norm()) + 1e-9
    weights = torch.tensor([0.5, 1.0, 0.5, 0.2, 1.0])
    assert top_rows(weights, 3).tolist() == [0, 1, 4]  # ties: the lower row first
    assert len(top_rows(torch.zeros(10), 4)) == 4


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1"])
def test_a_forget_fraction_outside_the_unit_interval_is_refused(bad, tmp_path):
    assert main(["run", "unlearn", "finetune", *COMMON, "--set", f"root={tmp_path}",
                 "--set", f"unlearn.forget_fraction={bad}"]) == 2
    with pytest.raises(HundredError, match="forget_fraction"):
        build_config(overrides=["track=unlearn", f"unlearn.forget_fraction={bad}"])
    assert not any(tmp_path.iterdir())


def test_a_missing_forget_from_run_is_refused(tmp_path):
    assert main(["run", "unlearn", "retrain", *COMMON, "--set", f"root={tmp_path}",
                 "--set", f"unlearn.forget_from={tmp_path / 'nowhere'}"]) != 0
    assert not any(tmp_path.iterdir())


def test_the_gap_to_retrain():
    gaps = retrain_gap({"ua": 10, "ra": 90, "ta": 80, "mia": 20},
                       {"ua": 14, "ra": 100, "ta": 78, "mia": 30})
    assert gaps == {"gap_ua": 4, "gap_ra": 10, "gap_ta": 2, "gap_mia": 10, "avg_gap": 6.5}
    with pytest.raises(KeyError):
        retrain_gap({"ua": 1}, {"ua": 1})


def test_tuning_without_a_reference_is_refused_before_anything_is_written(tmp_path):
    from hundred.tracks.unlearn import TRACK

    config = build_config(overrides=["track=unlearn", "method=finetune", "train.device=cpu",
                                     f"root={tmp_path}", *SETTINGS,
                                     "provenance.protocol=tune-then-evaluate",
                                     "provenance.phase=tuning"])
    with pytest.raises(HundredError, match="unlearn.reference"):
        TRACK.run(config)
    assert not any(tmp_path.iterdir())
