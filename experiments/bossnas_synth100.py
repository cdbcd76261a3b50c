"""BossNAS's ranking quality on built-in data (issue 19): does the block-wise self-supervised
supernet rate architectures as their stand-alone training does?

Data: synth100 at 16 px, 10 classes, 100 training / 50 validation images a class (packed once
by ``compress_synth100.packed``). Per seed, nothing tuned:

* one ``compress bossnas`` run: the ``hytra`` supernet (width 8, 2 blocks x 2 layers, 64
  paths), 8 epochs (``SUPERNET_EPOCHS``) split evenly over the 2 blocks, batch 64, the
  method's defaults (4 sampled paths, BYOL views, momentum 0.99 -> 1) and the default
  optimiser (SGD, lr 0.1, cosine);
* ``compress dense`` stand-alone training from scratch of the same ``PATHS`` (10 of the 64
  paths, fixed, spread over the space: pure conv, pure attention, conv-then-attention,
  attention-then-conv, and mixed operators and down-sampling positions), width 8, 12 epochs
  (``STANDALONE_EPOCHS``), batch 64, SGD lr 0.1, cosine;
* ``correlate_runs``: Kendall tau and Spearman rho between ``-rating`` (sum of the path's block
  distances) and the stand-alone ``val_top1``.

The chosen (lowest-rated) path is trained stand-alone too when it is not in the sample, so its
accuracy can be set against the sample's best and median.

    python experiments/bossnas_synth100.py --out /work/runs/bossnas-table --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import runs  # experiments/runs.py: run or resume one named run directory
from compress_synth100 import COMMON, packed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hundred.tracks.compress.methods.bossnas import correlate_runs, path_rating  # noqa: E402

WIDTH = 8
SUPERNET_EPOCHS = 8
STANDALONE_EPOCHS = 12
TRAIN = ("--model", "hytra", "--batch-size", "64", "--lr", "0.1")
PATHS = (
    ("conv_down", "conv", "conv_down", "conv"),      # pure CNN
    ("att_down", "att", "att_down", "att"),          # pure transformer
    ("conv_down", "conv", "att_down", "att"),        # CNN then transformer
    ("att", "conv_down", "conv", "att_down"),
    ("conv", "att_down", "att", "conv_down"),
    ("conv", "conv_down", "att", "att_down"),
    ("att_down", "conv", "conv", "att_down"),
    ("conv_down", "att", "att", "conv_down"),
    ("att", "att_down", "conv_down", "conv"),
    ("att_down", "att", "conv_down", "conv"),      # transformer then CNN
)


def path_name(path: tuple[str, ...] | list[str]) -> str:
    return "-".join(token.replace("conv", "c").replace("att", "a").replace("_down", "D")
                    for token in path)


def standalone(out: Path, data: Path, path: tuple[str, ...] | list[str], seed: int) -> Path:
    options = f"model.options={{width: {WIDTH}, path: [{', '.join(path)}]}}"
    run_dir, _ = runs.run(out, "compress", "dense", f"hytra-{path_name(path)}-s{seed}",
                          ["--data", str(data), *COMMON, *TRAIN, "--set", options,
                           "--epochs", str(STANDALONE_EPOCHS), "--seed", str(seed)])
    return run_dir


def ground_truth(rows: list[dict]) -> None:
    """How reproducible the stand-alone ranking itself is (seed against seed), and each seed's
    ratings against the stand-alone top-1 averaged over all seeds (a less noisy target)."""
    from itertools import combinations

    from hundred.tracks.compress.methods.bossnas import rank_correlation

    pairs = [rank_correlation(a["accs"], b["accs"], lower_is_better=False)
             for a, b in combinations(rows, 2)]
    mean_acc = [statistics.mean(r["accs"][i] for r in rows) for i in range(len(PATHS))]
    to_mean = [rank_correlation(r["ratings"], mean_acc) for r in rows]
    mean_rating = [statistics.mean(r["ratings"][i] for r in rows) for i in range(len(PATHS))]
    pooled = rank_correlation(mean_rating, mean_acc)
    print("\n| comparison | Kendall τ | Spearman ρ |\n|---|---|---|")
    for label, results in (("stand-alone top-1, seed vs seed (all pairs)", pairs),
                           ("each seed's ratings vs seed-mean stand-alone top-1", to_mean)):
        cells = []
        for key in ("kendall_tau", "spearman_rho"):
            mean, std = runs.mean_std([r[key] for r in results])
            cells.append(f"{mean:.2f} ± {std:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"| seed-mean ratings vs seed-mean stand-alone top-1 | {pooled['kendall_tau']:.2f} | "
          f"{pooled['spearman_rho']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bossnas-table")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    data = packed(out)
    rows = []
    for seed in range(args.seeds):
        search, summary = runs.run(
            out, "compress", "bossnas", f"bossnas-s{seed}",
            ["--data", str(data), *COMMON, *TRAIN, "--set",
             f"model.options={{supernet: true, width: {WIDTH}}}",
             "--epochs", str(SUPERNET_EPOCHS), "--seed", str(seed)])
        sample = [standalone(out, data, path, seed) for path in PATHS]
        result = correlate_runs(search, sample)
        record = summary["bossnas"]
        chosen = list(record["chosen_path"])
        if tuple(chosen) in PATHS:
            chosen_run = sample[PATHS.index(tuple(chosen))]
        else:
            chosen_run = standalone(out, data, chosen, seed)
        chosen_acc = json.loads((chosen_run / "summary.json").read_text())["val_top1"]
        accs = result["accuracies"]
        rows.append({"seed": seed, "tau": result["kendall_tau"], "rho": result["spearman_rho"],
                     "chosen": chosen, "chosen_in_sample": tuple(chosen) in PATHS,
                     "chosen_rating": path_rating(record["block_ratings"], chosen,
                                                  record["layers_per_block"]),
                     "chosen_acc": chosen_acc, "best": max(accs),
                     "median": statistics.median(accs), "probe": summary["val_top1"],
                     "paths": result["paths"], "ratings": result["ratings"], "accs": accs})
        print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))

    print(f"\nPer path (rating = sum of block distances, lower = better; stand-alone top-1, "
          f"{STANDALONE_EPOCHS} epochs):\n")
    print("| path | " + " | ".join(f"seed {r['seed']}: rating / top-1" for r in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    for i, path in enumerate(PATHS):
        cells = [f"{r['ratings'][i]:.3f} / {r['accs'][i]:.1f}" for r in rows]
        print(f"| {' '.join(path)} | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        ground_truth(rows)

    print("\n| seed | Kendall τ | Spearman ρ | chosen path (rating) | chosen top-1 | sample best "
          "| sample median | supernet probe top-1 |")
    print("|---" * 8 + "|")
    for r in rows:
        note = "" if r["chosen_in_sample"] else " (outside sample)"
        print(f"| {r['seed']} | {r['tau']:.2f} | {r['rho']:.2f} | {' '.join(r['chosen'])}"
              f"{note} ({r['chosen_rating']:.3f}) | {r['chosen_acc']:.1f} | {r['best']:.1f} | "
              f"{r['median']:.1f} | {r['probe']:.1f} |")
    cells = []
    for key, digits in (("tau", 2), ("rho", 2), (None, 0), ("chosen_acc", 1), ("best", 1),
                        ("median", 1), ("probe", 1)):
        if key is None:
            cells.append("")
            continue
        mean, std = runs.mean_std([r[key] for r in rows])
        cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
    print("| mean ± std | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
