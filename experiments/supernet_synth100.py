"""The elastic supernet's claims on built-in data (issue 19), up to 3 seeds. Everything trains on
synth100 at 16 px, 10 classes, 100 training and 50 validation images a class (packed once, the
data of experiments/compress_synth100.py), one small ``elastic_resnet`` (stage widths 16/32/64,
at most 2/2/2 blocks, hidden ratios 0.5/0.75/1, kernels 3/5, at least 1 block a stage), 10
epochs, batch 64, SGD lr 0.1 with the run's default schedule, nothing tuned. Groups
(``--group``):

* ``bignas`` (claim 1): a BigNAS supernet (sandwich: largest + smallest + 2 random children,
  in-place KD), then ``hundred search compress`` at FLOPs budgets 0.5 and 0.3 (100 random
  children, the 3 with the most FLOPs under the budget BN-recalibrated and scored on 1000
  training images, the best reported on val); budget 1.0 is the supernet's own export (the
  largest child, BN recalibrated); budget 0.0925 admits the smallest child only. Each chosen
  architecture is then trained alone from scratch (``compress/dense`` with
  ``model.options.child``; the largest child = the supernet without ``child``), the same 10
  epochs.
* ``deps`` (claim 2): DεpS (shrinking starts at half the steps) against shrinking from the
  start: the ``bignas`` group's supernet and DεpS with ``shrink_start`` 0, all 10 epochs (equal
  epochs = equal optimiser steps and data; DεpS with ``shrink_start`` 0.5 runs fewer child
  forward/backward passes, 1 a step for the first half, 4 after). Reported: top-1 of the
  largest child (the run's export, BN recalibrated) and of the smallest child (``hundred
  search compress --flops 0.0925 --samples 1 --evaluate 1``: only the smallest child, at
  0.092 of the largest child's FLOPs, fits; BN recalibrated on 16 training batches). The
  OFA progressive-shrinking schedule (``compress/ofa``: the full network alone for half the
  steps, then elastic kernel, from 0.6 also depth, from 0.8 also width, 4 children a step
  with KD from the frozen full network) runs the same steps and as many child passes a step
  as DεpS after its shrinking point (plus one teacher forward pass).

Runs are ordinary run directories under ``--out`` with fixed names; run again to skip finished
runs:

    python experiments/supernet_synth100.py --group bignas --out /work/runs/supernet-table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory
from compress_synth100 import COMMON, collect, packed, print_table

SPACE = {"widths": [16, 32, 64], "depths": [2, 2, 2]}
TRAIN = ("--model", "elastic_resnet", "--batch-size", "64", "--lr", "0.1", "--epochs", "10")
SEARCH_SAMPLES, SEARCH_EVALUATE = 100, 3
# the smallest child's FLOPs are 0.0924 of the largest's in SPACE (3.38 of 36.54 MFLOPs): a
# budget of 0.0925 admits the smallest child only (every other child has more FLOPs)
SMALLEST_FLOPS = 0.0925


def options(child: dict[str, Any] | None = None) -> tuple[str, str]:
    value = dict(SPACE, **({"child": child} if child is not None else {}))
    return "--set", f"model.options={json.dumps(value)}"


def search(out: Path, supernet: Path, method: str, name: str, flops: float, seed: int,
           samples: int = SEARCH_SAMPLES, evaluate: int = SEARCH_EVALUATE) -> dict[str, Any]:
    """The finished ``hundred search compress`` run ``name`` of ``supernet`` (started if
    missing)."""
    run_dir = out / "compress" / method / name
    if not (run_dir / "summary.json").is_file():
        runs.hundred("search", "compress", str(supernet), "--flops", str(flops), "--samples",
                     str(samples), "--evaluate", str(evaluate), "--name", name,
                     "--seed", str(seed))
    return json.loads((run_dir / "summary.json").read_text())


def supernet(out: Path, data: Path, method: str, name: str, seed: int, *extra: str
             ) -> tuple[Path, dict[str, Any]]:
    return runs.run(out, "compress", method, name,
                    ["--data", str(data), *COMMON, *TRAIN, *options(), *extra,
                     "--seed", str(seed)])


def bignas(out: Path, seeds: int) -> None:
    data = packed(out)
    rows: dict[str, dict[str, list[float]]] = {}
    keys = {"flops": lambda s: s["flops_ratio"], "child": lambda s: s["child_top1"],
            "alone": lambda s: s["alone_top1"], "gap": lambda s: s["gap"]}
    for seed in range(seeds):
        run_dir, summary = supernet(out, data, "bignas", f"bignas-s{seed}", seed)
        chosen = {1.0: (summary, None)}
        for flops in (0.5, 0.3):
            found = search(out, run_dir, "bignas", f"bignas-s{seed}-f{flops:g}", flops, seed)
            chosen[flops] = (found, found["supernet"]["child"])
        found = search(out, run_dir, "bignas", f"bignas-s{seed}-smallest", SMALLEST_FLOPS,
                       seed, samples=1, evaluate=1)
        chosen[SMALLEST_FLOPS] = (found, found["supernet"]["child"])
        for flops, (found, child) in chosen.items():
            _, alone = runs.run(out, "compress", "dense", f"alone-s{seed}-f{flops:g}",
                                ["--data", str(data), *COMMON, *TRAIN, *options(child),
                                 "--seed", str(seed)])
            label = f"budget {flops:g}" + (" (largest child)" if child is None else
                                           " (smallest child)" if flops == SMALLEST_FLOPS
                                           else "")
            collect(rows, label, {"flops_ratio": found.get("flops_ratio", 1.0),
                                  "child_top1": found["val_top1"],
                                  "alone_top1": alone["val_top1"],
                                  "gap": found["val_top1"] - alone["val_top1"]}, keys)
            print(f"seed {seed} budget {flops:g}: FLOPs {found.get('flops_ratio', 1.0):.3f} "
                  f"child {found['val_top1']:.1f} alone {alone['val_top1']:.1f}, "
                  f"alone FLOPs {alone.get('flops_ratio')}", flush=True)
    print_table(rows, {"flops": "FLOPs vs largest", "child": "supernet child top-1 (%)",
                       "alone": "stand-alone top-1 (%)",
                       "gap": "child - stand-alone (paired, points)"}, {"flops": 3})


def deps(out: Path, seeds: int) -> None:
    data = packed(out)
    rows: dict[str, dict[str, list[float]]] = {}
    keys = {"largest": lambda s: s["largest"], "smallest": lambda s: s["smallest"],
            "smallest_flops": lambda s: s["smallest_flops"], "seconds": lambda s: s["seconds"]}
    variants = (("DεpS, shrink_start 0.5 (late)", "deps", "deps-s{seed}", ()),
                ("BigNAS (shrinks from the start)", "bignas", "bignas-s{seed}", ()),
                ("DεpS, shrink_start 0 (from the start)", "deps", "deps0-s{seed}",
                 ("--set", "method_params.shrink_start=0")),
                ("OFA progressive shrinking (from 0.5: kernel, depth 0.6, width 0.8)", "ofa",
                 "ofa-s{seed}", ()))
    for seed in range(seeds):
        for label, method, name, extra in variants:
            run_dir, summary = supernet(out, data, method, name.format(seed=seed), seed,
                                        *extra)
            smallest = search(out, run_dir, method, f"{name.format(seed=seed)}-smallest",
                              SMALLEST_FLOPS, seed, samples=1, evaluate=1)
            collect(rows, label, {"largest": summary["val_top1"],
                                  "smallest": smallest["val_top1"],
                                  "smallest_flops": smallest["flops_ratio"],
                                  "seconds": summary["train_seconds"]}, keys)
            print(f"seed {seed} {label}: largest {summary['val_top1']:.1f} smallest "
                  f"{smallest['val_top1']:.1f}", flush=True)
    print_table(rows, {"largest": "largest child top-1 (%)",
                       "smallest": "smallest child top-1 (%)",
                       "smallest_flops": "smallest child FLOPs vs largest",
                       "seconds": "training seconds (shared CPU)"},
                {"smallest_flops": 3, "seconds": 0})


GROUPS = {"bignas": bignas, "deps": deps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/supernet-table")
    parser.add_argument("--group", choices=sorted(GROUPS), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    GROUPS[args.group](Path(args.out), args.seeds)


if __name__ == "__main__":
    main()
