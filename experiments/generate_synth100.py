"""The generate track's claims on built-in data (issue 20), up to 3 seeds. Everything trains on
synth100 at 16 px, 10 classes, 100 training and 50 validation images a class (the packed data
of experiments/compress_synth100.py), with a small class-conditional UNet (diffusers
UNet2DModel, widths 32/64, attention at 8 px, 0.7 M parameters), AdamW 1e-3, batch 32, 20
epochs (620 steps), EMA 0.999 with warm-up, label dropout 0.1; 16 samples a class (160)
measured against the 500 val images with the cached evaluator (a ResNet-20 classify run, 15
epochs, batch 32 like the runs; PPGN, which trains at batch 64, is pinned to the same one):
feature Fréchet
distance (``fd``, not FID), precision / recall, the evaluator's top-1 on the samples, NFE and
images/s (the latter on a shared CPU: compare within a group only). Groups (``--group``):

* ``diffusion``: one DDPM-trained UNet per seed (``ddpm`` run, ancestral sampling, 20 steps),
  then on the same network (``generate.init``): DDPM at 100 steps, DDIM (eta 0) at 20 steps,
  DDIM + CFG (w 2) at 20 and 10 steps (10 guided steps = 20 NFE, DDIM's), and w 4;
* ``latent``: a VAE per seed (``hundred generate vae``, 20 epochs, latents 4 x 8 x 8), a
  DDPM UNet on its latents, sampled with DDIM + CFG (w 2, 20 steps) and DDIM;
* ``flow``: one flow-matching UNet per seed (``flow_euler`` run, 20 Euler steps), then at 20
  NFE Heun (10 steps); at 8 NFE Euler (8 steps), Heun (4 steps) and FlowTurbo H2 P4 R3 (its
  refiner trained on the base model's late-step velocity, 100 steps); and FlowTurbo H2 P7
  (pseudo corrector only, 11 NFE);
* ``ppgn``: a condition classifier per seed (classify erm, ResNet-20, 15 epochs, seed + 1, so
  the evaluator (seed 0) is not grading its own condition network), PPGN's G and R trained 20
  epochs on its features, sampled 50 steps: the default rule, without the prior, the prior
  only, and G(E(x)) of real codes (no step);
* ``dit``: the flow group's recipe with the DiT denoiser (4 layers, 4 heads of 16, patch 2):
  Euler 20 steps and Heun 4 steps.

Runs are ordinary run directories under ``--out`` with fixed names; run again to skip finished
runs:

    python experiments/generate_synth100.py --group diffusion --out /work/runs/generate-table
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import runs  # experiments/runs.py: run or resume one named run directory
from compress_synth100 import collect, packed, print_table

TRAIN = ("-q", "--batch-size", "32", "--lr", "0.001", "--epochs", "20",
         "--set", "optim.name=adamw", "--set", "optim.weight_decay=0",
         "--set", "train.ema_decay=0.999", "--set", "train.ema_warmup=true",
         "--set", "generate.samples_per_class=16",
         "--set", "generate.denoiser_options={block_out_channels: [32, 64], "
         "attention: [false, true]}")
KEYS = {"fd": lambda s: s["fd"], "precision": lambda s: s["precision"],
        "recall": lambda s: s["recall"], "top1": lambda s: s["sample_top1"],
        "nfe": lambda s: s["nfe"], "ips": lambda s: s["images_per_second"]}
HEADER = {"fd": "FD (evaluator features) ↓", "precision": "precision", "recall": "recall",
          "top1": "top-1 on samples (%)", "nfe": "NFE / sample", "ips": "images/s"}
DIGITS = {"fd": 1, "precision": 2, "recall": 2, "top1": 1, "nfe": 0, "ips": 1}


def sample(out: Path, data: Path, method: str, name: str, seed: int, init: Path | None,
           *extra: str) -> dict[str, Any]:
    args = ["--data", str(data), *TRAIN, *extra, "--seed", str(seed)]
    if init is not None:
        args += ["--init", str(init)]
    return runs.run(out, "generate", method, name, args)[1]


def table(out: Path, seeds: int, rows_of: Any) -> None:
    data = packed(out)
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        for label, summary in rows_of(out, data, seed):
            collect(rows, label, summary, KEYS)
            print(f"seed {seed} {label}: fd {summary['fd']:.1f} top-1 "
                  f"{summary['sample_top1']:.1f} nfe {summary['nfe']:.0f}", flush=True)
    print_table(rows, HEADER, DIGITS)


def diffusion(out: Path, data: Path, seed: int) -> list[tuple[str, dict[str, Any]]]:
    base = sample(out, data, "ddpm", f"ddpm-s{seed}", seed, None, "--steps", "20")
    init = out / "generate" / "ddpm" / f"ddpm-s{seed}"
    return [("DDPM ancestral, 20 steps", base),
            ("DDPM ancestral, 100 steps",
             sample(out, data, "ddpm", f"ddpm100-s{seed}", seed, init, "--steps", "100")),
            ("DDIM (eta 0), 20 steps",
             sample(out, data, "ddim", f"ddim-s{seed}", seed, init, "--steps", "20")),
            ("DDIM + CFG w 2, 20 steps",
             sample(out, data, "ddim_cfg", f"cfg2-s{seed}", seed, init, "--steps", "20")),
            ("DDIM + CFG w 2, 10 steps (20 NFE)",
             sample(out, data, "ddim_cfg", f"cfg2-10-s{seed}", seed, init, "--steps", "10")),
            ("DDIM + CFG w 4, 20 steps",
             sample(out, data, "ddim_cfg", f"cfg4-s{seed}", seed, init, "--steps", "20",
                    "--guidance", "4"))]


def latent(out: Path, data: Path, seed: int) -> list[tuple[str, dict[str, Any]]]:
    vae = out / "vae" / f"vae-s{seed}"
    if not (vae / "hundred-vae.json").is_file():
        runs.hundred("generate", "vae", "--data", str(data), "--out", str(vae), "--epochs",
                     "20", "--seed", str(seed), "--set", "quiet=true")
    latent_options = ("--set", f"generate.latent={vae}")
    base = sample(out, data, "ddim_cfg", f"latent-cfg2-s{seed}", seed, None, "--steps", "20",
                  *latent_options)
    init = out / "generate" / "ddim_cfg" / f"latent-cfg2-s{seed}"
    return [("latent DDIM + CFG w 2, 20 steps", base),
            ("latent DDIM (eta 0), 20 steps",
             sample(out, data, "ddim", f"latent-ddim-s{seed}", seed, init, "--steps", "20",
                    *latent_options))]


def flow(out: Path, data: Path, seed: int) -> list[tuple[str, dict[str, Any]]]:
    base = sample(out, data, "flow_euler", f"euler-s{seed}", seed, None, "--steps", "20")
    init = out / "generate" / "flow_euler" / f"euler-s{seed}"
    return [("flow Euler, 20 steps", base),
            ("flow Heun, 10 steps (20 NFE)",
             sample(out, data, "flow_heun", f"heun10-s{seed}", seed, init, "--steps", "10")),
            ("flow Euler, 8 steps",
             sample(out, data, "flow_euler", f"euler8-s{seed}", seed, init, "--steps", "8")),
            ("flow Heun, 4 steps (8 NFE)",
             sample(out, data, "flow_heun", f"heun4-s{seed}", seed, init, "--steps", "4")),
            ("FlowTurbo H2 P4 R3 (8 NFE)",
             sample(out, data, "flowturbo", f"turbo9-s{seed}", seed, init, "--steps", "9")),
            ("FlowTurbo H2 P7, no refiner (11 NFE)",
             sample(out, data, "flowturbo", f"turbo-h2p7-s{seed}", seed, init, "--steps", "9",
                    "--set", "method_params.heun_steps=2", "--set",
                    "method_params.pseudo_steps=7", "--set",
                    "method_params.refiner_steps=0"))]


def ppgn(out: Path, data: Path, seed: int) -> list[tuple[str, dict[str, Any]]]:
    condition, _ = runs.run(out, "classify", "erm", f"condition-s{seed}",
                            ["--data", str(data), "-q", "--model", "resnet20", "--batch-size",
                             "64", "--epochs", "15", "--seed", str(seed + 1)])
    # measured by the evaluator of the other groups (their runs train at batch 32, PPGN at 64,
    # and the cached evaluator follows a run's data settings)
    evaluator = sample(out, data, "ddpm", f"ddpm-s{seed}", seed, None, "--steps",
                       "20")["evaluator_dir"]
    own = ("--epochs", "20", "--batch-size", "64", "--steps", "50",
           "--set", f"method_params.condition={condition}",
           "--set", f"generate.evaluator={evaluator}")
    base = runs.run(out, "generate", "ppgn", f"ppgn-s{seed}",
                    ["--data", str(data), "-q", "--set", "generate.samples_per_class=16",
                     *own, "--seed", str(seed)])[1]
    init = out / "generate" / "ppgn" / f"ppgn-s{seed}"

    def variant(name: str, *extra: str) -> dict[str, Any]:
        return runs.run(out, "generate", "ppgn", f"ppgn-{name}-s{seed}",
                        ["--data", str(data), "-q", "--set", "generate.samples_per_class=16",
                         *own, "--init", str(init), *extra, "--seed", str(seed)])[1]

    return [("PPGN default (eps1 0.1, eps2 1, eps3 0), 50 steps", base),
            ("PPGN without the prior (eps1 0)", variant("noprior", "--set",
                                                        "method_params.eps1=0")),
            ("PPGN prior only (eps2 0)", variant("prioronly", "--set", "method_params.eps2=0")),
            ("G(E(x)) of real codes, no step", variant("recon", "--steps", "1", "--set",
                                                       "method_params.eps1=0", "--set",
                                                       "method_params.eps2=0"))]


def dit(out: Path, data: Path, seed: int) -> list[tuple[str, dict[str, Any]]]:
    options = ("--set", "generate.denoiser=dit", "--set", "generate.denoiser_options={}")
    base = sample(out, data, "flow_euler", f"dit-euler-s{seed}", seed, None, "--steps", "20",
                  *options)
    init = out / "generate" / "flow_euler" / f"dit-euler-s{seed}"
    return [("DiT (4 layers, width 64, patch 2), flow Euler 20 steps", base),
            ("DiT, flow Heun 4 steps (8 NFE)",
             sample(out, data, "flow_heun", f"dit-heun4-s{seed}", seed, init, "--steps", "4",
                    *options))]


GROUPS = {"diffusion": diffusion, "latent": latent, "flow": flow, "ppgn": ppgn, "dit": dit}


FIGURE = (("DDPM, 20 steps", "ddpm/ddpm-s0"), ("DDIM + CFG w 4, 20 steps", "ddim_cfg/cfg4-s0"),
          ("latent DDIM + CFG w 2", "ddim_cfg/latent-cfg2-s0"),
          ("flow, Euler 20 steps", "flow_euler/euler-s0"),
          ("FlowTurbo H2 P4 R3 (8 NFE)", "flowturbo/turbo9-s0"),
          ("DiT, flow Euler 20", "flow_euler/dit-euler-s0"),
          ("PPGN, 50 steps", "ppgn/ppgn-s0"))


def figure(out: Path, path: Path) -> None:
    """Seed 0's sample grids side by side (a row per class, 8 samples each): the README's
    figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    grids = [(label, out / "generate" / run / "samples.png") for label, run in FIGURE]
    grids = [(label, grid) for label, grid in grids if grid.is_file()]
    fig, axes = plt.subplots(1, len(grids), figsize=(2.6 * len(grids), 3.6))
    for axis, (label, grid) in zip(axes, grids):
        axis.imshow(Image.open(grid))
        axis.set_title(label, fontsize=8)
        axis.axis("off")
    fig.suptitle("synth100, 16 px, 10 classes (a row per class), seed 0", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/generate-table")
    parser.add_argument("--group", choices=sorted(GROUPS) + ["figure"], required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--figure", default="docs/figures/generate_samples.png",
                        help="where --group figure writes the sample grids")
    args = parser.parse_args()
    if args.group == "figure":
        figure(Path(args.out), Path(args.figure))
    else:
        table(Path(args.out), args.seeds, GROUPS[args.group])


if __name__ == "__main__":
    main()
