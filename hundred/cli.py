"""The ``hundred`` command line.

    hundred data pack SOURCE --res R --out DIR    decode + resize once into uint8 arrays
    hundred data info DIR|SOURCE                   summary of a packed or built-in dataset
    hundred data verify DIR                        check the sha256 of every packed array
    hundred run TRACK METHOD [--data D --model M --epochs N --set key=value ...]
    hundred list                                   tracks, methods, datasets and models
    hundred demo                                   the quick-start main job on built-in data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from hundred.errors import HundredError


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``["classes=10", "res=16"]`` -> ``{"classes": "10", "res": "16"}`` (sources convert types)."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HundredError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def _cmd_data_pack(args: argparse.Namespace) -> None:
    from hundred.data.pack import pack

    pack(
        args.source,
        out=Path(args.out),
        res=args.res,
        resize=args.resize,
        workers=args.workers,
        draft=not args.no_draft,
        force=args.force,
        options=_parse_options(args.option),
        quiet=args.quiet,
    )


def _cmd_data_info(args: argparse.Namespace) -> None:
    from hundred.data.pack import print_info

    print_info(args.target, options=_parse_options(args.option))


def _cmd_data_verify(args: argparse.Namespace) -> None:
    from hundred.data.pack import verify

    problems = verify(Path(args.dir))
    if problems:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        raise SystemExit(1)
    print(f"OK {args.dir}: every array matches its sha256 in meta.json")


# run-option shortcuts -> config keys (applied before --set, which wins)
_RUN_SHORTCUTS = {"data": "data.source", "model": "model.name", "epochs": "train.epochs",
                  "batch_size": "data.batch_size", "lr": "optim.lr", "seed": "seed",
                  "name": "name", "device": "train.device", "root": "root",
                  "scenario": "incremental.scenario", "memory": "incremental.memory"}


def _cmd_run(args: argparse.Namespace) -> None:
    import importlib

    from hundred.config import build_config
    from hundred.registry import tracks

    if args.track not in tracks():
        raise HundredError(f"unknown track {args.track!r}; known: {', '.join(tracks())}")
    if args.resume is not None:
        given = [k for k in _RUN_SHORTCUTS if getattr(args, k) is not None]
        if given or args.config or args.set or args.quick:
            raise HundredError("--resume continues a run with its stored config.yaml; "
                               f"drop the other options ({', '.join(given) or '--config/--set'})")
        from hundred.engine.run import config_for_resume

        config = config_for_resume(Path(args.resume), args.track, args.method)
    else:
        overrides = [f"track={args.track}", f"method={args.method}"]
        overrides += [f"{key}={json.dumps(getattr(args, arg))}" for arg, key in _RUN_SHORTCUTS.items()
                      if getattr(args, arg) is not None]
        if args.quiet:
            overrides.append("quiet=true")
        files = list(args.config)
        if args.quick:
            from hundred.config import quick_preset

            files.insert(0, quick_preset(args.track))
        config = build_config(files, overrides + args.set)
        from hundred.registry import get_method

        get_method(config.track, config.method)(config.method_params, config)  # validate now
    scenario = importlib.import_module(f"hundred.tracks.{config.track}.scenario")
    scenario.run(config, Path(args.resume) if args.resume else None)


def _cmd_list(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from hundred.data.sources import SOURCES
    from hundred.models import LOCAL_MODELS
    from hundred.registry import methods, tracks

    table = Table(title="hundred", show_lines=False)
    table.add_column("kind")
    table.add_column("name")
    table.add_column("what")
    for track in tracks():
        for name, cls in methods(track).items():
            doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
            table.add_row("method", f"{track}/{name}", doc.splitlines()[0] if doc else "")
    for name, (_, what) in SOURCES.items():
        table.add_row("dataset", name, what)
    table.add_row("dataset", "DIR", "a directory written by `hundred data pack`")
    for name, (_, what) in LOCAL_MODELS.items():
        table.add_row("model", name, what)
    table.add_row("model", "<any timm name>", "e.g. resnet18, convnext_tiny (no pretrained "
                  "weights are downloaded)")
    Console().print(table)


def _cmd_report(args: argparse.Namespace) -> None:
    from hundred.report import markdown_tables, write_report

    report = write_report(args.run_dirs, out=args.out)
    print(markdown_tables(report.rows))
    for path in report.files():
        print(f"wrote {path}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from hundred.demo import run_demo

    run_demo(quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hundred", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="pack, inspect and verify datasets").add_subparsers(
        dest="data_command", required=True
    )
    option_help = "source option KEY=VALUE (e.g. classes=10), repeatable"

    pack = data.add_parser("pack", help="decode and resize a source once into uint8 arrays")
    pack.add_argument("source", help="synth100 | digits | cifar10:PATH | cifar100:PATH | "
                      "imagefolder:PATH | imagenet100:LIST:PATH")
    pack.add_argument("--res", type=int, required=True, help="output side length in pixels")
    pack.add_argument("--out", required=True, help="output directory (must not exist)")
    pack.add_argument("--resize", default="shorter-crop", choices=["shorter-crop", "stretch"],
                      help="shorter side to R then centre crop (default), or stretch to R x R")
    pack.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores)")
    pack.add_argument("--no-draft", action="store_true", help="disable Pillow's JPEG draft mode")
    pack.add_argument("--force", action="store_true", help="replace an existing output directory")
    pack.add_argument("-o", "--option", action="append", default=[], help=option_help)
    pack.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pack.set_defaults(func=_cmd_data_pack)

    info = data.add_parser("info", help="summarise a packed directory or a built-in source")
    info.add_argument("target", help="packed directory or source spec")
    info.add_argument("-o", "--option", action="append", default=[], help=option_help)
    info.set_defaults(func=_cmd_data_info)

    verify = data.add_parser("verify", help="check every packed array against its sha256")
    verify.add_argument("dir")
    verify.set_defaults(func=_cmd_data_verify)

    run = commands.add_parser("run", help="train a method of a track")
    run.add_argument("track", help="e.g. classify")
    run.add_argument("method", help="e.g. erm")
    run.add_argument("--data", help="source spec or packed directory (data.source)")
    run.add_argument("--model", help="local or timm model name (model.name)")
    run.add_argument("--epochs", type=int, help="train.epochs")
    run.add_argument("--batch-size", type=int, help="data.batch_size")
    run.add_argument("--lr", type=float, help="optim.lr")
    run.add_argument("--seed", type=int, help="seed")
    run.add_argument("--name", help="run directory name (default: generated)")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--root", help="runs root directory (default runs)")
    run.add_argument("--config", action="append", default=[], help="YAML file, repeatable")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. optim.lr=0.05 (repeatable)")
    run.add_argument("--scenario", help="class-incremental split, e.g. B0-Inc10, B50-Inc10")
    run.add_argument("--memory", type=int, help="exemplars in total (incremental.memory)")
    run.add_argument("--quick", action="store_true",
                     help="a small budget (fewer images and epochs) for a first look")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run exactly")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    listing = commands.add_parser("list", help="tracks, methods, datasets and models")
    listing.set_defaults(func=_cmd_list)

    report = commands.add_parser("report", help="leaderboards (mean ± std over seeds) and plots "
                                 "from run directories")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory, or a folder searched for summary.json files")
    report.add_argument("--out", metavar="DIR", help="output folder (default: reports/<timestamp>)")
    report.set_defaults(func=_cmd_report)

    demo = commands.add_parser("demo", help="the quick-start main job on built-in data")
    demo.add_argument("--quick", action="store_true", help="a smaller dataset, for tests")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except HundredError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
