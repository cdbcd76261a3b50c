"""The condense track's own commands, added to ``hundred`` by the core CLI through
``Track.commands``: ``hundred condense experts`` trains the expert trajectories that
trajectory matching (``mtt``, ``tesla``) matches (:mod:`hundred.tracks.condense.experts`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def add_commands(commands: Any, data_commands: Any) -> None:
    """Add ``hundred condense ...`` to the ``hundred`` sub-parser group."""
    condense = commands.add_parser("condense", help="tools of the condense track (expert "
                                   "trajectories for mtt/tesla)")
    tools = condense.add_subparsers(dest="condense_command", required=True)
    experts = tools.add_parser(
        "experts", help="train expert networks on the full real data and store their "
        "parameters after every epoch (MTT's buffer); rerun to resume",
        description="Train K experts (SGD, constant lr) and write DIR/expert_XXXX.safetensors "
        "(parameters after init and every epoch) and DIR/meta.json. Rerunning with the same "
        "settings skips finished experts; a killed expert is trained again from its start.")
    experts.add_argument("--data", required=True, help="source spec or packed directory "
                         "(data.source); the distillation runs must use the same data")
    experts.add_argument("--model", default="convnet_d3", help="network (model.name; default "
                         "convnet_d3, MTT's ConvNet)")
    experts.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="config override, e.g. model.options={width: 64} or "
                         "data.image_size=32 (repeatable)")
    experts.add_argument("--experts", type=int, default=100, help="number of experts (MTT: 100)")
    experts.add_argument("--epochs", type=int, default=50, help="epochs per expert (MTT: 50)")
    experts.add_argument("--lr", type=float, default=0.01, help="constant SGD lr (MTT: 0.01)")
    experts.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (MTT: 0)")
    experts.add_argument("--weight-decay", type=float, default=0.0, help="(MTT: 0)")
    experts.add_argument("--batch-size", type=int, default=256, help="(MTT: 256)")
    experts.add_argument("--no-dsa", action="store_true", help="train without DSA augmentation")
    experts.add_argument("--dsa-strategy", default=DEFAULT_STRATEGY,
                         help=f"DSA's transformation families (default {DEFAULT_STRATEGY})")
    experts.add_argument("--seed", type=int, default=0, help="expert k uses seed*100000+k")
    experts.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    experts.add_argument("--out", required=True, help="output directory (rerun to resume)")
    experts.set_defaults(func=_cmd_condense_experts)


def _cmd_condense_experts(args: argparse.Namespace) -> None:
    from rich.console import Console

    from hundred.config import build_config
    from hundred.engine.trainer import resolve_device
    from hundred.tracks.condense.experts import ExpertSettings, train_experts

    overrides = [f"data.source={json.dumps(args.data)}", f"model.name={json.dumps(args.model)}"]
    config = build_config(overrides=overrides + list(args.set))
    dsa = None
    if not args.no_dsa:
        from hundred.tracks.condense.scenario import make_dsa

        dsa = make_dsa(args.dsa_strategy)
    settings = ExpertSettings(epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay, batch_size=args.batch_size,
                              dsa_strategy=None if args.no_dsa else args.dsa_strategy,
                              seed=args.seed)
    console = Console()
    paths = train_experts(config, args.out, args.experts, settings,
                          device=resolve_device(args.device), dsa=dsa,
                          log=lambda line: console.print(line, highlight=False))
    console.print(f"{len(paths)} experts in {args.out} (use: --set "
                  f"method_params.experts={args.out})", highlight=False, soft_wrap=True)
