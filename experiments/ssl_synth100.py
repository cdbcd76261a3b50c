"""The ssl track's README table: every pre-training method on built-in data, 3 seeds.

A ResNet-20 at width 8 (~70k parameters, 32-d features) is pre-trained on synth100 at 16 px
(50 training and 20 validation images per class, 100 classes; labels unused) for the same
epochs, batch, optimiser and view recipe (``simclr-small``) by every method at its paper
defaults (nothing tuned here), except MoCo's queue: 1024 keys, about a fifth of the 5000
training images (the papers' 65536 is larger than the dataset). Each run ends with the
track's offline evaluation on the held-out split: a linear probe on frozen, standardised
features and weighted kNN (k = 20, 200). ``random`` is the untrained backbone.

Selfie is evaluated as its paper does, by fine-tuning: ``hundred run classify erm --init
RUN_DIR`` with 10 % and 100 % of the labels (class-balanced, seeded), against the same ResNet
trained from scratch on the same labels (SimCLR fine-tuned alongside, for scale).

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one. At the end it prints the two tables with
the issue's orderings checked:

    python experiments/ssl_synth100.py --out runs/ssl-table      # ~70 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import runs  # experiments/runs.py: run or resume one named run directory

DATA = "{classes: 100, train_per_class: 50, val_per_class: 20, res: 16}"
MODEL = ("model.name=resnet20", "model.options={width: 8}")
SSL_COMMON = ("data.batch_size=128", "ssl.augment=simclr-small", "quiet=true")
CLASSIFY_COMMON = ("data.batch_size=64", "optim.lr=0.1", "quiet=true")
QUEUE = ("method_params.queue_size=1024",)

# row label -> (ssl method, extra overrides)
PRETRAIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "random init (no pre-training)": ("random", ()),
    "SimCLR": ("simclr", ()),
    "MoCo v2": ("moco", QUEUE),
    "BYOL": ("byol", ()),
    "SimSiam": ("simsiam", ()),
    "MoCo v2 + feature transformation": ("moco_ft", QUEUE),
    "Selfie (probe of its patch network + random last stage)": ("selfie", ()),
}
FINETUNE_FROM = {"Selfie": "selfie", "SimCLR": "simclr"}  # pre-trained rows fine-tuned
FRACTIONS = (0.1, 1.0)


def run(out: Path, track: str, method: str, name: str, overrides: list[str],
        init: Path | None = None) -> Path:
    """One run under ``out`` on the table's synth100 (``init``: classify's pre-trained run)."""
    start = ["--data", "synth100", "--set", f"data.options={DATA}"]
    start += ["--init", str(init)] if init is not None else []
    return runs.run(out, track, method, name, [*start, *runs.settings(overrides)])[0]


def cell(values: list[float]) -> str:
    mean, std = runs.mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/ssl-table")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="pre-training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--only", help="pre-training rows to run, separated by ; (no "
                        "fine-tuning, no table: e.g. to split the runs over two processes)")
    args = parser.parse_args()
    out = Path(args.out)
    pretrain_dirs: dict[tuple[str, int], Path] = {}
    probe: dict[str, dict[str, list[float]]] = {}
    rows = PRETRAIN if not args.only else {k: PRETRAIN[k] for k in args.only.split(";")}
    for label, (method, extra) in rows.items():
        for seed in range(args.seeds):
            epochs = 1 if method == "random" else args.epochs  # random: nothing to train
            overrides = [*MODEL, *SSL_COMMON, *extra, f"train.epochs={epochs}", f"seed={seed}"]
            run_dir = run(out, "ssl", method, f"s{seed}", overrides)
            pretrain_dirs[method, seed] = run_dir
            summary = json.loads((run_dir / "summary.json").read_text())
            for key in ("linear_top1", "knn20_top1", "knn200_top1", "online_top1"):
                probe.setdefault(label, {}).setdefault(key, []).append(float(summary[key]))

    if args.only:
        return
    finetune: dict[str, dict[float, list[float]]] = {}
    for label, method in {"scratch": None, **FINETUNE_FROM}.items():
        for fraction in FRACTIONS:
            for seed in range(args.seeds):
                overrides = [*MODEL, *CLASSIFY_COMMON, f"train.epochs={args.finetune_epochs}",
                             f"data.label_fraction={fraction}", f"seed={seed}"]
                init = pretrain_dirs[method, seed] if method else None
                name = f"{label.lower()}-f{fraction:g}-s{seed}"
                run_dir = run(out, "classify", "erm", name, overrides, init=init)
                summary = json.loads((run_dir / "summary.json").read_text())
                finetune.setdefault(label, {}).setdefault(fraction, []).append(
                    float(summary["val_top1"]))

    print("\n| pre-training | linear probe top-1 (%) | kNN k=20 (%) | kNN k=200 (%) "
          "| online probe (%) |\n|---|---|---|---|---|")
    for label, values in probe.items():
        cells = [cell(values[k]) for k in ("linear_top1", "knn20_top1", "knn200_top1",
                                           "online_top1")]
        print(f"| {label} | {' | '.join(cells)} |")
    print("\n| fine-tuned from | 10 % labels top-1 (%) | 100 % labels top-1 (%) |\n|---|---|---|")
    for label, values in finetune.items():
        print(f"| {label} | {' | '.join(cell(values[f]) for f in FRACTIONS)} |")

    linear = {label: np.mean(v["linear_top1"]) for label, v in probe.items()}
    floor = linear["random init (no pre-training)"]
    print("\norderings:")
    for label, value in linear.items():
        if not label.startswith(("random", "Selfie")):
            print(f"  {label} linear {value:.1f} vs random {floor:.1f}: "
                  f"{'holds' if value > 2 * floor else 'does not hold'} (> 2x random)")
    ft, moco = linear["MoCo v2 + feature transformation"], linear["MoCo v2"]
    print(f"  MoCo + FT {ft:.1f} >= MoCo {moco:.1f}: {'holds' if ft >= moco else 'does not hold'}")
    selfie, scratch = (np.mean(finetune[k][0.1]) for k in ("Selfie", "scratch"))
    print(f"  Selfie fine-tuned {selfie:.1f} >= scratch {scratch:.1f} at 10 % labels: "
          f"{'holds' if selfie >= scratch else 'does not hold'}")
    (out / "table.json").write_text(json.dumps({"probe": probe, "finetune": {
        k: {str(f): v for f, v in d.items()} for k, d in finetune.items()}}, indent=1))


if __name__ == "__main__":
    main()
