"""What trajectory matching costs as the unrolled steps N grow: MTT (backpropagation through all
N student steps) against TESLA (the same exact gradient, one step's graph at a time).

Each case (method, N) runs in a fresh Python process, so that its peak memory is its own: on
CUDA the peak of ``torch.cuda.max_memory_allocated`` over the measured iterations, on the CPU
the process's peak resident set (``VmHWM``, else ``ru_maxrss``; it includes the interpreter
and torch, the same baseline for every case). Each case times ``--iterations`` gradient computations of one
matching iteration (after one warm-up): N student SGD steps of a ConvNet-D3 on a synthetic
batch, DSA off, the loss of MTT's Eq. 2 and its gradient with respect to the images and the
learned lr. TESLA is measured with its snapshots on the device and in host memory.

    python benchmarks/tesla_memory.py                             # CPU, N = 5, 10, 20, 40
    python benchmarks/tesla_memory.py --device cuda --width 128 --res 32 --images 100

Prints a markdown table and writes a PNG (``--plot``): peak memory and seconds per iteration
against N.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

CASES = (("mtt", "device"), ("tesla", "device"), ("tesla", "host"))


def run_case(method: str, steps: int, snapshots: str, args: argparse.Namespace
             ) -> dict[str, Any]:
    """One case in this process: seconds per iteration and peak memory (bytes)."""
    import torch

    from hundred.models import create
    from hundred.tracks.condense.experts import ParamLayout
    from hundred.tracks.condense.trajectory import (adjoint_gradients, matching_ratio,
                                                    plan_steps, unrolled_student)

    torch.manual_seed(0)
    device = torch.device(args.device)
    network = create("convnet_d3", args.classes, img_size=args.res, width=args.width).to(device)
    network.requires_grad_(False)
    layout = ParamLayout.of(network)
    start = torch.cat([p.detach().reshape(-1) for p in network.parameters()])
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(args.images, 3, args.res, args.res, device=device, requires_grad=True)
    labels = torch.arange(args.images, device=device) % args.classes
    lr = torch.tensor(0.01, device=device, requires_grad=True)

    def iteration() -> None:
        plan = plan_steps(args.images, steps, args.batch, device, None)
        if method == "mtt":
            final = unrolled_student(network, layout, images, labels, lr, start, plan, None)
            loss = matching_ratio(final, start, target)
            loss.backward()
        else:
            result = adjoint_gradients(network, layout, images, labels, lr, start, target, plan,
                                       None, snapshots=snapshots)  # type: ignore[arg-type]
            images.grad, lr.grad = result.images, result.lr
        images.grad = lr.grad = None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    iteration()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(args.iterations):
        iteration()
    sync()
    seconds = (time.perf_counter() - started) / args.iterations
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss()
    return {"method": method, "snapshots": snapshots, "steps": steps, "seconds": seconds,
            "peak_bytes": int(peak), "memory": "device" if device.type == "cuda" else "rss"}


def peak_rss() -> int:
    """This process's peak resident set in bytes: ``VmHWM`` of /proc/self/status where there
    is one (``ru_maxrss`` is not used first: Linux carries the forking parent's peak over
    ``exec`` into it), else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure(method: str, steps: int, snapshots: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    """:func:`run_case` in a fresh interpreter (its own peak memory)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--case",
               f"{method}:{snapshots}:{steps}", *_shared_flags(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"case {method}/{snapshots}/N={steps} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--device", args.device, "--res", str(args.res), "--width", str(args.width),
            "--images", str(args.images), "--classes", str(args.classes), "--iterations",
            str(args.iterations)] + (["--batch", str(args.batch)] if args.batch else [])


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: one row per N, peak MiB and seconds per iteration per case."""
    steps = sorted({row["steps"] for row in rows})
    names = [f"{m} ({s})" if m == "tesla" else m for m, s in CASES
             if any(r["method"] == m and r["snapshots"] == s for r in rows)]
    header = "| N | " + " | ".join(f"{n} peak MiB | {n} s/it" for n in names) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(names))]
    for n in steps:
        cells = []
        for method, snapshots in CASES:
            found = [r for r in rows if (r["method"], r["snapshots"], r["steps"])
                     == (method, snapshots, n)]
            if found:
                cells += [f"{found[0]['peak_bytes'] / 2**20:,.0f}", f"{found[0]['seconds']:.3f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for method, snapshots in CASES:
        found = sorted((r for r in rows if (r["method"], r["snapshots"]) == (method, snapshots)),
                       key=lambda r: r["steps"])
        if not found:
            continue
        label = f"{method} ({snapshots} snapshots)" if method == "tesla" else method
        xs = [r["steps"] for r in found]
        memory.plot(xs, [r["peak_bytes"] / 2**20 for r in found], marker="o", label=label)
        speed.plot(xs, [r["seconds"] for r in found], marker="o", label=label)
    kind = "device memory" if rows and rows[0]["memory"] == "device" else "process RSS"
    memory.set(xlabel="unrolled steps N", ylabel=f"peak {kind} (MiB)")
    speed.set(xlabel="unrolled steps N", ylabel="seconds per iteration")
    memory.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", default="5,10,20,40", help="N values, comma-separated")
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="ConvNet width (paper: 128)")
    parser.add_argument("--images", type=int, default=100, help="synthetic images")
    parser.add_argument("--batch", type=int, default=None, help="images per step (all)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per case")
    parser.add_argument("--no-host", action="store_true", help="skip TESLA with host snapshots")
    parser.add_argument("--plot", default="tesla_memory.png", help="PNG path")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # METHOD:SNAPSHOTS:N, one case
    args = parser.parse_args(argv)
    if args.case:
        method, snapshots, steps = args.case.split(":")
        print(json.dumps(run_case(method, int(steps), snapshots, args)))
        return []
    rows = []
    for steps in (int(n) for n in args.steps.split(",")):
        for method, snapshots in CASES:
            if snapshots == "host" and args.no_host:
                continue
            rows.append(measure(method, steps, snapshots, args))
    title = (f"ConvNet-D3 width {args.width}, {args.images} images at {args.res} px, "
             f"{args.device}")
    print(f"### {title}\n")
    print(table(rows))
    plot(rows, Path(args.plot), title)
    print(f"\nplot: {args.plot}")
    return rows


if __name__ == "__main__":
    main()
