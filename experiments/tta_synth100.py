"""The robust track's test-time adaptation table on built-in data, 3 seeds: TENT, EATA and
ReservoirTTA (Vray et al., NeurIPS 2025) on a long recurring stream of corruptions.

What it trains and adapts, per seed s (0, 1, 2 by default):

* data: synth100 at 16 px, 10 classes, 100 training and 50 validation images a class,
  packed once (``compress_synth100.packed``, shared by all seeds); its val split corrupted
  once per seed with ``hundred data corrupt --corruptions all --severities 5 --seed s``
  (the 15 CIFAR-10-C / ImageNet-C corruptions at severity 5: 15 domains of 500 images);
* source: one ERM model (``robust/erm``): ResNet-20 at width 8, 20 epochs (the builder's
  measurement), batch 64, SGD lr 0.1 momentum 0.9, weight decay 5e-4, cosine, crop-flip,
  seed s;
* stream: the 15 domains in the benchmark's order, recurring, 10 cycles (75,000 test images),
  batch 64, one adaptation step a batch, image order drawn from ``robust.tta.seed = s``;
* one optimiser for every method: Adam lr 1e-3 (TENT's CIFAR setting), nothing tuned;
* methods (``--init`` the seed's source): ``tta_source`` (no adaptation), ``tent``,
  ``eata`` and ``reservoir_tta`` with ``base`` = tent and = eata, all at their config
  defaults (reservoir: tau = 0.3, K_max = 16; EATA: E0 = 0.4 ln C, redundancy 0.05,
  Fisher alpha 2000 on 2000 clean train images);
* a diagnostic (not a paper method, not in the figure): ``tent`` at Adam lr 1e-12, whose
  parameters practically never move, so it measures test-batch normalisation statistics
  alone (what EATA reduces to when its entropy filter admits almost no sample).

Printed: the stream top-1 (``robust_top1``), the cycle-1 and cycle-10 accuracy (mean over the
cycle's 15 domains), the specialists the reservoir opened and EATA's selected share (mean ±
sample std over seeds), then the accuracy of every cycle. The figure (``--figure``, default
``docs/figures/tta_recurring_cycles.png``) plots the accuracy per cycle, one line per method,
the mean over seeds with a ±std band.

Runs are ordinary run directories under ``--out`` with fixed names
(``robust/erm/source-s0``, ``robust/tent/tent-s0``, ``robust/reservoir_tta/reservoir-tent-s0``
...), so running the script again skips finished runs and resumes a killed one. ``--jobs 2``
runs two at a time (each child gets ``OMP_NUM_THREADS=1`` unless already set):

    OMP_NUM_THREADS=1 python experiments/tta_synth100.py --out runs/tta-table --jobs 2
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory
from compress_synth100 import packed  # synth100, 10 classes, 100/50 a class, 16 px

SOURCE = ("--model", "resnet20", "--set", "model.options={width: 8}", "--batch-size", "64",
          "-q")
SOURCE_TRAIN = ("--lr", "0.1", "--epochs", "20")
CYCLES = 10
STREAM = ("robust.tta.schedule=recurring", "robust.tta.corruptions=[all]",
          "robust.tta.severities=[5]", f"robust.tta.cycles={CYCLES}",
          "robust.tta.batch_size=64", "robust.tta.steps=1", "robust.tta.optimizer=adam",
          "robust.tta.lr=0.001")
DIAGNOSTIC = "diagnostic: TENT at lr 1e-12 (test-batch BN statistics only)"
# (label, method, run name stem, extra overrides)
METHODS = (("source (no adaptation)", "tta_source", "tta_source", ()),
           ("TENT", "tent", "tent", ()),
           ("EATA", "eata", "eata", ()),
           ("ReservoirTTA (base TENT)", "reservoir_tta", "reservoir-tent",
            ("method_params.base=tent",)),
           ("ReservoirTTA (base EATA)", "reservoir_tta", "reservoir-eata",
            ("method_params.base=eata",)),
           # a diagnostic, not a paper method: TENT whose Adam step is ~1e-12, i.e. only
           # test-batch normalisation statistics (what EATA reduces to when its entropy
           # filter admits almost nothing); not in the figure
           (DIAGNOSTIC, "tent", "tent-lr1e-12", ("robust.tta.lr=1e-12",)))
FIGURE = Path(__file__).resolve().parent.parent / "docs" / "figures" / \
    "tta_recurring_cycles.png"


def corrupted(out: Path, data: Path, seed: int) -> Path:
    """The val split of ``data`` corrupted once for ``seed`` (15 types, severity 5)."""
    pack = out / "data" / f"synth100-10c-16-c15s5-seed{seed}"
    if not (pack / "meta.json").is_file():  # written atomically: a folder is a finished one
        runs.hundred("data", "corrupt", str(data), "--out", str(pack), "--corruptions", "all",
                     "--severities", "5", "--seed", str(seed), "--replace")
    return pack


def prepare(out: Path, data: Path, seed: int) -> tuple[Path, Path]:
    """The seed's corrupted pack and finished ERM source run."""
    pack = corrupted(out, data, seed)
    source, _ = runs.run(out, "robust", "erm", f"source-s{seed}",
                         ["--data", str(data), *SOURCE, *SOURCE_TRAIN, "--seed", str(seed)])
    return pack, source


