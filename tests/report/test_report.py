"""`hundred report`: collecting summaries, mean ± std over seeds, tables, plots, HTML, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from hundred.cli import main
from hundred.errors import HundredError
from hundred.report import (aggregate, collect_runs, format_stat, leaderboard, markdown_tables,
                            write_report)
from hundred.report.aggregate import Stat


def incremental_summary(method: str, seed: int, final: float, *, data: str = "synth100",
                        scenario: str = "B0-Inc10", tasks: int = 3, **extra: Any) -> dict[str, Any]:
    """A plausible class-incremental summary whose curve falls linearly to ``final``."""
    classes = [10 * (t + 1) for t in range(tasks)]
    steps = [90.0 - (90.0 - final) * t / max(tasks - 1, 1) for t in range(tasks)]
    matrix = [[(steps[t] - 5 * (t - j)) if j <= t else None for j in range(tasks)]
              for t in range(tasks)]
    return {"track": "incremental", "method": method, "run_dir": f"runs/incremental/{method}/s{seed}",
            "seed": seed, "data": data, "model": "resnet32", "scenario": scenario, "memory": 2000,
            "classes_per_step": classes, "step_top1": steps, "step_top5": steps,
            "accuracy_matrix": matrix, "nme_step_top1": None, "nme_accuracy_matrix": None,
            "avg_incremental_accuracy": sum(steps) / tasks, "last_accuracy": steps[-1],
            "avg_forgetting": 10.0, "backward_transfer": -5.0, "old_accuracy": [None] * tasks,
            "new_accuracy": steps, "nme_avg_incremental_accuracy": None, "wall_seconds": 1.0,
            **extra}


def classify_summary(method: str, seed: int, top1: float, model: str = "resnet18") -> dict[str, Any]:
    return {"track": "classify", "method": method, "seed": seed, "data": "synth100",
            "model": model, "val_top1": top1, "val_top5": top1 + 10, "val_loss": 1.0}


def write_run(root: Path, summary: dict[str, Any] | str) -> Path:
    """Write one run directory under ``root`` and return it."""
    if isinstance(summary, str):
        run_dir = root / "broken"
        text = summary
    else:
        run_dir = root / summary["track"] / summary["method"] / f"seed{summary['seed']}"
        text = json.dumps(summary)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(text)
    return run_dir


@pytest.fixture()
def runs_root(tmp_path: Path) -> Path:
    """Two incremental methods (3 seeds each), one of them also on a second scenario, and a
    classify method with 3 seeds."""
    root = tmp_path / "runs"
    for seed, (wa_last, icarl_last) in zip((1, 2, 3), ((62.3, 50.0), (63.1, 51.0), (63.9, 52.0))):
        write_run(root, incremental_summary("wa", seed, wa_last))
        write_run(root, incremental_summary("icarl", seed, icarl_last))
        write_run(root / "b50", incremental_summary("wa", seed, 70.0, scenario="B50-Inc10"))
        write_run(root, classify_summary("erm", seed, 70.0 + seed))
    return root


def test_mean_std_of_three_seeds_is_formatted_exactly() -> None:
    stat = Stat.of([62.3, 63.1, 63.9])
    assert stat.mean == pytest.approx(63.1) and stat.std == pytest.approx(0.8) and stat.n == 3
    assert format_stat(stat) == "63.1 ± 0.8"
    assert format_stat(Stat.of([1.0, 2.0, None]), runs=3) == "1.5 ± 0.7 (n=2)"
    assert format_stat(Stat.of([None])) == "–"


def test_single_seed_shows_mean_and_n1(tmp_path: Path) -> None:
    assert format_stat(Stat.of([70.04])) == "70.0 (n=1)"
    write_run(tmp_path, incremental_summary("wa", 7, 60.0))
    rows = aggregate(collect_runs([tmp_path]))
    assert len(rows) == 1 and rows[0].seeds == [7] and rows[0].metrics["last_accuracy"].std is None
    assert "| wa | conventional | 1 | 75.0 (n=1) | 60.0 (n=1) | 10.0 (n=1) |" in markdown_tables(rows)


def test_grouping_ordering_and_rank(runs_root: Path) -> None:
    runs = collect_runs([runs_root])
    assert len(runs) == 12
    rows = aggregate(runs)
    keys = [(r.track, r.scenario, r.method, len(r.runs), r.rank) for r in rows]
    assert keys == [("classify", None, "erm", 3, 1),
                    ("incremental", "B0-Inc10", "wa", 3, 1),
                    ("incremental", "B0-Inc10", "icarl", 3, 2),
                    ("incremental", "B50-Inc10", "wa", 3, 1)]
    wa = rows[1]
    assert wa.protocol == "conventional" and wa.seeds == [1, 2, 3]
    assert format_stat(wa.metrics["last_accuracy"]) == "63.1 ± 0.8"

    text = markdown_tables(rows)
    assert "## Track: incremental" in text and "## Track: classify" in text
    assert "### synth100 — B0-Inc10" in text and "### synth100 — B50-Inc10" in text
    b0 = text[text.index("### synth100 — B0-Inc10"):text.index("### synth100 — B50-Inc10")]
    assert b0.index("| wa |") < b0.index("| icarl |")  # best first
    assert "Protocol: conventional. 6 runs (seeds 1, 2, 3)" in b0
    assert "| method | protocol | seeds | avg incremental acc | last acc | avg forgetting |" in b0
    assert "NME" not in b0  # no run reported NME accuracy
    assert "| method | model | seeds | top-1 | top-5 |" in text
    assert "| erm | resnet18 | 3 | 72.0 ± 1.0 | 82.0 ± 1.0 |" in text


def test_protocols_and_data_are_separate_rows_ranked_per_protocol(tmp_path: Path) -> None:
    for seed in (1, 2):
        write_run(tmp_path / "a", incremental_summary("wa", seed, 60.0))
        write_run(tmp_path / "a", incremental_summary("icarl", seed, 55.0))
        write_run(tmp_path / "b", incremental_summary("wa", seed, 40.0, protocol="tune-then-evaluate",
                                                      tuned_on="synth10"))
        write_run(tmp_path / "b", incremental_summary("icarl", seed, 45.0, protocol="tune-then-evaluate",
                                                      tuned_on="synth10"))
        write_run(tmp_path / "c", incremental_summary("wa", seed, 50.0, data="other"))
    rows = aggregate(collect_runs([tmp_path]))
    ranks = {(r.data, r.protocol, r.method): r.rank for r in rows}
    assert ranks == {("other", "conventional", "wa"): 1,
                     ("synth100", "conventional", "wa"): 1,
                     ("synth100", "conventional", "icarl"): 2,
                     ("synth100", "tune-then-evaluate", "icarl"): 1,
                     ("synth100", "tune-then-evaluate", "wa"): 2}
    synth = [r for r in rows if r.data == "synth100"]
    table = leaderboard(synth, extra_columns={"rank": lambda r: str(r.rank)})
    assert table.header[-1] == "rank"
    assert [cells[0] for cells in table.body] == ["wa", "icarl", "icarl", "wa"]
    assert "tune-then-evaluate (tuned on synth10)" in table.body[2]
    assert "Protocols: conventional: 2 rows, 4 runs; tune-then-evaluate (tuned on synth10): 2 rows" in table.note


def test_parent_folder_discovery_and_dedup(runs_root: Path) -> None:
    one_run = runs_root / "incremental" / "wa" / "seed1"
    assert len(collect_runs([one_run])) == 1
    assert len(collect_runs([runs_root / "incremental"])) == 6
    # the same summary reached through a parent and directly counts once
    assert len(collect_runs([runs_root, one_run])) == 12


def test_malformed_summaries_are_skipped_with_a_warning(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, incremental_summary("wa", 1, 60.0))
    write_run(tmp_path, "{not json")
    missing = incremental_summary("icarl", 1, 50.0)
    del missing["avg_incremental_accuracy"]
    write_run(tmp_path, missing)
    short = incremental_summary("lucir", 1, 50.0)
    short["step_top1"] = short["step_top1"][:-1]
    write_run(tmp_path, short)
    skipped: list[str] = []
    runs = collect_runs([tmp_path], skipped=skipped)
    assert [run["method"] for run in runs] == ["wa"]
    err = capsys.readouterr().err
    assert str(tmp_path / "broken" / "summary.json") in err and "not valid JSON" in err
    assert "'avg_incremental_accuracy' is missing" in err and "icarl" in err
    assert "'step_top1' must be a list of 3 numbers" in err
    assert len(skipped) == 3


def test_a_seed_counted_twice_is_warned_about(tmp_path: Path) -> None:
    write_run(tmp_path / "a", incremental_summary("wa", 1, 60.0))
    write_run(tmp_path / "b", incremental_summary("wa", 1, 62.0))
    messages: list[str] = []
    (row,) = aggregate(collect_runs([tmp_path]), warn=messages.append)
    assert len(row.runs) == 2 and row.seeds == [1]
    assert messages == ["wa on synth100: 2 runs but only 1 distinct seeds (1, 1); every run is counted"]


def test_bad_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(HundredError, match="nowhere"):
        collect_runs([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(HundredError, match="no summary.json found in .*empty"):
        collect_runs([tmp_path / "empty"])
    write_run(tmp_path / "bad", "[]")
    with pytest.raises(HundredError, match="all malformed"):
        collect_runs([tmp_path / "bad"], warn=lambda message: None)


def test_write_report_files(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = write_report([runs_root], out=out, warn=lambda message: None)
    names = sorted(p.name for p in report.plots)
    assert names == ["accuracy_curve_synth100_B0-Inc10.png", "accuracy_curve_synth100_B50-Inc10.png",
                     "accuracy_matrix_synth100_B0-Inc10_icarl.png",
                     "accuracy_matrix_synth100_B0-Inc10_wa.png",
                     "accuracy_matrix_synth100_B50-Inc10_wa.png"]
    for path in report.plots:
        assert path.parent == out and path.stat().st_size > 0
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 400

    markdown = report.markdown.read_text()
    assert "| wa | conventional | 3 |" in markdown
    assert "](accuracy_curve_synth100_B0-Inc10.png)" in markdown

    page = report.html.read_text()
    assert page.count("<table>") == 3 and "<th class=\"l\">method</th>" in page
    assert "<td class=\"r\">63.1 ± 0.8</td>" in page
    assert page.count('<tr class="best">') == 3  # rank 1 of each leaderboard in bold
    assert "| wa |" not in page  # rendered, not raw markdown
    for path in report.plots:
        assert f'src="{path.name}"' in page
    assert "Protocol: conventional" in page
    assert "<link" not in page and "<script" not in page  # self-contained


def test_file_names_are_sanitised(tmp_path: Path) -> None:
    for seed in (1, 2):
        write_run(tmp_path / "runs", incremental_summary("a/b c", seed, 60.0, scenario="B0 Inc/5"))
    report = write_report([tmp_path / "runs"], out=tmp_path / "out", warn=lambda m: None)
    assert {p.name for p in report.plots} == {"accuracy_curve_synth100_B0-Inc-5.png",
                                              "accuracy_matrix_synth100_B0-Inc-5_a-b-c.png"}


def test_cli_report(runs_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-report"
    assert main(["report", str(runs_root / "incremental"), str(runs_root / "b50"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| wa | conventional | 3 |" in printed
    assert f"wrote {out / 'index.html'}" in printed and (out / "report.md").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err


def test_cli_default_out_dir(runs_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(runs_root / "classify")]) == 0
    (folder,) = (tmp_path / "reports").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["index.html", "report.md"]
