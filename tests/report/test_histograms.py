"""Per-epoch histograms in reports (``ReportSpec.histograms``): a track that declares them gets,
per row, a figure of its first seed's logged histograms at the first, middle and last epochs,
in index.html and report.md; a track that declares none gets none from the same records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from hundred.registry import get_track
from hundred.report import write_report
from hundred.report.plots import shown_epochs

BINS = 10


def histogram(epoch: int) -> dict[str, Any]:
    """Positives drifting towards 1 over the epochs, negatives around 0."""
    positive = [0] * BINS
    positive[min(BINS - 1, 5 + epoch)] = 32
    negative = [0, 0, 10, 40, 100, 100, 40, 10, 0, 0]
    return {"range": [-1.0, 1.0], "counts": {"positive": positive, "negative": negative}}


def write_run(root: Path, track: str, method: str, seed: int, epochs: int = 5,
              metrics: list[dict[str, Any]] | None = None) -> Path:
    run_dir = root / track / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    summary = {"track": track, "method": method, "seed": seed, "data": "synth10",
               "model": "resnet20", "settings": "5e771765abcd", "linear_top1": 40.0 + seed,
               "val_top1": 40.0 + seed}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if metrics is None:
        metrics = [{"epoch": e, "train_loss": 1.0, "score_hist": histogram(e)}
                   for e in range(1, epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run_dir


def test_shown_epochs_are_the_first_middle_and_last():
    assert shown_epochs([3, 1, 2, 5, 4]) == [1, 3, 5]
    assert shown_epochs([1, 2]) == [1, 2]
    assert shown_epochs([7]) == [7]
    assert shown_epochs([]) == []


def test_a_track_declaring_histograms_gets_one_figure_per_row(tmp_path):
    assert "score_hist" in {h.key for h in get_track("ssl").report.histograms}
    write_run(tmp_path / "runs", "ssl", "moco", seed=1)
    write_run(tmp_path / "runs", "ssl", "moco", seed=0, epochs=3)  # the first seed: drawn
    write_run(tmp_path / "runs", "ssl", "simclr", seed=0, metrics=[{"epoch": 1}])  # logs none
    warnings: list[str] = []
    report = write_report([tmp_path / "runs"], out=tmp_path / "out", warn=warnings.append)
    figures = [p for p in report.plots if p.name.startswith("scores_")]
    assert [p.name for p in figures] == ["scores_synth10_moco.png"]  # none for simclr
    assert Image.open(figures[0]).size[0] > 0
    html = (tmp_path / "out" / "index.html").read_text()
    assert 'src="scores_synth10_moco.png"' in html and "seed 0), at epochs 1, 2, 3" in html
    assert "](scores_synth10_moco.png)" in (tmp_path / "out" / "report.md").read_text()
    assert not warnings


def test_a_track_without_histograms_gets_none_from_the_same_records(tmp_path):
    assert not get_track("classify").report.histograms
    write_run(tmp_path / "runs", "classify", "erm", seed=0)
    report = write_report([tmp_path / "runs"], out=tmp_path / "out", warn=lambda _: None)
    assert report.plots == []
    assert "<img" not in (tmp_path / "out" / "index.html").read_text()


def test_malformed_histograms_are_warned_about_not_drawn(tmp_path):
    bad = {"range": [1.0, -1.0], "counts": {"positive": [1, 2]}}  # decreasing range
    uneven = {"range": [-1.0, 1.0], "counts": {"positive": [1, 2], "negative": [1]}}
    write_run(tmp_path / "runs", "ssl", "moco", seed=0,
              metrics=[{"epoch": 1, "score_hist": bad}, {"epoch": 2, "score_hist": uneven}])
    warnings: list[str] = []
    report = write_report([tmp_path / "runs"], out=tmp_path / "out", warn=warnings.append)
    assert report.plots == []
    assert any("no score_hist histogram drawn for moco" in w for w in warnings)
    assert any("score_hist" in w for w in report.warnings)  # also in the report's Warnings
