"""What adversarial training costs per training image: PGD-AT against ERM.

The same model, data, batch size, optimiser and augmentation are trained two ways, in one
process, one after the other, through ``hundred run robust``:

* ``erm`` — the baseline: one forward and one backward pass per batch;
* ``at`` — Madry et al.'s PGD adversarial training: K PGD steps (each a forward and a
  backward pass with respect to the input, torchattacks through the pixel-space wrapper)
  before the training step, so about K + 1 times ERM's work per image.

It prints training images/s (the trainer's own count: the end-of-run evaluation and the
attacks on val are excluded) and AT's ratio to ERM — the attack's cost, which adversarial
fine-tuning (Jeddi et al., 2020) pays for a few epochs instead of a whole training run.

    python benchmarks/adversarial_training.py                          # CPU, resnet20, PGD-10
    python benchmarks/adversarial_training.py --device cuda --model resnet18_lowres \\
        --per-class 500 --classes 10 --epochs 2 --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hundred.cli import main as hundred


def run(root: Path, method: str, data: str, args: argparse.Namespace) -> dict:
    """One training run through the CLI; its summary."""
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own summary table
        code = hundred(["run", "robust", method, "--data", data, "--root", str(root),
                        "--name", method, "--device", args.device, "--model", args.model,
                        "--epochs", str(args.epochs), "--batch-size", str(args.batch),
                        "--eps", args.eps, "--set", f"robust.steps={args.steps}",
                        "--set", "robust.step_size=2/255", "--set", "quiet=true",
                        "--set", "train.eval_every=1000", "--set", "robust.eval_limit=16",
                        "--set", "robust.eval_steps=1"])
    if code:
        raise SystemExit(f"{method} failed")
    return json.loads((root / "robust" / method / method / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=64, help="training images per class")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of AT (default 10)")
    parser.add_argument("--eps", default="8/255")
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
        results = {method: run(root, method, str(packed), args) for method in ("erm", "at")}
    base = results["erm"]["images_per_s"]
    table = Table(title=f"{args.model}, {args.res} px, batch {args.batch}, {args.epochs} epochs "
                        f"of {args.classes * args.per_class} images on {args.device}; AT: "
                        f"PGD-{args.steps} at Linf {args.eps}")
    for column in ("method", "train img/s", "vs erm"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, summary in results.items():
        rate = summary["images_per_s"]
        table.add_row(method, f"{rate:,.0f}", f"{rate / base:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
