"""`hundred report`: collecting summaries, mean ± std over seeds, tables, plots, HTML, CLI."""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from hundred.cli import main
from hundred.errors import HundredError
from hundred.report import (aggregate, build_tables, collect_runs, format_stat, leaderboard,
                            markdown_tables, render_report, write_report)
from hundred.report.aggregate import Stat


SETTINGS = "5e771765abcd"  # a settings digest, as the engine writes it into every summary


def incremental_summary(method: str, seed: int, final: float, *, data: str = "synth100",
                        scenario: str = "B0-Inc10", tasks: int = 3, settings: str | None = SETTINGS,
                        **extra: Any) -> dict[str, Any]:
    """A plausible class-incremental summary whose curve falls linearly to ``final``;
    ``settings=None`` leaves the digest out, as summaries of older versions do."""
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
            **({"settings": settings} if settings is not None else {}), **extra}


def classify_summary(method: str, seed: int, top1: float, model: str = "resnet18",
                     settings: str | None = SETTINGS) -> dict[str, Any]:
    return {"track": "classify", "method": method, "seed": seed, "data": "synth100",
            "model": model, "val_top1": top1, "val_top5": top1 + 10, "val_loss": 1.0,
            **({"settings": settings} if settings is not None else {})}


def run_config(summary: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml for ``summary``'s run: what the engine writes (abridged), with
    ``sections`` merged in (``optim={"lr": 0.05}``)."""
    config: dict[str, Any] = {
        "track": summary["track"], "method": summary["method"],
        "name": f"run-{summary['seed']}", "root": "runs", "seed": summary["seed"], "quiet": False,
        "data": {"source": summary["data"], "classes": None, "options": {}, "batch_size": 128},
        "model": {"name": summary.get("model"), "options": {}},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "train": {"epochs": 10, "device": "cpu"}, "method_params": {},
        "provenance": {"protocol": "conventional", "phase": None}}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


def write_run(root: Path, summary: dict[str, Any] | str,
              config: dict[str, Any] | None = None) -> Path:
    """Write one run directory under ``root`` (with ``config`` as its config.yaml when
    given) and return it."""
    if isinstance(summary, str):
        run_dir = root / "broken"
        text = summary
    else:
        run_dir = root / summary["track"] / summary["method"] / f"seed{summary['seed']}"
        text = json.dumps(summary)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(text)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
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


def test_a_seed_run_twice_is_flagged_and_counted_once(tmp_path: Path) -> None:
    """Two runs of seed 1 with the same settings are one seed: the newest run counts (the
    older one is left out of the mean, the std, the curve and the matrix) and the row is
    flagged in the table and the warnings."""
    older = write_run(tmp_path / "a", incremental_summary("wa", 1, 60.0))
    newer = write_run(tmp_path / "b", incremental_summary("wa", 1, 62.0))
    write_run(tmp_path / "a", incremental_summary("wa", 2, 64.0))
    os.utime(older / "summary.json", (1_000_000, 1_000_000))
    os.utime(newer / "summary.json", (2_000_000, 2_000_000))
    messages: list[str] = []
    (row,) = aggregate(collect_runs([tmp_path]), warn=messages.append)
    assert row.seeds == [1, 2] and len(row.runs) == 2
    assert [run["summary_path"] for run in row.repeated] == [str(older / "summary.json")]
    last = row.metrics["last_accuracy"]
    assert last.n == 2 and last.mean == pytest.approx(63.0)  # 62 and 64; the older 60 is out
    assert last.std == pytest.approx(2 ** 0.5)
    (message,) = messages
    assert message.startswith("wa on synth100 — B0-Inc10 (conventional, model resnet32, "
                              f"memory 2000, settings {SETTINGS}): 3 runs but only 2 distinct seeds")
    assert "counted once, keeping its newest run" in message and str(older) in message
    assert row.warnings == (message,)

    table = leaderboard([row])
    cells = dict(zip(table.header, table.body[0]))
    assert cells["seeds"] == "2" and cells["last acc"] == "63.0 ± 1.4"
    assert cells["notes"].startswith("⚠ seeds repeated (seed 1 ×2)")
    assert "1 more run repeated a seed and was left out" in table.note
    # which run is newest decides; swapping the times keeps the other one
    os.utime(older / "summary.json", (3_000_000, 3_000_000))
    (row,) = aggregate(collect_runs([tmp_path]))
    assert row.metrics["last_accuracy"].mean == pytest.approx(62.0)


def test_different_settings_are_different_rows_named_by_the_differing_keys(tmp_path: Path) -> None:
    """The same method with lr 0.05 and lr 0.1 (different settings digests) is two rows, each
    with its own mean; the table says which config key tells them apart."""
    for seed in (1, 2):
        for lr, digest, final in ((0.05, "aaaaaaaaaaaa", 50.0), (0.1, "bbbbbbbbbbbb", 70.0)):
            summary = incremental_summary("wa", seed, final + seed, settings=digest)
            write_run(tmp_path / f"lr{lr}", summary, run_config(summary, optim={"lr": lr}))
        write_run(tmp_path / "icarl", incremental_summary("icarl", seed, 40.0))
    rows = aggregate(collect_runs([tmp_path]))
    assert [(r.method, r.settings, len(r.runs)) for r in rows] == [
        ("wa", "bbbbbbbbbbbb", 2), ("wa", "aaaaaaaaaaaa", 2), ("icarl", SETTINGS, 2)]
    assert [r.metrics["last_accuracy"].mean for r in rows] == pytest.approx([71.5, 51.5, 40.0])
    assert rows[0].config["optim.lr"] == 0.1 and "seed" not in rows[0].config
    assert "train.device" not in rows[0].config and "name" not in rows[0].config

    table = leaderboard(rows)
    assert table.header[:3] == ["method", "protocol", "settings"]
    settings = {cells[2] for cells in table.body}
    # seed and run name differ between the runs too, but never change results
    assert settings == {"optim.lr=0.1 · bbbbbbbbbbbb", "optim.lr=0.05 · aaaaaaaaaaaa", SETTINGS}
    text = markdown_tables(rows)
    assert "| wa | conventional | optim.lr=0.05 · aaaaaaaaaaaa | 2 |" in text

    report = write_report([tmp_path], out=tmp_path / "out", warn=lambda m: None)
    assert "optim.lr=0.05 · aaaaaaaaaaaa" in report.html.read_text()
    matrices = sorted(p.name for p in report.plots if "matrix" in p.name)
    assert len(matrices) == 3 and any("optim.lr-0.05" in name for name in matrices)
    assert report.warnings == []


def test_rows_without_configs_are_told_apart_by_their_digest(tmp_path: Path) -> None:
    write_run(tmp_path / "a", incremental_summary("wa", 1, 50.0, settings="aaaaaaaaaaaa"))
    write_run(tmp_path / "b", incremental_summary("wa", 1, 60.0, settings="bbbbbbbbbbbb"))
    write_run(tmp_path / "c", incremental_summary("wa", 1, 55.0, settings=None))
    rows = aggregate(collect_runs([tmp_path]), warn=lambda m: None)
    assert len(rows) == 3 and not any(row.repeated for row in rows)
    table = leaderboard(rows)
    column = table.header.index("settings")
    assert sorted(cells[column] for cells in table.body) == [
        "aaaaaaaaaaaa", "bbbbbbbbbbbb", "settings unknown"]


def test_same_settings_on_changed_data_are_separate_rows(tmp_path: Path) -> None:
    """The config names the data (a path), not its content: runs whose data fingerprints
    differ read different images and are not averaged together."""
    for seed in (1, 2):
        write_run(tmp_path / "old", incremental_summary("wa", seed, 60.0, data_fingerprint="f" * 16))
    write_run(tmp_path / "new", incremental_summary("wa", 1, 40.0, data_fingerprint="e" * 16))
    messages: list[str] = []
    rows = aggregate(collect_runs([tmp_path]), warn=messages.append)
    assert [(len(r.runs), r.metrics["last_accuracy"].mean) for r in rows] == [(2, 60.0), (1, 40.0)]
    assert len(messages) == 2 and all("changed between runs" in m for m in messages)
    table = leaderboard(rows)
    column = table.header.index("settings")
    assert [cells[column] for cells in table.body] == [f"{SETTINGS} · data {'f' * 16}",
                                                       f"{SETTINGS} · data {'e' * 16}"]


def test_summaries_without_settings_keep_one_row_and_warn(tmp_path: Path) -> None:
    """Summaries of older versions have no digest: grouped as before, flagged as unknown."""
    for seed in (1, 2):
        write_run(tmp_path, incremental_summary("wa", seed, 60.0 + seed, settings=None))
    messages: list[str] = []
    (row,) = aggregate(collect_runs([tmp_path]), warn=messages.append)
    assert row.settings is None and row.seeds == [1, 2]
    assert messages == [
        "wa on synth100 — B0-Inc10 (conventional, model resnet32, memory 2000, settings unknown): "
        "2 runs without a settings digest (summaries written by an older hundred): runs trained "
        "with different hyperparameters or data options cannot be told apart, and this row may "
        "average them"]
    assert "settings" not in leaderboard([row]).header  # nothing to tell apart
    write_run(tmp_path / "bad", incremental_summary("wa", 3, 60.0, settings=7))
    skipped: list[str] = []
    assert len(collect_runs([tmp_path], warn=lambda m: None, skipped=skipped)) == 2
    assert "'settings' must be a non-empty string" in skipped[0]


def test_warnings_are_written_into_report_md_and_index_html(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "{not json")
    write_run(runs / "a", incremental_summary("wa", 1, 60.0))
    write_run(runs / "b", incremental_summary("wa", 1, 62.0))
    write_run(runs / "old", incremental_summary("icarl", 1, 50.0, settings=None))
    # a row whose runs disagree on the schedule: neither its curve nor its heatmap is drawn
    write_run(runs, incremental_summary("lucir", 1, 50.0))
    write_run(runs, incremental_summary("lucir", 2, 50.0, tasks=2))
    report = write_report([runs], out=tmp_path / "out")
    err = capsys.readouterr().err
    assert len(report.warnings) == 5
    skipped, repeated, unknown, no_curve, no_matrix = report.warnings
    assert skipped.startswith("skipped ") and "not valid JSON" in skipped
    assert "2 runs but only 1 distinct seed " in repeated and "counted once" in repeated
    assert "icarl" in unknown and "without a settings digest" in unknown
    assert no_curve.startswith("no step_top1 curve drawn for lucir on B0-Inc10 on synth100")
    assert "disagree on classes_per_step" in no_curve
    assert no_matrix.startswith("no accuracy_matrix heatmap drawn for lucir")
    assert all(f"warning: {message}" in err for message in report.warnings)  # stderr too

    markdown = report.markdown.read_text()
    section = markdown[markdown.index("## Warnings"):markdown.index("## Track: incremental")]
    assert "5 warnings" in section and all(f"- ⚠ {m}\n" in section for m in report.warnings)
    assert "⚠ seeds repeated (seed 1 ×2)" in markdown  # the row's notes cell
    page = report.html.read_text()
    box = page[page.index('<div class="warnings"'):page.index("</div>")]
    assert page.index(box) < page.index("<table>")  # seen before any number
    assert all(f"<li>{escape(m)}</li>" in box for m in report.warnings)
    assert '<td class="l warn">⚠ seeds repeated (seed 1 ×2)' in page


def test_render_report_shows_the_warnings_of_the_rows_it_is_given(tmp_path: Path) -> None:
    """``hundred check`` calls render_report with its own tables and no warnings argument:
    the rows' warnings still reach both files; ``warnings=`` adds the caller's own."""
    write_run(tmp_path / "a", incremental_summary("wa", 1, 60.0))
    write_run(tmp_path / "b", incremental_summary("wa", 1, 62.0))
    rows = aggregate(collect_runs([tmp_path]))
    report = render_report(build_tables(rows), rows, tmp_path / "out", ["meta line"])
    assert len(report.warnings) == 1 and "distinct seed" in report.warnings[0]
    assert report.warnings[0] in report.markdown.read_text()
    report = render_report(build_tables(rows), rows, tmp_path / "out2", ["meta"], (),
                           "title", lambda m: None, warnings=["the caller's own"])
    assert report.warnings[-1] == "the caller's own"
    assert "the caller&#x27;s own" in report.html.read_text()
    clean = tmp_path / "clean"
    write_run(clean, incremental_summary("wa", 1, 60.0))
    report = write_report([clean], out=tmp_path / "out3")
    assert report.warnings == [] and "Warnings" not in report.markdown.read_text()
    assert 'class="warnings"' not in report.html.read_text()


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
