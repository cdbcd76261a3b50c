"""The check's leaderboard arithmetic on fixed inputs: means, sample stds, ranks per board,
rank changes between the conventional and the tune-then-evaluate leaderboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hundred.protocol.check import leaderboards, rank_changes, rank_marker
from hundred.report import aggregate, collect_runs, markdown_tables
from hundred.report.collect import validate_summary


def summary(method: str, seed: int, avg: float, data: str, **extra: Any) -> dict[str, Any]:
    """A minimal valid two-task incremental summary whose average incremental accuracy is
    ``avg`` (steps avg+5, avg-5)."""
    steps = [avg + 5, avg - 5]
    run = {"track": "incremental", "method": method, "seed": seed, "data": data,
           "model": "resnet20", "scenario": "B0-Inc10", "memory": 200,
           "classes_per_step": [10, 20], "step_top1": steps,
           "accuracy_matrix": [[steps[0], None], [steps[1], steps[1]]],
           "avg_incremental_accuracy": avg, "last_accuracy": steps[1], **extra}
    normal = validate_summary(run)
    normal["summary_path"] = f"/runs/{method}/{data}/s{seed}/summary.json"
    return normal


TUNED = {"optim.lr": 0.1, "train.epochs": 3}


def conventional(method: str, avg: float) -> dict[str, Any]:
    return summary(method, 0, avg, "synth100[0-49]", protocol="conventional",
                   tuned_on="synth100[0-49]", tuned_params=TUNED)


def evaluated(method: str, seed: int, avg: float) -> dict[str, Any]:
    return summary(method, seed, avg, "synth100[50-99]", protocol="tune-then-evaluate",
                   phase="evaluation", tuned_on="synth100[0-49]", tuned_params=TUNED)


def test_rank_markers():
    assert [rank_marker(3, 1), rank_marker(1, 3), rank_marker(2, 2), rank_marker(None, 1)] == [
        "▲2", "▼2", "=", "new"]


@pytest.fixture()
def boards():
    # conventional: wa 70 > replay 60 > finetune 30; evaluation: replay 50 > wa 40 > finetune 20
    conv = [conventional("wa", 70.0), conventional("replay", 60.0), conventional("finetune", 30.0)]
    evals = [evaluated("wa", 0, 38.0), evaluated("wa", 1, 42.0),
             evaluated("replay", 0, 49.0), evaluated("replay", 1, 51.0),
             evaluated("finetune", 0, 20.0), evaluated("finetune", 1, 20.0)]
    return conv, evals


def test_rank_changes_and_statistics(boards):
    conv_runs, eval_runs = boards
    changes = rank_changes(aggregate(conv_runs), aggregate(eval_runs))
    assert changes == {"replay": (2, 1, "▲1"), "wa": (1, 2, "▼1"), "finetune": (3, 3, "=")}
    rows = {row.method: row for row in aggregate(eval_runs)}
    assert rows["wa"].primary.mean == pytest.approx(40.0)
    assert rows["wa"].primary.std == pytest.approx(2 ** 0.5 * 2)  # sample std of 38, 42
    assert rows["finetune"].primary.std == 0.0 and rows["replay"].rank == 1


def test_leaderboard_tables_carry_ranks_changes_and_provenance(boards):
    conv_table, eval_table = leaderboards(*boards)
    assert conv_table.title.startswith("Conventional: tuned and reported on synth100[0-49]")
    assert "evaluated on synth100[50-99]" in eval_table.title
    head = eval_table.header
    cells = {row[0]: dict(zip(head, row)) for row in eval_table.body}
    assert [row[0] for row in eval_table.body] == ["replay", "wa", "finetune"]
    assert cells["replay"]["rank"] == "1" and cells["replay"]["conventional rank"] == "2"
    assert cells["replay"]["change"] == "▲1" and cells["wa"]["change"] == "▼1"
    assert cells["finetune"]["change"] == "="
    assert cells["wa"]["avg incremental acc"] == "40.0 ± 2.8"
    assert cells["wa"]["tuned params"] == "epochs=3, lr=0.1"
    assert cells["wa"]["protocol"] == "tune-then-evaluate (tuned on synth100[0-49])"
    conv_cells = {row[0]: dict(zip(conv_table.header, row)) for row in conv_table.body}
    assert conv_cells["wa"]["avg incremental acc"] == "70.0 (n=1)"
    assert conv_cells["wa"]["protocol"] == "conventional (tuned on synth100[0-49])"


def test_report_keeps_tuning_trials_apart_from_results(tmp_path: Path):
    """A tuning trial is measured on the tuning data with candidate parameters: `hundred
    report` labels such rows and never ranks them with results."""
    for seed, avg in enumerate((55.0, 65.0)):
        run = summary("wa", seed, avg, "synth100[0-49]", protocol="tune-then-evaluate",
                      phase="tuning", study="s", trial=seed, tuned_params={"optim.lr": 0.1 * (seed + 1)})
        run_dir = tmp_path / f"t{seed}"
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(json.dumps(run))
    rows = aggregate(collect_runs([tmp_path]))
    assert [row.protocol for row in rows] == ["tune-then-evaluate (tuning trials)"]
    assert rows[0].tuned_params == "differs between runs"
    assert "tuning trials" in markdown_tables(rows)
