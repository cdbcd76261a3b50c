"""The ``hundred`` command line.

    hundred data pack SOURCE --res R --out DIR    decode + resize once into uint8 arrays
    hundred data info DIR|SOURCE                   summary of a packed or built-in dataset
    hundred data verify DIR                        check the sha256 of every packed array
    hundred run TRACK METHOD [--data D --model M --epochs N --set key=value ...]
    hundred tune TRACK METHOD --data 'D[0-49]' --scenario S --trials N [--storage URL]
    hundred evaluate TRACK METHOD --params BEST.yaml --data 'D[50-99]' --seeds K
    hundred check TRACK [--methods a,b --tune-data X --eval-data Y --trials N --seeds K]
    hundred report RUN_DIR ...                     leaderboards (mean ± std) and plots
    hundred list                                   tracks, methods, datasets and models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from hundred.errors import HundredError

if TYPE_CHECKING:
    from hundred.track import Shortcut, Track


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``["classes=10", "res=16"]`` -> ``{"classes": "10", "res": "16"}``: the ``-o/--option
    KEY=VALUE`` flags of a command (the receiver converts types, e.g. a pydantic model)."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
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
        options=parse_options(args.option),
        quiet=args.quiet,
    )


def _cmd_data_info(args: argparse.Namespace) -> None:
    from hundred.data.pack import print_info

    print_info(args.target, options=parse_options(args.option))


def _cmd_data_verify(args: argparse.Namespace) -> None:
    from hundred.data.pack import verify

    problems = verify(Path(args.dir))
    if problems:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
        raise SystemExit(1)
    print(f"OK {args.dir}: every array matches its sha256 in meta.json")


# run-option shortcuts -> config keys (applied before --set, which wins); each track adds
# flags for its own section (Track.shortcuts)
_RUN_SHORTCUTS = {"data": "data.source", "model": "model.name", "epochs": "train.epochs",
                  "batch_size": "data.batch_size", "lr": "optim.lr", "seed": "seed",
                  "name": "name", "device": "train.device", "root": "root"}


def _all_shortcuts() -> dict[str, list["Shortcut"]]:
    """Every track's CLI shortcuts, by flag (several tracks may share a flag)."""
    from hundred.registry import get_track, tracks

    found: dict[str, list[Shortcut]] = {}
    for name in tracks():
        for shortcut in get_track(name).shortcuts:
            found.setdefault(shortcut.flag, []).append(shortcut)
    return found


def _add_track_shortcuts(parser: argparse.ArgumentParser,
                         shortcuts: dict[str, list["Shortcut"]]) -> None:
    for flag, declared in shortcuts.items():
        owners = ", ".join(s.key for s in declared)
        parser.add_argument(f"--{flag}", type=declared[0].type, dest=declared[0].dest,
                            help=f"{declared[0].help} ({owners})")


def _track_overrides(args: argparse.Namespace, track: "Track") -> list[str]:
    """``KEY=VALUE`` overrides for the track shortcuts given; a shortcut that belongs to
    another track is refused (it would be silently ignored otherwise)."""
    own = {s.dest: s for s in track.shortcuts}
    overrides = []
    for dest in getattr(args, "track_shortcuts", ()):
        value = getattr(args, dest)
        if value is None:
            continue
        if dest not in own:
            flag = "--" + dest.replace("_", "-")
            raise HundredError(f"{flag} is not an option of track {track.name}"
                               + (f"; its options: {', '.join('--' + s.flag for s in track.shortcuts)}"
                                  if track.shortcuts else ""))
        overrides.append(f"{own[dest].key}={json.dumps(value)}")
    return overrides


def _cmd_run(args: argparse.Namespace) -> None:
    from hundred.config import build_config
    from hundred.registry import get_track

    track = get_track(args.track)
    track_overrides = _track_overrides(args, track)
    if args.resume is not None:
        given = [k for k in _RUN_SHORTCUTS if getattr(args, k) is not None]
        if given or track_overrides or args.config or args.set or args.quick or args.replace:
            raise HundredError("--resume continues a run with its stored config.yaml; "
                               f"drop the other options ({', '.join(given) or '--config/--set'})")
        from hundred.engine.run import config_for_resume

        config = config_for_resume(Path(args.resume), args.track, args.method)
    else:
        overrides = [f"track={args.track}", f"method={args.method}"]
        overrides += [f"{key}={json.dumps(getattr(args, arg))}" for arg, key in _RUN_SHORTCUTS.items()
                      if getattr(args, arg) is not None]
        overrides += track_overrides
        if args.quiet:
            overrides.append("quiet=true")
        files = list(args.config)
        if args.quick:
            if track.quick_preset is None:
                raise HundredError(f"track {track.name} has no --quick preset")
            files.insert(0, track.quick_preset)
        config = build_config(files, overrides + args.set)
    method = track.method_class(config.method)(config.method_params, config)  # validate now
    if args.replace:
        from hundred.engine.rundir import remove_unfinished

        if config.name is None:
            raise HundredError("--replace starts a named run again: give its --name")
        remove_unfinished(Path(config.root) / config.track / config.method / config.name)
    track.run(config, Path(args.resume) if args.resume else None, method)


