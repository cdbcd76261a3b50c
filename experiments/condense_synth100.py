"""The condense track's README table: every method on built-in data at 32 px, IPC 1 and 10.

synth100 restricted to 10 classes at 32 px (100 training and 50 validation images per class)
is condensed by every method into IPC 1 and 10 synthetic images per class, with a ConvNet-D3
at width 32 (instance norm; the papers' width is 128) for the same number of iterations.
Each learned set is evaluated as the field does: 5 freshly initialised ConvNet-D3s trained on
it (100 epochs — the papers train 300 to 1000 — SGD lr 0.01 or the learned lr, x0.1 at half)
with DSA augmentation; mean ± std over the 5 networks. The baselines are random and
herding-selected real images at the same IPC, and the full training set. MTT and TESLA match
the same expert trajectories (``hundred condense experts``, made once); TESLA is run twice:
with hard labels (the same objective as MTT, only the gradient computation differs: the two
must agree within noise) and with the paper's soft labels.

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one. At the end it prints the table with the
issue's orderings checked:

    python experiments/condense_synth100.py --out runs/condense-table      # ~1.5 h, 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import runs  # experiments/runs.py: run or resume one named run directory

DATA = "{classes: 10, train_per_class: 100, val_per_class: 50, res: 32}"
MODEL = ("model.name=convnet_d3", "model.options={width: 32}")
COMMON = ("condense.eval_runs=5", "condense.eval_augment=[dsa]", "condense.real_batch=64",
          "quiet=true")
TRAJECTORY = ("method_params.experts={experts}", "method_params.syn_steps=10",
              "method_params.expert_epochs=2", "method_params.max_start_epoch=10")

# row label -> (method, extra overrides)
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "random real": ("random", ()),
    "herding real": ("herding", ("method_params.feature_epochs=30",)),
    "DM": ("dm", ()),
    "DM + FYI": ("dm", ("method_params.fyi=true",)),
    "DataDAM": ("datadam", ()),
    "MTT": ("mtt", TRAJECTORY),
    "MTT + FYI": ("mtt", (*TRAJECTORY, "method_params.fyi=true")),
    "TESLA (hard labels)": ("tesla", (*TRAJECTORY, "method_params.soft_labels=false")),
    "TESLA (soft labels)": ("tesla", TRAJECTORY),
}


def run(out: Path, method: str, name: str, overrides: list[str]) -> dict:
    """One condense run under ``out`` on the table's data; its summary."""
    start = ["--data", "synth100", "--set", f"data.options={DATA}", *runs.settings(overrides)]
    return runs.run(out, "condense", method, name, start)[1]


def experts(out: Path, count: int, epochs: int) -> Path:
    """The expert trajectories MTT and TESLA match (made once; a rerun resumes)."""
    directory = out / "experts"
    runs.hundred("condense", "experts", "--data", "synth100", "--set", f"data.options={DATA}",
            "--model", "convnet_d3", "--set", "model.options={width: 32}", "--experts",
            str(count), "--epochs", str(epochs), "--out", str(directory))
    return directory


def cell(summary: dict, key: str) -> str:
    value = summary.get(key)
    if value is None:
        return "–"
    std = summary.get("eval_top1_std") if key == "eval_top1" else None
    return f"{value:.1f} ± {std:.1f}" if std is not None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/condense-table")
    parser.add_argument("--ipc", default="1,10")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--eval-epochs", type=int, default=100)
    parser.add_argument("--experts", type=int, default=5)
    parser.add_argument("--expert-epochs", type=int, default=15)
    parser.add_argument("--only", help="row labels to run, separated by ; (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    common = [*MODEL, *COMMON, f"condense.iterations={args.iterations}",
              f"condense.eval_epochs={args.eval_epochs}"]
    rows = ROWS if not args.only else {k: ROWS[k] for k in args.only.split(";")}
    expert_dir = None
    if any(method in ("mtt", "tesla") for method, _ in rows.values()):
        expert_dir = experts(out, args.experts, args.expert_epochs)
    results: dict[str, dict[int, dict]] = {}
    for ipc in (int(value) for value in args.ipc.split(",")):
        for label, (method, extra) in rows.items():
            slug = label.lower().replace(" + ", "-").replace(" ", "-").strip("()")
            slug = slug.replace("(", "").replace(")", "")
            overrides = [*common, *(e.format(experts=expert_dir) for e in extra),
                         f"condense.ipc={ipc}"]
            results.setdefault(label, {})[ipc] = run(out, method, f"{slug}-ipc{ipc}", overrides)
    full = run(out, "full", "full", common)

    ipcs = sorted({ipc for per_ipc in results.values() for ipc in per_ipc})
    header = " | ".join(f"IPC {ipc} top-1 (%)" for ipc in ipcs)
    print(f"\n| method | {header} | condense s (IPC {ipcs[-1]}) |\n|---|{'---|' * len(ipcs)}---|")
    for label, per_ipc in results.items():
        cells = " | ".join(cell(per_ipc[i], "eval_top1") for i in ipcs)
        print(f"| {label} | {cells} | {per_ipc[ipcs[-1]]['condense_seconds']:.0f} |")
    print(f"| full training set ({full['images']} images) | {cell(full, 'eval_top1')} | |")

    def top1(label: str, ipc: int) -> float:
        return float(results[label][ipc]["eval_top1"])

    def std(label: str, ipc: int) -> float:
        return float(results[label][ipc]["eval_top1_std"] or 0.0)

    print("\norderings:")
    for ipc in ipcs:
        for label in results:
            if label.endswith("real"):
                continue
            holds = top1(label, ipc) > top1("random real", ipc)
            print(f"  IPC {ipc}: {label} {top1(label, ipc):.1f} > random real "
                  f"{top1('random real', ipc):.1f}: {'holds' if holds else 'does not hold'}")
        pairs = [("DataDAM", "DM")] + ([("DM + FYI", "DM"), ("MTT + FYI", "MTT")] if ipc == 1
                                       else [])
        for better, base in pairs:
            if better in results and base in results:
                holds = top1(better, ipc) >= top1(base, ipc)
                print(f"  IPC {ipc}: {better} {top1(better, ipc):.1f} >= {base} "
                      f"{top1(base, ipc):.1f}: {'holds' if holds else 'does not hold'}")
        if "TESLA (hard labels)" in results and "MTT" in results:
            gap = abs(top1("TESLA (hard labels)", ipc) - top1("MTT", ipc))
            noise = 2 * max(std("TESLA (hard labels)", ipc), std("MTT", ipc))
            print(f"  IPC {ipc}: |TESLA (hard) - MTT| = {gap:.1f} <= 2 std ({noise:.1f}): "
                  f"{'holds' if gap <= noise else 'does not hold'}")
    (out / "table.json").write_text(json.dumps(
        {label: {str(i): s for i, s in per_ipc.items()} for label, per_ipc in results.items()}
        | {"full": {"-": full}}, indent=1))


if __name__ == "__main__":
    main()
