"""The classify track's own commands, added to ``hundred`` by the core CLI through
``Track.commands``."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(commands: Any, data_commands: Any) -> None:
    """Add the track's commands to the ``hundred`` and ``hundred data`` sub-parser groups."""
    from hundred.tracks.classify import xscore

    xscore.add_parser(commands)  # hundred xscore: models x datasets, xScore
    _add_reinforce(data_commands)  # hundred data reinforce: dataset reinforcement (DR)


def _add_reinforce(data_commands: Any) -> None:
    parser = data_commands.add_parser(
        "reinforce", help="store augmentations and a teacher ensemble's top-k labels next to "
        "packed data (train on it: hundred run classify dr --data REINFORCED)")
    parser.add_argument("packed", help="packed dataset directory (hundred data pack)")
    parser.add_argument("--teacher", required=True,
                        help="teacher(s), comma-separated: RUN_DIR or timm:NAME:PATH each; "
                        "their softmax outputs are averaged")
    parser.add_argument("--samples", type=int, required=True,
                        help="augmentations stored per training image (NS)")
    parser.add_argument("--topk", type=int,
                        help="probabilities kept per view (default 10, at most the classes)")
    parser.add_argument("--out", help="output directory (default: PACKED-reinforced)")
    parser.add_argument("--augment", default="rrc-flip",
                        help="augmentation preset to sample (default rrc-flip)")
    parser.add_argument("--image-size", type=int,
                        help="view size (default: the packed resolution)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per teacher batch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentations")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_data_reinforce)


def _cmd_data_reinforce(args: argparse.Namespace) -> None:
    from hundred.tracks.classify.reinforce import run_command

    run_command(args)