def adapt(out: Path, data: Path, seed: int, pack: Path, source: Path, method: str,
          stem: str, extra: tuple[str, ...]) -> dict[str, Any]:
    _, summary = runs.run(out, "robust", method, f"{stem}-s{seed}",
                          ["--data", str(data), *SOURCE, "--init", str(source),
                           *runs.settings([f"robust.tta.pack={pack}", f"robust.tta.seed={seed}",
                                           *STREAM, *extra]),
                           "--seed", str(seed)])
    return summary


def cell(values: list[float], digits: int = 1) -> str:
    if not values:
        return "—"
    mean, std = runs.mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def figure(curves: dict[str, list[list[float]]], path: Path, seeds: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150)
    cycles = np.arange(1, CYCLES + 1)
    for label, per_seed in curves.items():
        values = np.asarray(per_seed, dtype=float)
        mean = values.mean(0)
        std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
        line, = ax.plot(cycles, mean, marker="o", markersize=3, label=label,
                        linestyle="--" if "no adaptation" in label else "-")
        ax.fill_between(cycles, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("cycle (15 corruptions at severity 5 each)")
    ax.set_ylabel("top-1 (%), mean over the cycle's domains")
    ax.set_xticks(cycles)
    ax.set_title(f"Recurring TTA, synth100 16 px, ResNet-20 w8, Adam 1e-3 ({seeds} seeds)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"\nfigure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/tta-table")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args.out)
    data = packed(out)
    seeds = list(range(args.seeds))
    with ThreadPoolExecutor(args.jobs) as pool:
        prepared = dict(zip(seeds, pool.map(lambda s: prepare(out, data, s), seeds)))
        jobs = [(s, m) for s in seeds for m in METHODS]
        summaries = list(pool.map(
            lambda job: adapt(out, data, job[0], *prepared[job[0]], *job[1][1:]), jobs))
    rows: dict[str, dict[str, list[float]]] = {}
    curves: dict[str, list[list[float]]] = {}
    clean: list[float] = []
    for (seed, (label, method, _, _)), summary in zip(jobs, summaries):
        row = rows.setdefault(label, {"stream": [], "first": [], "last": [], "models": [],
                                      "selected": []})
        row["stream"].append(summary["robust_top1"])
        row["first"].append(summary["tta_first_cycle_top1"])
        row["last"].append(summary["tta_last_cycle_top1"])
        if "tta_specialists" in summary:
            row["models"].append(summary["tta_specialists"])
        if summary.get("tta_selected_share") is not None:
            row["selected"].append(100 * summary["tta_selected_share"])
        if label != DIAGNOSTIC:
            curves.setdefault(label, []).append(summary["tta_cycle_top1"])
        if method == "tta_source":
            clean.append(summary["val_top1"])
    print(f"\nsource clean val top-1: {cell(clean)} ({len(clean)} seeds)")
    print("\n| method | stream top-1 (%) | cycle 1 (%) | cycle 10 (%) | cycle 10 − cycle 1 | "
          "specialists | EATA selected (%) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, row in rows.items():
        drift = [b - a for a, b in zip(row["first"], row["last"])]
        print(f"| {label} | {cell(row['stream'])} | {cell(row['first'])} | "
              f"{cell(row['last'])} | {cell(drift)} | {cell(row['models'])} | "
              f"{cell(row['selected'], 2)} |")
    print("\n| method | " + " | ".join(f"cycle {c}" for c in range(1, CYCLES + 1)) + " |")
    print("|---" + "|---:" * CYCLES + "|")
    for label, per_seed in curves.items():
        cells = [cell([curve[c] for curve in per_seed]) for c in range(CYCLES)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    figure(curves, args.figure, len(seeds))


if __name__ == "__main__":
    main()
