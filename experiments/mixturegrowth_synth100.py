"""MixtureGrowth's table on built-in data (issue 19), 3 seeds: growing with the paper's
orthogonal new coefficients over the learned templates, against random new coefficients
(random growth) and against the large network trained from scratch at equal FLOPs and at
equal epochs.

Data: synth100 at 16 px, 10 classes, 100 training / 50 validation images a class (made from
``data.options`` by each run, the builder's setting; the images equal the packed ones). Model:
``resnet20`` at width 16 with projection shortcuts (the large network; MixtureGrowth's small
networks are width 8), batch 64, SGD lr 0.1, momentum 0.9, weight decay 5e-4, one cosine
schedule over the run, crop-flip, nothing tuned. Runs (names as the builder's, seed 0
without a suffix, seed s > 0 with ``_s<s>``, so ``--out /work/runs/mixturegrowth`` reuses its
finished runs):

* ``mg_orth``: ``compress/mixturegrowth``, 15 epochs, growth at the start of epoch 10 (10
  epochs of two small networks on the same batches, then 5 of the grown network), new blocks
  orthogonal (the paper);
* ``mg_rand``: the same with ``new_blocks=random`` (random U(0,1) coefficients over the same
  learned templates; every other tensor equal);
* ``scratch10``: ``compress/dense``, the large network for 10 epochs: equal FLOPs (two small
  nets cost 0.51 of a large one, so 10 x 0.51 + 5 = 10.1 large-epochs);
* ``scratch15``: the large network for 15 epochs (equal epochs, 1.5x the FLOPs).

Columns: val top-1 at the end, and, for the growth runs, val top-1 after the last small epoch
(the two members' summed logits) and after the first grown epoch (the drop at growth).

    python experiments/mixturegrowth_synth100.py --out /work/runs/mixturegrowth
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory
from compress_synth100 import collect, print_table

EPOCHS, GROW = 15, 10
COMMON = ("--device", "cpu", "-q", "--set",
          "data.options={classes: 10, train_per_class: 100, val_per_class: 50, res: 16}",
          "--set", "model.name=resnet20", "--set", "model.options={width: 16, projection: true}",
          "--batch-size", "64", "--lr", "0.1", "--set", "compress.latency_repeats=5")
RUNS = (("MixtureGrowth (orthogonal new blocks), 10 small + 5 grown", "mixturegrowth",
         "mg_orth", ("--epochs", str(EPOCHS), "--set", f"method_params.grow_epoch={GROW}")),
        ("random new blocks, same schedule", "mixturegrowth", "mg_rand",
         ("--epochs", str(EPOCHS), "--set", f"method_params.grow_epoch={GROW}", "--set",
          "method_params.new_blocks=random")),
        (f"large from scratch, {GROW} epochs (equal FLOPs)", "dense", f"scratch{GROW}",
         ("--epochs", str(GROW))),
        (f"large from scratch, {EPOCHS} epochs (equal epochs)", "dense", f"scratch{EPOCHS}",
         ("--epochs", str(EPOCHS))))


def epoch_top1(run_dir: Path, epoch: int) -> float:
    """Val top-1 after ``epoch`` (1-based) from ``metrics.jsonl``; NaN when absent."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record: dict[str, Any] = json.loads(line) if line.strip() else {}
        if record.get("epoch") == epoch and "val_top1" in record:
            return float(record["val_top1"])
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/mixturegrowth-table")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        for label, method, name, extra in RUNS:
            run_dir, summary = runs.run(out, "compress", method,
                                        name + (f"_s{seed}" if seed else ""),
                                        [*COMMON, *extra, "--seed", str(seed)])
            grows = method == "mixturegrowth"
            summary = {**summary,
                       "before": epoch_top1(run_dir, GROW) if grows else math.nan,
                       "after": epoch_top1(run_dir, GROW + 1) if grows else math.nan}
            collect(rows, label, summary, {"top1": lambda s: s["val_top1"],
                                           "before": lambda s: s["before"],
                                           "after": lambda s: s["after"],
                                           "mflops": lambda s: s["mflops"]})
    print_table(rows, {"top1": "val top-1 (%)", "before": f"top-1 after epoch {GROW} (small)",
                       "after": f"top-1 after epoch {GROW + 1} (grown)",
                       "mflops": "final net MFLOPs"}, {"mflops": 2})


if __name__ == "__main__":
    main()
