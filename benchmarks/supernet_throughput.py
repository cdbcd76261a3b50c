"""What the sandwich rule costs per training image: a supernet trained by BigNAS (and DεpS)
against training its largest child alone.

The same elastic ResNet (``elastic_resnet``: the largest child is the whole network), data,
batch size, optimiser and augmentation are trained three ways, in one process, one after the
other, through the ordinary ``hundred run compress`` command:

* ``largest child alone`` — ``compress/dense``: one forward and backward pass a step, the
  baseline;
* ``bignas`` — the sandwich rule: the largest, the smallest and ``--random-children``
  random children each step, the children distilled in place from the largest one (Yu et
  al., ECCV 2020); about 2 + N passes a step, the children cheaper than the largest;
* ``deps`` — DεpS: the largest alone for the first ``shrink_start`` of the steps, then the
  sandwich, so its average cost lies between the two.

It prints training images/s (the trainer's own count, evaluation excluded) and each one's
ratio to the largest child alone.

    python benchmarks/supernet_throughput.py                           # CPU, 32 px
    python benchmarks/supernet_throughput.py --device cuda --per-class 100 --epochs 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from hundred.cli import main as hundred


def run(root: Path, method: str, data: str, args: argparse.Namespace, *extra: str
        ) -> dict[str, Any]:
    """One compress run through the CLI; its summary."""
    options = (f"{{widths: [{', '.join(map(str, args.widths))}], "
               f"depths: [{', '.join(map(str, args.depths))}]}}")
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own summary table
        code = hundred(["run", "compress", method, "--data", data, "--root", str(root),
                        "--name", method, "--device", args.device, "--epochs", str(args.epochs),
                        "--batch-size", str(args.batch), "--set", "quiet=true",
                        "--set", "model.name=elastic_resnet", "--set",
                        f"model.options={options}", "--set", "train.eval_every=1000",
                        "--set", "compress.latency_warmup=1", "--set",
                        "compress.latency_repeats=1", *extra])
    if code:
        raise SystemExit(f"{method} failed")
    return json.loads((root / "compress" / method / method / "summary.json").read_text())


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=50, help="training images per class")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 2, 2])
    parser.add_argument("--random-children", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        packed = root / "data"
        if hundred(["data", "pack", "synth100", "--res", str(args.res), "--out", str(packed),
                    "--option", f"classes={args.classes}", "--option",
                    f"train_per_class={args.per_class}", "--option", "val_per_class=2",
                    "--option", f"res={args.res}", "--quiet"]):
            raise SystemExit("packing failed")
        children = ("--set", f"method_params.random_children={args.random_children}")
        results = {
            "largest child alone": run(root, "dense", str(packed), args),
            "bignas": run(root, "bignas", str(packed), args, *children),
            "deps": run(root, "deps", str(packed), args),
        }
    base = results["largest child alone"]["images_per_s"]
    table = Table(title=f"elastic_resnet widths {args.widths} depths {args.depths}, "
                        f"{args.res} px, batch {args.batch}, {args.epochs} epochs of "
                        f"{args.classes * args.per_class} images on {args.device}")
    for column in ("training", "train img/s", "vs largest alone"):
        table.add_column(column, justify="left" if column == "training" else "right")
    rows = []
    for name, summary in results.items():
        rate = summary["images_per_s"]
        rows.append({"training": name, "images_per_s": rate, "ratio": rate / base})
        table.add_row(name, f"{rate:,.0f}", f"{rate / base:.2f}x")
    Console().print(table)
    return rows


if __name__ == "__main__":
    main()
