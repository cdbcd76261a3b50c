"""The generate track's own commands, added to ``hundred`` by the core CLI through
``Track.commands``: ``hundred generate vae`` trains latent diffusion's autoencoder
(:mod:`hundred.tracks.generate.vae`); ``hundred data dst3d`` (3D-DST,
:mod:`hundred.tracks.generate.dst3d`) and ``hundred babel`` (Babel-ImageNet,
:mod:`hundred.tracks.generate.babel`) run the pipelines whose large pretrained weights the
user supplies as local files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_commands(commands: Any, data_commands: Any) -> None:
    """Add ``hundred generate ...`` to the ``hundred`` sub-parser group."""
    generate = commands.add_parser("generate", help="tools of the generate track (the VAE of "
                                   "latent diffusion)")
    tools = generate.add_subparsers(dest="generate_command", required=True)
    vae = tools.add_parser(
        "vae", help="train a small AutoencoderKL on the data (for generate.latent=DIR); rerun "
        "to resume",
        description="Train a KL autoencoder (MSE + kl_weight x KL) with the engine and write "
        "the diffusers folder DIR (config.json, safetensors, scaling factor = 1 / std of the "
        "training latents) and DIR/hundred-vae.json. Then: hundred run generate ddim_cfg "
        "--set generate.latent=DIR")
    vae.add_argument("--data", required=True, help="source spec or packed directory "
                     "(data.source); the diffusion runs must use the same data")
    vae.add_argument("--out", required=True, help="output folder (rerun to resume)")
    vae.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    vae.add_argument("--widths", default="32,64", help="channels per resolution; the latents "
                     "are 2^(n-1) times smaller per side (default 32,64: half)")
    vae.add_argument("--latent-channels", type=int, default=4, help="(LDM: 4)")
    vae.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the KL term "
                     "(default 1e-4)")
    vae.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    vae.add_argument("--seed", type=int, default=0)
    vae.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    vae.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. data.options={res: 16} (repeatable)")
    vae.set_defaults(func=_cmd_generate_vae)

    # the pipelines of the seeds that need large pretrained weights (local files only)
    from hundred.tracks.generate.babel import add_babel_command
    from hundred.tracks.generate.dst3d import add_dst3d_command

    add_dst3d_command(data_commands)  # hundred data dst3d MESHES --sd DIR --controlnet DIR
    add_babel_command(commands)  # hundred babel train-standin / eval


def _cmd_generate_vae(args: argparse.Namespace) -> None:
    from rich.console import Console

    from hundred.config import build_config
    from hundred.errors import HundredError
    from hundred.tracks.generate.vae import train_vae

    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        raise HundredError(f"--widths {args.widths!r}: comma-separated integers, e.g. 32,64"
                           ) from None
    if args.epochs < 1:
        raise HundredError(f"--epochs {args.epochs} must be >= 1")
    overrides = [f"data.source={json.dumps(args.data)}", f"train.epochs={args.epochs}",
                 "optim.name=adamw", f"optim.lr={args.lr}", "optim.weight_decay=0",
                 f"seed={args.seed}", f"train.device={json.dumps(args.device)}"]
    config = build_config(overrides=overrides + list(args.set))
    console = Console()
    meta = train_vae(config, Path(args.out), widths, args.latent_channels, args.kl_weight,
                     console)
    console.print(f"VAE in {args.out}: val MSE {meta['val_mse']:.4f}, scaling factor "
                  f"{meta['scaling_factor']:.3f} (use: --set generate.latent={args.out})",
                  highlight=False, soft_wrap=True)
