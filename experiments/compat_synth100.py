"""The compat track's acceptance table on built-in data, 3 seeds. Everything trains on
synth100 at 16 px, 10 classes, 100 training and 50 validation images a class (packed once,
as in compress_synth100.py), nothing tuned:

* backbone ResNet-20 at width 8, a linear projection to a 32-d L2-normalised embedding
  (``compat.embed_dim=32``), a bias-free linear classifier; SGD lr 0.1 (momentum 0.9, weight
  decay 5e-4), cosine schedule, batch 64, crop-flip, 40 epochs (``EPOCHS``), for the old and
  for every new model (``--recipe sgd``, the default: the acceptance table);
* per seed s (0, 1, 2): the run ``independent-s{s}`` first trains the OLD model (plain
  cross-entropy on the train images of the first 5 classes, ``compat.old_classes=0.5``) and
  then its new model; ``bct-s{s}`` and ``oca-s{s}`` reuse that old model (``--old``), so the
  three methods of a seed face the same old model and start their new models alike (the
  scenario seeds the new model with s + 1);
* new models, on all 10 classes: ``independent`` (cross-entropy only), ``bct`` (Shen et al.
  2020: + λ = 1 × CE through the frozen old classifier, extended with old prototypes for the
  unseen classes; 32-d), ``oca`` (Ricci et al. 2024: 32 + 8 = 40-d embedding, orthogonal
  layer before the new classifier, official weights 5 / 10 / 5).

Retrieval on the 500 val images (leave-one-out, cosine on common coordinates): old/old,
new/old, new/new top-1 and mAP; compatible = new/old top-1 > old/old top-1. The script prints
the per-seed numbers, the mean ± sample std table and the two claims tested (OCA compatible;
OCA's new/new closer to independent than BCT's).

``--recipe paper`` trains the same table with the OCA paper's optimiser recipe instead
(AdamW lr 1e-3, weight decay 3.05e-5, cosine after 5 warm-up epochs, label smoothing 0.1;
still 40 epochs; run names ``<method>-paper-s<seed>``), a check of the default SGD recipe:
under plain SGD a loss's overall scale is a learning-rate factor, and OCA's official weights
(5 + 10 + 5) make its loss about 10x BCT's (1 + 1), while Adam is invariant to that scale.

``--width 16`` (run names ``<method>-w16[-paper]-s<seed>``) trains ResNet-20 at width 16:
at width 8 the backbone's pooled feature f has 32 dimensions, as many as the old embedding, so
OCA's 40-d embedding (before normalisation) is W f + b: when the 32 x 32 block of W that
makes the aligned coordinates is invertible, the 8 extra coordinates are an affine function
of the 32 aligned ones and add no freedom of their own; at width 16 f has 64 dimensions.

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one; ``--jobs 2`` trains two runs at a time
(each with OMP_NUM_THREADS=1):

    OMP_NUM_THREADS=1 python experiments/compat_synth100.py --out runs/compat-table --jobs 2
    OMP_NUM_THREADS=1 python experiments/compat_synth100.py --out runs/compat-table --jobs 2 \
        --recipe paper
    OMP_NUM_THREADS=1 python experiments/compat_synth100.py --out runs/compat-table --jobs 2 \
        --width 16
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory
from compress_synth100 import packed  # synth100, 10 classes, 16 px, 100 / 50 a class

EPOCHS = 40
METHODS = ("independent", "bct", "oca")
SETTING = ("-q", "--model", "resnet20", "--batch-size", "64", "--epochs", str(EPOCHS),
           "--set", "compat.embed_dim=32", "--set", "compat.old_classes=0.5")
# the optimiser recipe (``--recipe``) and the run-name tag it gives
RECIPES = {
    # the shared defaults: SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine, no smoothing
    "sgd": ("", ("--lr", "0.1")),
    # the OCA paper's CIFAR-100 recipe (configs/compat/oca-cifar100.yaml), 40 epochs here
    "paper": ("-paper", ("--set", "optim.name=adamw", "--lr", "0.001", "--set",
                         "optim.weight_decay=3.0517578125e-5", "--set",
                         "schedule.warmup_epochs=5", "--set", "train.label_smoothing=0.1"))}
EXTRA = {"independent": (), "bct": (), "oca": ("--set", "method_params.extra_dims=8")}
COLUMNS = {"oldold_top1": "old/old top-1", "oldold_map": "old/old mAP",
           "newold_top1": "new/old top-1", "newold_map": "new/old mAP",
           "newnew_top1": "new/new top-1", "newnew_map": "new/new mAP"}


def cell(values: list[float]) -> str:
    mean, std = runs.mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def report(summaries: dict[str, list[dict[str, Any]]]) -> None:
    seeds = len(summaries["independent"])
    print("\nPer seed (%; old = the seed's old model, trained in that seed's independent "
          "run):")
    print("\n| method | seed | old model val top-1 (5 classes) | "
          + " | ".join(COLUMNS.values()) + " | new clf top-1 | compatible |")
    print("|---" * (len(COLUMNS) + 5) + "|")
    for method in METHODS:
        for seed, s in enumerate(summaries[method]):
            print(f"| {method} | {seed} | {s['old']['val_top1']:.1f} | "
                  + " | ".join(f"{s[k]:.1f}" for k in COLUMNS)
                  + f" | {s['val_top1']:.1f} | {'yes' if s['compatible'] else 'no'} |")
    print(f"\nMean ± sample std over {seeds} seeds (%):")
    print("\n| method | " + " | ".join(COLUMNS.values()) + " | new/old − old/old top-1 | "
          "new clf top-1 | compatible seeds |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for method in METHODS:
        rows = summaries[method]
        cells = [cell([s[k] for s in rows]) for k in COLUMNS]
        gain = cell([s["compat_gain_top1"] for s in rows])
        clf = cell([s["val_top1"] for s in rows])
        compatible = sum(bool(s["compatible"]) for s in rows)
        print(f"| {method} | " + " | ".join(cells) + f" | {gain} | {clf} | "
              f"{compatible}/{len(rows)} |")
    # the claims, seed by seed (paired: same old model and same new-model start per seed)
    gaps = {m: [i["newnew_top1"] - s["newnew_top1"]
                for i, s in zip(summaries["independent"], summaries[m])] for m in ("bct", "oca")}
    gaps_map = {m: [i["newnew_map"] - s["newnew_map"]
                    for i, s in zip(summaries["independent"], summaries[m])]
                for m in ("bct", "oca")}
    oca_compatible = sum(bool(s["compatible"]) for s in summaries["oca"])
    closer = sum(o < b for o, b in zip(gaps["oca"], gaps["bct"]))
    print("\nClaims (paired by seed):")
    print(f"- OCA compatible (new/old top-1 > old/old top-1): {oca_compatible}/{seeds} seeds; "
          f"new/old − old/old = {cell([s['compat_gain_top1'] for s in summaries['oca']])}")
    print(f"- new/new top-1 below independent: BCT {cell(gaps['bct'])}, OCA "
          f"{cell(gaps['oca'])} (mAP: BCT {cell(gaps_map['bct'])}, OCA {cell(gaps_map['oca'])}); "
          f"OCA closer than BCT on {closer}/{seeds} seeds")
    holds = oca_compatible == seeds and closer == seeds
    print(f"- both parts on every seed: {'yes' if holds else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/compat-table")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    parser.add_argument("--width", type=int, default=8,
                        help="ResNet-20 width (8: the acceptance table; 16: the check of the "
                        "feature bottleneck, see the module docstring)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="sgd",
                        help="sgd: the shared defaults (the acceptance table); paper: OCA's "
                        "AdamW lr 1e-3 recipe (a check, see the module docstring)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by every run's process
    out = Path(args.out)
    data = packed(out)
    tag, recipe = RECIPES[args.recipe]
    if args.width != 8:
        tag = f"-w{args.width}{tag}"
    setting = [*SETTING, "--set", f"model.options={{width: {args.width}}}", *recipe]
    # seed s's bct / oca wait for independent-s<s> (it trains their old model): it is always
    # submitted before them, so a waiting worker never blocks the run it waits for; the next
    # seed's independent run goes before them to keep both workers busy
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        def first(seed: int) -> Future[tuple[Path, dict[str, Any]]]:
            return pool.submit(runs.run, out, "compat", "independent",
                               f"independent{tag}-s{seed}",
                               ["--data", str(data), *setting, "--seed", str(seed)])

        def reusing(method: str, seed: int) -> tuple[Path, dict[str, Any]]:
            old_run, _ = firsts[seed].result()
            return runs.run(out, "compat", method, f"{method}{tag}-s{seed}",
                            ["--data", str(data), *setting, *EXTRA[method], "--seed", str(seed),
                             "--old", str(old_run)])

        firsts = [first(0)]
        later = {}
        for seed in range(args.seeds):
            if seed + 1 < args.seeds:
                firsts.append(first(seed + 1))
            for method in METHODS[1:]:
                later[method, seed] = pool.submit(reusing, method, seed)
        summaries = {"independent": [f.result()[1] for f in firsts],
                     **{m: [later[m, seed].result()[1] for seed in range(args.seeds)]
                        for m in METHODS[1:]}}
    print(f"\nResNet-20 width {args.width}; recipe: {args.recipe} ({' '.join(recipe)})")
    report(summaries)


if __name__ == "__main__":
    main()