def _cmd_list(args: argparse.Namespace) -> None:
    from rich.table import Table

    from hundred.data.sources import SOURCES
    from hundred.models import LOCAL_MODELS
    from hundred.registry import get_track, methods, tracks
    from hundred.terminal import table_console

    table = Table(title="hundred", show_lines=False)
    table.add_column("kind")
    table.add_column("name")
    table.add_column("what")
    for track in tracks():
        table.add_row("track", track, get_track(track).about)
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
    table_console().print(table)


def _cmd_report(args: argparse.Namespace) -> None:
    from hundred.report import markdown_tables, write_report

    report = write_report(args.run_dirs, out=args.out)
    print(markdown_tables(report.rows))
    for path in report.files():
        print(f"wrote {path}")


def _cmd_tune(args: argparse.Namespace) -> None:
    from hundred.protocol.tune import base_config, tune
    from hundred.registry import get_track

    track = get_track(args.track)
    method = track.method_class(args.method)
    base = base_config(track, method, args.data, args.budget, args.config,
                       _track_overrides(args, track) + args.set, root=args.root,
                       device=args.device)
    tune(base, method, args.trials, storage=args.storage, study_name=args.study,
         sampler=args.sampler, sampler_seed=args.sampler_seed, budget=args.budget,
         space_file=args.space, out=args.out, verbose=args.verbose, heartbeat=args.heartbeat)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from hundred.protocol.evaluate import evaluate
    from hundred.protocol.tune import read_best

    best = read_best(args.params)
    if (best.track, best.method) != (args.track, args.method):
        raise HundredError(f"{args.params} holds the parameters of {best.track}/{best.method}, "
                           f"not {args.track}/{args.method}")
    evaluate(best, args.data, _seed_list(args.seeds), args.config, args.set, root=args.root,
             device=args.device, verbose=args.verbose)


def _seed_list(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,5,7"`` -> those seeds."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",")]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise HundredError(f"--seeds expects a count (3) or a list (0,5,7), got {text!r}") from None
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise HundredError(f"--seeds {text}: give a count >= 1 or distinct seeds >= 0")
    return seeds


def _cmd_check(args: argparse.Namespace) -> None:
    from hundred.protocol.check import check
    from hundred.registry import get_track

    track = get_track(args.track)
    methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods
               else list(track.check_methods))
    check(track, methods, args.tune_data, args.eval_data, args.trials, args.seeds,
          budget=args.budget, sampler=args.sampler, sampler_seed=args.sampler_seed,
          out=args.out, files=args.config, overrides=_track_overrides(args, track) + args.set,
          device=args.device, space_file=args.space, verbose=args.verbose,
          heartbeat=args.heartbeat)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}"
                                         ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_protocol_options(parser: argparse.ArgumentParser, search: bool) -> None:
    """Options that ``tune``, ``evaluate`` and ``check`` share."""
    parser.add_argument("--config", action="append", default=[], help="YAML file, repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.name=resnet32 (repeatable)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every run's output (default: one line per run; the output "
                        "is kept in the run directory's console.log)")
    if search:
        parser.add_argument("--budget", default="quick", choices=["quick", "paper"],
                            help="quick: CPU-scale grid and base (default); paper: the paper's "
                            "grid (epochs 30-200) on your config")
        parser.add_argument("--space", metavar="FILE", help="YAML entries replacing the grid's "
                            "(key: [values] | {low, high, log}; key: null drops it)")
        parser.add_argument("--sampler", default="random", choices=["random", "tpe"],
                            help="random search (the paper's) or TPE")
        parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the search")
        parser.add_argument("--heartbeat", type=_positive_int, default=60, metavar="SECONDS",
                            help="a running trial's heartbeat interval (default 60); a trial "
                            "silent for 2 intervals belonged to a worker that died and is "
                            "marked failed when any worker of the study next starts or "
                            "finishes a trial")


