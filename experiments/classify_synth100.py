"""The classify track's README table: every method of the track on built-in data, 3 seeds.

A ResNet-56 teacher (ERM) distils into a ResNet-20 at width 8 (~70k parameters) on synth100
at 16 px (50 training and 20 validation images per class, 100 classes); every method trains
the student for the same epochs with the same optimiser, schedule and augmentation, at the
methods' paper defaults (nothing tuned here). CRReLU is compared against ReLU and GELU on
the small ViT (patch 4). Dataset Reinforcement replays views and soft labels the same teacher
stored once (``hundred data reinforce``).

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one. At the end it writes the report
(``hundred report``) and prints the table with the papers' orderings checked:

    python experiments/classify_synth100.py --out runs/classify-table      # ~40 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import runs  # experiments/runs.py: run or resume one named run directory

DATA = "{classes: 100, train_per_class: 50, val_per_class: 20, res: 16}"
STUDENT = ("model.name=resnet20", "model.options={{width: 8}}")  # str.format-escaped
VIT = ("model.name=vit_tiny_p4_32",)
COMMON = ("data.batch_size=64", "optim.lr=0.1", "train.epochs={epochs}", "quiet=true")

# row label -> (method, extra overrides); "{teacher}" is filled with the teacher's run dir
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ERM student": ("erm", STUDENT),
    "KD": ("kd", (*STUDENT, "classify.teacher={teacher}")),
    "NKD": ("nkd", (*STUDENT, "classify.teacher={teacher}")),
    "PLD": ("pld", (*STUDENT, "classify.teacher={teacher}")),
    "USKD (no teacher)": ("uskd", STUDENT),
    "DML (online, ResNet-56 peer)": ("dml", (*STUDENT, "method_params.peer=resnet56")),
    "BD-KD (online, ResNet-56 peer, reverse-KL teacher)": (
        "bdkd", (*STUDENT, "method_params.peer=resnet56",
                 "method_params.teacher_divergence=reverse")),
    "BD-KD, DML teacher term (online, ResNet-56 peer)": (
        "bdkd", (*STUDENT, "method_params.peer=resnet56",
                 "method_params.teacher_divergence=forward")),
    "LSSKD": ("lsskd", STUDENT),
    "multi-sample dropout": ("msdropout", STUDENT),
    "DR (stored views and labels)": ("dr", STUDENT),
    "ViT, ReLU": ("erm", (*VIT, "model.options.activation=relu")),
    "ViT, GELU": ("erm", (*VIT, "model.options.activation=gelu")),
    "ViT, CRReLU": ("erm", (*VIT, "model.options.activation=crrelu")),
}


def run(out: Path, method: str, name: str, overrides: list[str]) -> Path:
    """One classify run under ``out`` (on the table's synth100 unless it names its data)."""
    data = ([] if any(o.startswith("data.source=") for o in overrides)
            else ["--data", "synth100", "--set", f"data.options={DATA}"])
    return runs.run(out, "classify", method, name, [*data, *runs.settings(overrides)])[0]


def reinforced_data(out: Path, teacher: Path, samples: int) -> Path:
    """synth100 packed once at the table's size, and the teacher's Dataset Reinforcement of
    it (``samples`` stored crop-flip views per image, top-10 labels), made once."""
    packed = out / "synth100-16"
    if not (packed / "meta.json").is_file():
        options = [a for o in DATA.strip("{}").split(", ")
                   for a in ("--option", o.replace(": ", "="))]
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(packed), *options)
    reinforced = out / "synth100-16-reinforced"
    if not (reinforced / "meta.json").is_file():
        runs.hundred("data", "reinforce", str(packed), "--teacher", str(teacher), "--samples",
                str(samples), "--augment", "crop-flip", "--out", str(reinforced), "-q")
    return reinforced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/classify-table")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--dr-samples", type=int, default=10,
                        help="views stored per image for Dataset Reinforcement")
    parser.add_argument("--only", help="row labels to run, separated by ; (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    common = [c.format(epochs=args.epochs) for c in COMMON]
    teacher = run(out, "erm", "teacher-resnet56",
                  ["model.name=resnet56", *common[:-2], f"train.epochs={args.teacher_epochs}",
                   "quiet=true"])
    rows = ROWS if not args.only else {k: ROWS[k] for k in args.only.split(";")}
    results: dict[str, dict[str, list[float]]] = {}
    for label, (method, extra) in rows.items():
        for seed in range(args.seeds):
            slug = label.split(" (")[0].lower().replace(" ", "-").replace(",", "")
            overrides = [*common, *(e.format(teacher=teacher) for e in extra), f"seed={seed}"]
            if method == "dr":
                overrides.append(f"data.source={reinforced_data(out, teacher, args.dr_samples)}")
            run_dir = run(out, method, f"{slug}-s{seed}", overrides)
            summary = json.loads((run_dir / "summary.json").read_text())
            for key in ("val_top1", "val_ece", "val_loss", "train_seconds"):
                results.setdefault(label, {}).setdefault(key, []).append(float(summary[key]))
    teacher_summary = json.loads((teacher / "summary.json").read_text())
    print(f"\nteacher ResNet-56: top-1 {teacher_summary['val_top1']:.2f} %, "
          f"ECE {teacher_summary['val_ece']:.2f} %")
    print("\n| method | top-1 (%) | ECE (%) | NLL | train s/run |\n|---|---|---|---|---|")
    for label, values in results.items():
        cells = []
        for key, digits in (("val_top1", 1), ("val_ece", 1), ("val_loss", 2)):
            mean, std = runs.mean_std(values[key])
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        print(f"| {label} | {' | '.join(cells)} | {np.mean(values['train_seconds']):.0f} |")
    (out / "table.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
