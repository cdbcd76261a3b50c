"""EEEA-Net's table on built-in data (issue 19): NSGA-II architecture search with Early Exit
Population Initialisation (EE-PI) against the same search without it, 3 seeds.

Data: synth100 at 16 px, 10 classes, 100 training / 50 validation images a class (packed
once under ``--out``; the search only ever sees the training split, halved into proxy train
and proxy validation). Every run is ``hundred run compress eeea`` with the builder's default
search space (cell network, 8 channels, 5 cells, 3 nodes, EEEA's 7 operations) and its table
setting: population 8, 4 generations (the initial population included, so 32 proxy
trainings), 1 proxy epoch (SGD lr 0.025 cosine, batch 64), then the chosen architecture (the
front's lowest proxy error) trained from scratch for 10 epochs (batch 64, SGD lr 0.1, cosine,
crop-flip) and measured on the validation split. Two arms, the same seeds:

* ``early exit off``: the initial population drawn uniformly (the paper's "normal search");
* ``EE-PI, beta 0.038 M``: initial architectures with >= 0.038 M parameters are redrawn
  before they are trained (the builder's default beta, about the median random architecture
  of this space at 10 classes).

Columns: search wall time (noisy on a shared CPU) and two load-free measures of search cost,
the candidates trained and the mean / summed parameters of the trained candidates (the
compute of a proxy training grows with the network); the final front (size, lowest proxy
error, smallest parameters); the chosen architecture's parameters and its val top-1.

    python experiments/eeea_synth100.py --out /work/runs/eeea-table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import runs  # experiments/runs.py: run or resume one named run directory
from compress_synth100 import COMMON, collect, packed, print_table

SEARCH = ("--set", "method_params.population=8", "--set", "method_params.generations=4")
TRAIN = ("--batch-size", "64", "--lr", "0.1", "--epochs", "10")
ARMS = (("early exit off", "off", ("--set", "method_params.early_exit=false")),
        ("EE-PI, beta 0.038 M", "ee", ("--set", "method_params.early_exit=true", "--set",
                                        "method_params.beta=0.038")))


def candidates(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``eeea_candidates.jsonl`` records."""
    lines = (run_dir / "eeea_candidates.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/eeea-table")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    data = packed(out)
    rows: dict[str, dict[str, list[float]]] = {}
    fronts: list[str] = []
    for seed in range(args.seeds):
        for label, tag, extra in ARMS:
            run_dir, summary = runs.run(out, "compress", "eeea", f"eeea-{tag}-s{seed}",
                                        ["--data", str(data), *COMMON, *SEARCH, *TRAIN, *extra,
                                         "--seed", str(seed)])
            search = summary["search"]
            trained = [r["params"] / 1e3 for r in candidates(run_dir) if r["trained"]]
            front = search["front"]
            summary = {**summary, "trained_mean_k": float(np.mean(trained)),
                       "trained_sum_k": float(np.sum(trained))}
            collect(rows, label, summary, {
                "seconds": lambda s: s["search"]["search_seconds"],
                "trained": lambda s: s["search"]["trained"],
                "exited": lambda s: s["search"]["exited"],
                "mean_k": lambda s: s["trained_mean_k"],
                "sum_k": lambda s: s["trained_sum_k"] / 1e3,
                "front": lambda s: len(s["search"]["front"]),
                "front_err": lambda s: 100 * min(e["error"] for e in s["search"]["front"]),
                "front_k": lambda s: min(e["params"] for e in s["search"]["front"]) / 1e3,
                "chosen_err": lambda s: 100 * s["search"]["chosen"]["error"],
                "chosen_k": lambda s: s["search"]["chosen"]["params"] / 1e3,
                "top1": lambda s: s["val_top1"]})
            points = ", ".join(f"({e['params'] / 1e3:.1f}k, {100 * e['error']:.1f} %)"
                               for e in front)
            fronts.append(f"| {label} | {seed} | {points} | "
                          f"{search['chosen']['params'] / 1e3:.1f}k | {summary['val_top1']:.1f} |")
    print_table(rows, {"seconds": "search s (wall)", "trained": "trained",
                       "exited": "exited (untrained)", "mean_k": "mean params trained (k)",
                       "sum_k": "summed params trained (M)", "front": "front size",
                       "front_err": "front: lowest proxy err (%)",
                       "front_k": "front: fewest params (k)",
                       "chosen_err": "chosen: proxy err (%)", "chosen_k": "chosen: params (k)",
                       "top1": "chosen: val top-1 (%)"},
                {"trained": 0, "exited": 1, "front": 1, "sum_k": 2})
    print("\n| run | seed | final front (params, proxy error) | chosen params | val top-1 |")
    print("|---|---|---|---|---|")
    print("\n".join(fronts))


if __name__ == "__main__":
    main()
