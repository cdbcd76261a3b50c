"""What distillation costs per training image: KD and Dataset Reinforcement against ERM.

The same student, data, batch size, optimiser and augmentation are trained three ways, in
one process, one after the other:

* ``erm`` — the baseline: the student alone;
* ``kd`` — the student plus a frozen teacher's forward pass on every batch (Hinton et al.
  2015), the cost every online-teacher KD method pays;
* ``dr`` — Dataset Reinforcement (Faghri et al., ICCV 2023): the teacher's labels were
  stored once by ``hundred data reinforce``; training replays stored views and labels and
  never runs the teacher. The paper's claim: no extra cost per training image over ERM.

It prints training images/s (the trainer's own count, evaluation excluded) and each
method's ratio to ERM, plus the one-off cost of reinforcing (teacher images/s while storing
the views). The teacher's weights do not matter for speed, so it is trained for one epoch.

    python benchmarks/distill_throughput.py                         # CPU, resnet20 <- resnet56
    python benchmarks/distill_throughput.py --device cuda --res 32 --per-class 100 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hundred.cli import main as hundred


def run(root: Path, method: str, name: str, data: str, args: argparse.Namespace,
        *extra: str) -> dict:
    """One training run through the CLI; its summary."""
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own summary table
        code = hundred(["run", "classify", method, "--data", data, "--root", str(root),
                        "--name", name, "--device", args.device, "--epochs",
                        str(args.epochs), "--batch-size", str(args.batch), "--set", "quiet=true",
                        "--set", "train.eval_every=1000", *extra])
    if code:
        raise SystemExit(f"{method} failed")
    return json.loads((root / "classify" / method / name / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=20, help="training images per class")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=2, help="views stored per image (DR)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        packed = root / "data"
        if hundred(["data", "pack", "synth100", "--res", str(args.res), "--out", str(packed),
                    "--option", f"classes={args.classes}", "--option",
                    f"train_per_class={args.per_class}", "--option", "val_per_class=2",
                    "--option", f"res={args.res}", "--quiet"]):
            raise SystemExit("packing failed")
        teacher = run(root, "erm", "teacher", str(packed),
                      argparse.Namespace(**{**vars(args), "epochs": 1}),
                      "--model", args.teacher)
        started = time.perf_counter()
        if hundred(["data", "reinforce", str(packed), "--teacher", teacher["run_dir"],
                    "--samples", str(args.samples), "--augment", "crop-flip",
                    "--device", args.device, "-q"]):
            raise SystemExit("reinforce failed")
        reinforce_rate = args.classes * args.per_class * args.samples / (
            time.perf_counter() - started)
        student = ("--model", args.student)
        results = {
            "erm": run(root, "erm", "erm", str(packed), args, *student),
            "kd": run(root, "kd", "kd", str(packed), args, *student,
                      "--teacher", teacher["run_dir"]),
            "dr": run(root, "dr", "dr", f"{packed}-reinforced", args, *student),
        }
    base = results["erm"]["images_per_s"]
    table = Table(title=f"{args.student} student, {args.teacher} teacher, {args.res} px, batch "
                        f"{args.batch}, {args.epochs} epochs of {args.classes * args.per_class} "
                        f"images on {args.device}")
    for column in ("method", "train img/s", "vs erm"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, summary in results.items():
        rate = summary["images_per_s"]
        table.add_row(method, f"{rate:,.0f}", f"{rate / base:.2f}x")
    console = Console()
    console.print(table)
    console.print(f"reinforce (one-off): {reinforce_rate:,.0f} teacher views/s while storing "
                  f"{args.samples} views per image")


if __name__ == "__main__":
    main()
