"""The robust track's README tables on built-in data, 3 seeds (issue 16). Groups (``--group``):

* ``cuda``: CUDA unlearnable data (Sadasivan et al., CVPR 2023). synth100 at 16 px (100
  classes, 50 training and 20 validation images a class) is packed once and poisoned with a
  fixed private key (every training image, blur parameter 0.3); ERM (ResNet-20 at width 8,
  15 epochs, batch 64, SGD lr 0.1, cosine) trains on the clean and on the poisoned copy, with
  the default ``crop-flip`` augmentation and without augmentation, and is tested on the
  clean validation split (the poison never touches it). The paper: near chance when poisoned.

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one:

    python experiments/robust_synth100.py --group cuda --out runs/robust-table
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory

SYNTH = ("-o", "classes=100", "-o", "train_per_class=50", "-o", "val_per_class=20",
         "-o", "res=16")
KEY = 2023  # the poisoner's private key (a real poisoner keeps a large random one secret)
ERM = ("--model", "resnet20", "--epochs", "15", "--batch-size", "64", "--lr", "0.1", "-q",
       "--set", "model.options={width: 8}")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/robust-table")
    parser.add_argument("--group", choices=("cuda",), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--augment", choices=("crop-flip", "none"),
                        help="cuda: only this augmentation (e.g. to split the runs over two "
                        "processes)")
    args = parser.parse_args()
    augments = (args.augment,) if args.augment else ("crop-flip", "none")
    cuda_table(Path(args.out), args.seeds, augments)


if __name__ == "__main__":
    main()
