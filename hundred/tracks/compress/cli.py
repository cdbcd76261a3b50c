"""The compress track's own command, added to ``hundred`` by the core CLI through
``Track.commands``: ``hundred search compress RUN_DIR --flops 0.5`` picks the best child of a
finished supernet run (``compress/bignas``) under a cost budget and writes it as a new
finished compress run (:func:`hundred.tracks.compress.supernet.search_run`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any, data_commands: Any) -> None:
    """Add ``hundred search compress``."""
    parser = commands.add_parser(
        "search", help="pick the best child of a finished supernet run (compress/bignas) "
        "under a FLOPs or parameter budget; writes it as a finished compress run",
        description="Random children of RUN_DIR's supernet are measured (FLOPs = 2 x fvcore "
        "MACs at batch 1, parameters); those under the budget with the most FLOPs are "
        "BN-recalibrated on training batches and scored on 1000 training images (never on "
        "val, which reports the chosen child); the best is kept and written as a new compress "
        "run (summary, export) that hundred report plots. Bad input writes nothing.")
    parser.add_argument("track", choices=("compress",), help="the track (compress)")
    parser.add_argument("run_dir", help="a finished compress/bignas run (trained without "
                        "compress.flops_target, so its checkpoint holds the supernet)")
    parser.add_argument("--flops", type=float, help="FLOPs budget as a share of the largest "
                        "child's, e.g. 0.5")
    parser.add_argument("--params", type=float, help="parameter budget as a share of the "
                        "largest child's, e.g. 0.5")
    parser.add_argument("--samples", type=int, default=300, help="random children sampled "
                        "(default 300)")
    parser.add_argument("--evaluate", type=int, default=5, help="children under the budget "
                        "scored on training images after BN recalibration (default 5)")
    parser.add_argument("--calibration-batches", type=int, default=16, help="training batches "
                        "of BN recalibration per child (default 16)")
    parser.add_argument("--name", help="name of the new run directory (default: generated)")
    parser.add_argument("--seed", type=int, help="seed of the sampling (default: the run's)")
    parser.add_argument("--device", help="auto, cpu, cuda ... (default: the run's)")
    parser.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rich.console import Console

    from hundred.errors import HundredError
    from hundred.tracks.compress.supernet import search_run

    for label, value in (("--samples", args.samples), ("--evaluate", args.evaluate),
                         ("--calibration-batches", args.calibration_batches)):
        if value < 1:
            raise HundredError(f"{label} must be at least 1 (got {value})")
    summary = search_run(Path(args.run_dir), flops=args.flops, params=args.params,
                         samples=args.samples, evaluate=args.evaluate,
                         calibration_batches=args.calibration_batches, device=args.device,
                         name=args.name, seed=args.seed)
    Console().print(f"{summary['run_dir']}: child {summary['search']['child']} top-1 "
                    f"{summary['val_top1']:.2f}, flops ratio {summary['flops_ratio']:.3f}",
                    highlight=False, soft_wrap=True)
