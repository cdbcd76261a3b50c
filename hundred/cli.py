"""The ``hundred`` command line.

    hundred data pack SOURCE --res R --out DIR    decode + resize once into uint8 arrays
    hundred data info DIR|SOURCE                   summary of a packed or built-in dataset
    hundred data verify DIR                        check the sha256 of every packed array
    hundred demo                                   the quick-start main job on built-in data
"""

from __future__ import annotations

import argparse
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
