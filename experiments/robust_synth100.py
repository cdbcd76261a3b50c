"""The robust track's README tables on built-in data, 3 seeds (issue 16). Groups (``--group``):

* ``cuda``: CUDA unlearnable data (Sadasivan et al., CVPR 2023). synth100 at 16 px (100
  classes, 50 training and 20 validation images a class) is packed once and poisoned with a
  fixed private key (every training image, blur parameter 0.3); ERM (ResNet-20 at width 8,
  15 epochs, batch 64, SGD lr 0.1, cosine) trains on the clean and on the poisoned copy, with
  the default ``crop-flip`` augmentation and without augmentation, and is tested on the
  clean validation split (the poison never touches it). The paper: near chance when poisoned.

* ``defences``: clean and PGD-20 accuracy (L∞ 8/255, step 2/255, one random start) of ERM,
  PGD adversarial training from scratch (``at``: PGD-10, step 2/255), adversarial
  fine-tuning (``adv_finetune``: the ERM run of the same seed, then a few epochs of PGD-10 on
  its slow-start fast-decay schedule) and DAT. synth100 at 16 px, 10 classes, 100 training
  and 50 validation images a class; ResNet-20 at width 8, batch 64, SGD lr 0.1 (crop-flip).
  ERM, AT and DAT train 30 epochs, fine-tuning 3 (a tenth of AT's adversarial epochs). AT is
  also run for 3 epochs, the fine-tuning's compute. Compute is counted in forward-backward
  passes over a training image: an ERM epoch is 1, an adversarial epoch 11 (10 PGD steps and
  the update).

* ``quscore``: QuScore (Abdukhamidov et al. 2023) against two undefended models of the
  ``defences`` data, the ERM ResNet-20 of that group and an ERM ConvNet-D3 (30 epochs), each
  coupled with two interpreters (CAM, vanilla gradient): success rate and median queries on
  the whole validation split (500 images), L∞ 8/255, at most 1000 queries an image. The
  attacker owns the *other* architecture's model of the same seed as its surrogate (the
  paper's transfer stage). Needs the ``defences`` group's ERM runs (made if missing).

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one:

    python experiments/robust_synth100.py --group cuda --out runs/robust-table
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

import runs  # experiments/runs.py: run or resume one named run directory

SYNTH = ("-o", "classes=100", "-o", "train_per_class=50", "-o", "val_per_class=20",
         "-o", "res=16")
KEY = 2023  # the poisoner's private key (a real poisoner keeps a large random one secret)
ERM = ("--model", "resnet20", "--epochs", "15", "--batch-size", "64", "--lr", "0.1", "-q",
       "--set", "model.options={width: 8}")


DEFENCE_DATA = ("-o", "classes=10", "-o", "train_per_class=100", "-o", "val_per_class=50",
                "-o", "res=16")
DEFENCE = ("--model", "resnet20", "--batch-size", "64", "--lr", "0.1", "-q", "--eps", "8/255",
           "--set", "model.options={width: 8}", "--set", "robust.eval_step_size=2/255")
LONG, SHORT = 30, 3  # epochs of the from-scratch runs; of fine-tuning (a tenth)
PGD_PASSES = 11  # forward-backward passes a PGD-10 training step costs per image


def packed_data(out: Path) -> tuple[Path, Path]:
    """The clean packed synth100 and its CUDA-poisoned copy (made once)."""
    clean, poisoned = out / "data" / "synth100-16", out / "data" / "synth100-16-cuda"
    if not (clean / "meta.json").is_file():
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(clean), "-q",
                     "--force", *SYNTH)
    if not (poisoned / "meta.json").is_file():
        runs.hundred("data", "poison", str(clean), "--method", "cuda", "--key", str(KEY),
                     "--out", str(poisoned), "--replace")
    return clean, poisoned


def cuda_table(out: Path, seeds: int, augments: tuple[str, ...]) -> None:
    clean, poisoned = packed_data(out)
    results: dict[tuple[str, str], list[float]] = {}
    for augment in augments:
        for label, data in (("clean", clean), ("CUDA-poisoned", poisoned)):
            for seed in range(seeds):
                name = f"{label.lower()}-{augment}-s{seed}"
                _, summary = runs.run(out / "cuda", "classify", "erm", name,
                                      ["--data", str(data), *ERM, "--seed", str(seed),
                                       "--set", f"data.augment={augment}"])
                results.setdefault((label, augment), []).append(float(summary["val_top1"]))
    print("\n| training data | augmentation | clean test top-1 (%) |\n|---|---|---|")
    for (label, augment), values in results.items():
        mean, std = runs.mean_std(values)
        print(f"| {label} | {augment} | {mean:.1f} ± {std:.1f} |")


def defence_table(out: Path, seeds: int) -> None:
    data = out / "data" / "synth100-10c-16"
    if not (data / "meta.json").is_file():
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(data), "-q",
                     "--force", *DEFENCE_DATA)
    rows: dict[str, dict[str, list[float]]] = {}
    specs = (  # label, method, epochs, passes per epoch, extra arguments
        ("ERM", "erm", LONG, 1, ()),
        (f"AT from scratch, {LONG} epochs", "at", LONG, PGD_PASSES, ()),
        (f"AT from scratch, {SHORT} epochs (fine-tuning's compute)", "at", SHORT, PGD_PASSES,
         ()),
        (f"adversarial fine-tuning, {SHORT} epochs from ERM", "adv_finetune", SHORT,
         PGD_PASSES, ("init",)),
        (f"DAT, {LONG} epochs", "dat", LONG, None, ()),
    )
    for label, method, epochs, passes, extra in specs:
        for seed in range(seeds):
            args = ["--data", str(data), *DEFENCE, "--epochs", str(epochs), "--seed", str(seed)]
            if "init" in extra:
                args += ["--init", str(out / "robust" / "erm" / f"erm-{LONG}-s{seed}")]
            _, summary = runs.run(out, "robust", method, f"{method}-{epochs}-s{seed}", args)
            row = rows.setdefault(label, {"clean": [], "pgd": [], "seconds": []})
            row["clean"].append(float(summary["val_top1"]))
            row["pgd"].append(float(summary["robust_top1"]))
            row["seconds"].append(float(summary["train_seconds"]))
            row["passes"] = [epochs * passes] if passes else []
    at_passes = LONG * PGD_PASSES
    at_seconds = float(np.mean(rows[f"AT from scratch, {LONG} epochs"]["seconds"]))
    print("\n| method | clean top-1 (%) | PGD-20 top-1 (%) | passes / image (vs AT-30) "
          "| train s (vs AT-30) |\n|---|---|---|---|---|")
    for label, row in rows.items():
        clean, clean_std = runs.mean_std(row["clean"])
        pgd, pgd_std = runs.mean_std(row["pgd"])
        seconds = float(np.mean(row["seconds"]))
        passes = f"{row['passes'][0]} ({row['passes'][0] / at_passes:.2f}×)" if row["passes"] \
            else "—"
        print(f"| {label} | {clean:.1f} ± {clean_std:.1f} | {pgd:.1f} ± {pgd_std:.1f} | "
              f"{passes} | {seconds:.0f} ({seconds / at_seconds:.2f}×) |")


QUSCORE_QUERIES = 1000


def quscore_table(out: Path, seeds: int) -> None:
    data = out / "data" / "synth100-10c-16"
    if not (data / "meta.json").is_file():
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(data), "-q",
                     "--force", *DEFENCE_DATA)
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for seed in range(seeds):
        common = ["--data", str(data), *DEFENCE, "--epochs", str(LONG), "--seed", str(seed)]
        models = {
            "ResNet-20": runs.run(out, "robust", "erm", f"erm-{LONG}-s{seed}", common)[0],
            "ConvNet-D3": runs.run(out, "robust", "erm", f"convnet-{LONG}-s{seed}",
                                   [*common, "--model", "convnet_d3", "--set",
                                    "model.options={}"])[0]}
        for name, run_dir in models.items():
            surrogate = next(other for key, other in models.items() if key != name)
            for interpreter in ("cam", "grad"):
                summary = json.loads((run_dir / "summary.json").read_text())
                done = [entry for entry in summary.get("attacks", [])
                        if entry["attack"] == "quscore" and entry["interpreter"] == interpreter
                        and entry["max_queries"] == QUSCORE_QUERIES]
                if not done:
                    runs.hundred("attack", str(run_dir), "--attack", "quscore", "--eps",
                                 "8/255", "--interpreter", interpreter, "--max-queries",
                                 str(QUSCORE_QUERIES), "--surrogate", str(surrogate),
                                 "--seed", str(seed))
                    summary = json.loads((run_dir / "summary.json").read_text())
                    done = [entry for entry in summary["attacks"]
                            if entry["attack"] == "quscore"
                            and entry["interpreter"] == interpreter]
                entry = done[-1]
                row = results.setdefault((name, interpreter), {})
                for key in ("clean_top1", "success_rate", "median_queries", "interp_iou",
                            "robust_top1"):
                    value = entry[key]
                    row.setdefault(key, []).append(math.nan if value is None else float(value))
    print(f"\n| model | interpreter | clean top-1 (%) | success rate (%) | median queries "
          f"| top-20 % IoU of maps | top-1 under attack (%) |\n|---|---|---|---|---|---|---|")
    for (name, interpreter), row in results.items():
        cells = []
        for key, scale in (("clean_top1", 1), ("success_rate", 100), ("median_queries", 1),
                           ("interp_iou", 1), ("robust_top1", 1)):
            mean, std = runs.mean_std([value * scale for value in row[key]])
            digits = 2 if key == "interp_iou" else 1 if key != "median_queries" else 0
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        print(f"| {name} | {interpreter} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/robust-table")
    parser.add_argument("--group", choices=("cuda", "defences", "quscore"), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--augment", choices=("crop-flip", "none"),
                        help="cuda: only this augmentation (e.g. to split the runs over two "
                        "processes)")
    args = parser.parse_args()
    if args.group == "defences":
        defence_table(Path(args.out), args.seeds)
        return
    if args.group == "quscore":
        quscore_table(Path(args.out), args.seeds)
        return
    augments = (args.augment,) if args.augment else ("crop-flip", "none")
    cuda_table(Path(args.out), args.seeds, augments)


if __name__ == "__main__":
    main()
