"""Skip-Tuning's sweep and SFD against synchronous denoising on built-in data (issue 20).

Same data, network and training as experiments/generate_synth100.py (synth100 at 16 px, 10
classes, 100 training / 50 validation images a class; UNet widths 32/64 with attention at
8 px; AdamW 1e-3, batch 64, 25 epochs, EMA 0.995; 16 samples a class measured with the
cached evaluator: ``fd`` is a Fréchet distance of the evaluator's features, not FID). Groups
(``--group``):

* ``skip``: the DDPM-trained UNet of generate_synth100's ``diffusion`` group (``ddpm-s<seed>``,
  trained here if missing), sampled with DDIM (eta 0) with its skip connections scaled by rho,
  linear from ``rho_inner`` (innermost) to 1 (outermost): ``rho_inner`` in {0.4, 0.5, ...,
  0.9, 1.0} x steps in {5, 10, 20}; rho_inner = 1 is plain DDIM. Training-free: every cell
  reuses the one network (``generate.init``).
* ``sfd``: an encoder pre-trained without labels (ssl ``simclr``, ResNet-20 width 16, 50
  epochs) gives the semantic latent (4 principal components of its last-stage features);
  a UNet on the composite latents trained with SFD's offset Δ = 0.3 and with Δ = 0
  (synchronous, SFD's own baseline: same composite, same network, same budget), each sampled
  with 20 and 10 Euler steps; plain flow matching on pixels (generate_synth100's
  ``euler-s<seed>``, when that group has run) as the reference. The encoder is a different
  network from the evaluator (a supervised ResNet-20), so the semantic latent does not share
  the measuring features. ``sfd_small``: the same with 2 semantic channels and semantic loss
  weight 1.

Runs are ordinary run directories under ``--out`` (the same folder as generate_synth100's
runs reuses its networks); run again to skip finished runs:

    python experiments/skip_tuning_synth100.py --group skip --out runs/generate-table --seeds 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory
from generate_synth100 import sample, table

RHOS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
STEPS = (5, 10, 20)
OFFSETS = (0.3, 0.0)
ENCODER = ("-q", "--model", "resnet20", "--set", "model.options={width: 16}",
           "--batch-size", "128", "--epochs", "50")


def skip(out: Path, data: Path, seed: int) -> list[tuple[str, dict[str, Any]]]:
    sample(out, data, "ddpm", f"ddpm-s{seed}", seed, None, "--steps", "20")
    init = out / "generate" / "ddpm" / f"ddpm-s{seed}"
    rows = []
    for steps in STEPS:
        for rho in RHOS:
            name = f"skip-r{rho:g}-k{steps}-s{seed}"
            rows.append((f"DDIM {steps:>2} steps, rho_inner {rho:g}",
                         sample(out, data, "skip_tuning", name, seed, init, "--steps",
                                str(steps), "--set", f"method_params.rho_inner={rho}")))
    return rows


def encoder(out: Path, data: Path, seed: int) -> Path:
    run_dir, summary = runs.run(out, "ssl", "simclr", f"sfd-encoder-s{seed}",
                                ["--data", str(data), *ENCODER, "--seed", str(seed)])
    probe = {key: value for key, value in summary.items() if "knn" in key or "linear" in key}
    print(f"encoder {run_dir.name}: {probe}", flush=True)
    return run_dir


def sfd(out: Path, data: Path, seed: int, variant: tuple[str, ...] = (), tag: str = ""
        ) -> list[tuple[str, dict[str, Any]]]:
    semantic = encoder(out, data, seed)
    rows = []
    for offset in OFFSETS:
        name = f"sfd{tag}-d{offset:g}-s{seed}"
        options = ("--set", f"method_params.encoder={semantic}", *variant,
                   "--set", f"method_params.offset={offset}")
        label = (f"SFD Δ {offset:g}" if offset else "synchronous (SFD Δ 0)") + tag
        rows.append((f"{label}, Euler 20 steps",
                     sample(out, data, "sfd", name, seed, None, "--steps", "20", *options)))
        init = out / "generate" / "sfd" / name
        rows.append((f"{label}, Euler 10 steps",
                     sample(out, data, "sfd", f"{name}-k10", seed, init, "--steps", "10",
                            *variant, *options[-2:])))
    reference = out / "generate" / "flow_euler" / f"euler-s{seed}" / "summary.json"
    if reference.is_file():  # generate_synth100's flow group trains it; not started here
        rows.append(("flow matching on pixels, Euler 20 steps",
                     json.loads(reference.read_text())))
    return rows


def sfd_small(out: Path, data: Path, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """SFD with a lighter semantic part: 2 channels, loss weight 1 (instead of 4 and 2)."""
    return sfd(out, data, seed, ("--set", "method_params.semantic_channels=2",
                                 "--set", "method_params.semantic_weight=1"), "-c2w1")


GROUPS = {"skip": skip, "sfd": sfd, "sfd_small": sfd_small}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/generate-table")
    parser.add_argument("--group", choices=sorted(GROUPS), required=True)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    table(Path(args.out), args.seeds, GROUPS[args.group])


if __name__ == "__main__":
    main()
