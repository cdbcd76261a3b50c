"""The robust track's own commands, added to ``hundred`` by the core CLI through
``Track.commands``: ``hundred attack RUN_DIR`` (robust accuracy of a finished classifier run
on its held-out split, written into its summary) and, when the poisoning module is there,
``hundred data poison``; ``hundred data corrupt`` (the corrupted test stream of test-time
adaptation)."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any


def add_commands(commands: Any, data_commands: Any) -> None:
    """Add ``hundred attack`` (and ``hundred data poison``) to the sub-parser groups."""
    _add_attack(commands)
    _add_backdoor(commands)
    if importlib.util.find_spec("hundred.tracks.robust.poison") is not None:
        from hundred.tracks.robust.poison import add_poison_command

        add_poison_command(data_commands)
    from hundred.tracks.robust.corruptions import add_corrupt_command

    add_corrupt_command(data_commands)


def _add_attack(commands: Any) -> None:
    parser = commands.add_parser(
        "attack", help="attack a finished classifier run on its held-out split and write the "
        "robust accuracy into its summary (hundred report shows it)",
        description="Robust top-1 of RUN_DIR's model (any classification-style track: "
        "classify, robust) on the val split of its data under a threat model with eps in "
        "pixel units. The result joins the summary's 'attacks' list with its threat model; "
        "<attack>_top1 and <attack>_threat hold the latest one. Bad input writes nothing.")
    parser.add_argument("run_dir", help="a finished run directory (config.yaml, summary.json, "
                        "checkpoints/)")
    parser.add_argument("--attack", default="pgd", help="attack name: pgd, autoattack (the "
                        "standard version) or a plugged-in one (default pgd)")
    parser.add_argument("--eps", help="budget in pixel units, e.g. 8/255 (default: the run's "
                        "robust.eps; required for runs of other tracks)")
    parser.add_argument("--norm", choices=("linf", "l2"),
                        help="threat model norm (default: the run's robust.norm, else linf)")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps (default 20)")
    parser.add_argument("--step-size", help="PGD step in pixel units, e.g. 2/255 (default "
                        "eps/4)")
    parser.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    parser.add_argument("--limit", type=int, help="attack only N images: a fixed uniform sample of "
                        "the split (the same for every run and attack)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the "
                        "run's data.eval_batch_size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    quscore = parser.add_argument_group("QuScore (--attack quscore)")
    quscore.add_argument("--interpreter", choices=("grad", "cam"),
                         help="the interpreter coupled with the model (default grad)")
    quscore.add_argument("--max-queries", type=int,
                         help="query budget per image (default 10000)")
    quscore.add_argument("--surrogate", metavar="RUN_DIR", help="a finished run whose model "
                         "the attacker owns (transfer stage; default: random population)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="NAME=VALUE",
                        help="an option of the attack's builder, e.g. -o pop_size=10 -o "
                        "mutation_rate=0.01 (QuScore); repeatable")
    parser.set_defaults(func=_cmd_attack)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """``-o NAME=VALUE`` pairs (values read as YAML scalars) and the named options."""
    import yaml

    from hundred.cli import parse_options
    from hundred.errors import HundredError

    options: dict[str, Any] = {}
    for name, value in parse_options(args.option).items():
        try:
            options[name.replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise HundredError(f"-o {name}={value}: the value is not a number, word or "
                               "list") from None
    for name in ("interpreter", "max_queries"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def _cmd_attack(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rich.console import Console

    from hundred.tracks.robust.evaluate import AttackRequest, attack_run

    request = AttackRequest(attack=args.attack, eps=args.eps, norm=args.norm, steps=args.steps,
                            step_size=args.step_size, restarts=args.restarts, seed=args.seed,
                            limit=args.limit, batch_size=args.batch_size, device=args.device,
                            options=_options(args), surrogate=args.surrogate)
    entry = attack_run(Path(args.run_dir), request)
    queries = ""
    if "attacked" in entry:  # an attack on single images: queries (QuScore) or flips (SDA)
        rate = entry.get("success_rate")
        counted, median = (("flips", entry.get("median_flips")) if "median_flips" in entry
                           else ("queries", entry.get("median_queries")))
        queries = (f"; success {'-' if rate is None else f'{100 * rate:.1f} %'} of "
                   f"{entry['attacked']} attacked, median {counted} "
                   f"{'-' if median is None else f'{median:g}'}")
    Console().print(f"{args.run_dir}: {entry['attack']} at {entry['norm']} "
                    f"{entry['eps_label']}: robust top-1 {entry['robust_top1']:.2f} "
                    f"(clean {entry['clean_top1']:.2f}, {entry['images']} images){queries}",
                    highlight=False, soft_wrap=True)


def _add_backdoor(commands: Any) -> None:
    parser = commands.add_parser(
        "backdoor", help="attack success rate of a poisoned pack's backdoor trigger against a "
        "finished (ssl) run, written into its summary",
        description="Linear probe on RUN_DIR's frozen backbone, trained on the clean labelled "
        "train images the poison was made from; backdoor_clean_top1 is its "
        "top-1 on the clean val split, backdoor_asr the share of triggered val images of the "
        "other classes it assigns to the trigger's target class. Bad input writes nothing.")
    parser.add_argument("run_dir", help="a finished run directory (e.g. hundred run ssl "
                        "simsiam --data POISONED)")
    parser.add_argument("--poison", required=True, help="the poisoned pack holding the "
                        "trigger (hundred data poison --method blto|patch)")
    parser.add_argument("--probe-data", help="the clean pack the probe trains on (default: "
                        "the pack the poison was made from, as its meta.json records)")
    parser.add_argument("--probe-epochs", type=int, help="epochs of the linear probe "
                        "(default: the run's ssl.probe_epochs)")
    parser.add_argument("--batch-size", type=int, help="images per feature batch (default: "
                        "the run's data.eval_batch_size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.set_defaults(func=_cmd_backdoor)


def _cmd_backdoor(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rich.console import Console

    from hundred.tracks.robust.backdoor import backdoor_run

    entry = backdoor_run(Path(args.run_dir), Path(args.poison), device=args.device,
                         batch_size=args.batch_size, probe_epochs=args.probe_epochs,
                         probe_data=Path(args.probe_data) if args.probe_data else None)
    Console().print(f"{args.run_dir}: {entry['method']} trigger (target class "
                    f"{entry['target_class']}): attack success rate "
                    f"{entry['backdoor_asr']:.2f} % of {entry['asr_images']} images, probe "
                    f"clean top-1 {entry['backdoor_clean_top1']:.2f}", highlight=False,
                    soft_wrap=True)