def build_parser() -> argparse.ArgumentParser:
    """The command line; each track's shortcut flags (``--scenario``...) are added to ``run``,
    ``tune`` and ``check`` and refused for a track that does not declare them."""
    shortcuts = _all_shortcuts()
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
    run.add_argument("track", help="a track (hundred list shows them)")
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
    _add_track_shortcuts(run, shortcuts)
    run.add_argument("--quick", action="store_true",
                     help="a small budget (fewer images and epochs) for a first look")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run exactly")
    run.add_argument("--replace", action="store_true", help="start the unfinished (failed or "
                     "killed) run of this --name again from scratch; a finished run is kept")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run, track_shortcuts=[s[0].dest for s in shortcuts.values()])

    listing = commands.add_parser("list", help="tracks, methods, datasets and models")
    listing.set_defaults(func=_cmd_list)

    report = commands.add_parser("report", help="leaderboards (mean ± std over seeds) and plots "
                                 "from run directories")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory, or a folder searched for summary.json files")
    report.add_argument("--out", metavar="DIR", help="output folder (default: reports/<timestamp>)")
    report.set_defaults(func=_cmd_report)

    data_help = ("SOURCE or SOURCE[CLASSES]: a class selection such as synth100[0-49] "
                 "(dataset labels, relabelled 0..K-1; quote it in zsh)")
    tune = commands.add_parser("tune", help="tune a method's hyperparameters with Optuna (phase "
                               "1 of tune-then-evaluate)")
    from hundred.protocol import (DEFAULT_EVAL_DATA, DEFAULT_SEEDS, DEFAULT_TRIALS,
                                  DEFAULT_TUNE_DATA)

    tune.add_argument("track", help="a track (hundred list shows them)")
    tune.add_argument("method", help="e.g. erm")
    tune.add_argument("--data", default=DEFAULT_TUNE_DATA,
                      help=f"the tuning data (default {DEFAULT_TUNE_DATA}); {data_help}")
    _add_track_shortcuts(tune, shortcuts)
    tune.add_argument("--trials", type=int, default=10,
                      help="run until the study holds this many complete trials (default 10)")
    tune.add_argument("--storage", help="SQLAlchemy URL of the study database (default "
                      "sqlite:///<root>/studies.db; postgresql+psycopg://USER:PASS@HOST/DB for "
                      "workers on many machines, see docs/protocol.md)")
    tune.add_argument("--study", help="study name (default <track>-<method>-<data>-<scenario>)")
    tune.add_argument("--out", help="best-parameters YAML (default <root>/best/<study>.yaml)")
    tune.add_argument("--root", help="runs root directory (default runs)")
    _add_protocol_options(tune, search=True)
    tune.set_defaults(func=_cmd_tune, track_shortcuts=[s[0].dest for s in shortcuts.values()])

    evaluate = commands.add_parser("evaluate", help="train with frozen tuned parameters on other "
                                   "data over seeds (phase 2 of tune-then-evaluate)")
    evaluate.add_argument("track")
    evaluate.add_argument("method")
    evaluate.add_argument("--params", required=True, metavar="BEST.yaml",
                          help="the best-parameters file written by hundred tune")
    evaluate.add_argument("--data", default=DEFAULT_EVAL_DATA,
                          help=f"the evaluation data (default {DEFAULT_EVAL_DATA}); {data_help}")
    evaluate.add_argument("--seeds", default="3", help="a count (3: seeds 0,1,2) or a list "
                          "(0,5,7); default 3")
    evaluate.add_argument("--root", help="runs root directory (default: the one the tuning "
                          "runs are in)")
    _add_protocol_options(evaluate, search=False)
    evaluate.set_defaults(func=_cmd_evaluate)

    check = commands.add_parser("check", help="the whole tune-then-evaluate protocol for several "
                                "methods: both leaderboards and a report")
    check.add_argument("track", help="a track (hundred list shows them)")
    check.add_argument("--methods", help="comma-separated (default: the track's baselines)")
    check.add_argument("--tune-data", default=DEFAULT_TUNE_DATA,
                       help=f"default {DEFAULT_TUNE_DATA}; {data_help}")
    check.add_argument("--eval-data", default=DEFAULT_EVAL_DATA,
                       help=f"default {DEFAULT_EVAL_DATA}; class-disjoint from the tuning data")
    _add_track_shortcuts(check, shortcuts)
    check.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                       help=f"complete tuning trials per method (default {DEFAULT_TRIALS})")
    check.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                       help=f"evaluation seeds per method (default {DEFAULT_SEEDS})")
    check.add_argument("--out", help="output folder: studies, best parameters, runs, report "
                       "(default runs/check/<track>-<time>; the same --out resumes)")
    _add_protocol_options(check, search=True)
    check.set_defaults(func=_cmd_check, track_shortcuts=[s[0].dest for s in shortcuts.values()])

    from hundred.registry import get_track, tracks

    for name in tracks():  # commands of a track's own (e.g. ``hundred data reinforce``)
        get_track(name).add_commands(commands, data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except HundredError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system said no (read-only, full, permissions)
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
