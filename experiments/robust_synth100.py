"""The robust track's README tables on built-in data, 3 seeds (issue 16). Groups (``--group``):

* ``cuda``: CUDA unlearnable data (Sadasivan et al., CVPR 2023). synth100 at 16 px (100
  classes, 50 training and 20 validation images a class) is packed once and poisoned with a
  fixed private key (every training image, blur parameter 0.3); ERM (ResNet-20 at width 8,
  15 epochs, batch 64, SGD lr 0.1, cosine) trains on the clean and on the poisoned copy, with
  the default ``crop-flip`` augmentation and without augmentation, and is tested on the
  clean validation split (the poison never touches it). The paper: near chance when poisoned.

* ``defences``: clean and PGD-20 accuracy (L∞ 8/255, step 2/255, one random start) of ERM,
  PGD adversarial training from scratch (``at``: PGD-10, step 2/255), adversarial
  fine-tuning (``adv_finetune``: the ERM run of the same seed, then a few epochs of PGD-10 on
  its slow-start fast-decay schedule) and DAT. synth100 at 16 px, 10 classes, 100 training
  and 50 validation images a class; ResNet-20 at width 8, batch 64, SGD lr 0.1 (crop-flip).
  ERM, AT and DAT train 30 epochs, fine-tuning 3 (a tenth of AT's adversarial epochs). AT is
  also run for 3 epochs, the fine-tuning's compute. Compute is counted in forward-backward
  passes over a training image: an ERM epoch is 1, an adversarial epoch 11 (10 PGD steps and
  the update).

* ``quscore``: QuScore (Abdukhamidov et al. 2023) against two undefended models of the
  ``defences`` data, the ERM ResNet-20 of that group and an ERM ConvNet-D3 (30 epochs), each
  coupled with two interpreters (CAM, vanilla gradient): success rate and median queries on
  100 validation images (a fixed uniform sample of the 500, ``--limit``), L∞ 8/255, at most
  1000 queries an image. The
  attacker owns the *other* architecture's model of the same seed as its surrogate (the
  paper's transfer stage). Needs the ``defences`` group's ERM runs (made if missing).

* ``backdoor``: BLTO (Sun et al., ICLR 2024) against a fixed random-colour patch
  (SSL-Backdoor), both poisoning 1 % of the unlabelled pre-training set (target-class images,
  target class 0). synth100 at 16 px, 10 classes, 100 training and 50 validation images a
  class (10 poisoned images). BLTO's generator (width 16) is trained against a surrogate
  SimSiam (ResNet-20 at width 8) for BLTO_STEPS outer steps of 2 inner steps each, batch 64,
  the surrogate re-initialised every 50 outer steps, L∞ 8/255. The victim pre-trains SimSiam
  (ResNet-20 at width 8, BACKDOOR_EPOCHS epochs, batch 128, simclr-small views) on each
  poisoned copy and on the clean data, then ``hundred backdoor`` trains a linear probe on
  clean labelled train features and reports the attack success rate (triggered val images
  of the other 9 classes assigned to class 0) and the probe's clean top-1. The clean
  victim's rate is the baseline (a trigger that does nothing still lands some images in
  class 0). Both triggers are also run at 10 % (every target-class image) as a check that a
  backdoor can be planted at all at this size, and a supervised ERM model trained on those
  10 % packs (where the trigger marks every class-0 training image, a shortcut) is the
  positive control of the measurement. Per seed s, the attacker's key is KEY + s and the victim's seed is s.

Runs are ordinary run directories under ``--out`` with fixed names, so running the script
again skips finished runs and resumes a killed one:

    python experiments/robust_synth100.py --group cuda --out runs/robust-table
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

import runs  # experiments/runs.py: run or resume one named run directory

SYNTH = ("-o", "classes=100", "-o", "train_per_class=50", "-o", "val_per_class=20",
         "-o", "res=16")
KEY = 2023  # the poisoner's private key (a real poisoner keeps a large random one secret)
ERM = ("--model", "resnet20", "--epochs", "15", "--batch-size", "64", "--lr", "0.1", "-q",
       "--set", "model.options={width: 8}")


DEFENCE_DATA = ("-o", "classes=10", "-o", "train_per_class=100", "-o", "val_per_class=50",
                "-o", "res=16")
DEFENCE = ("--model", "resnet20", "--batch-size", "64", "--lr", "0.1", "-q", "--eps", "8/255",
           "--set", "model.options={width: 8}", "--set", "robust.eval_step_size=2/255")
LONG, SHORT = 30, 3  # epochs of the from-scratch runs; of fine-tuning (a tenth)
PGD_PASSES = 11  # forward-backward passes a PGD-10 training step costs per image


BACKDOOR_DATA = ("-o", "classes=10", "-o", "train_per_class=100", "-o", "val_per_class=50",
                 "-o", "res=16")
BACKDOOR_TARGET, BACKDOOR_FRACTION = 0, 0.01
# the paper's 1 %, and 10 % (every target-class image) as a check that the pipeline can plant
# a backdoor at all at this size
BACKDOOR_FRACTIONS = (0.01, 0.1)
BACKDOOR_EPOCHS, BLTO_STEPS = 40, 150
BLTO_OPTIONS = ("inner_steps=2", "reinit_every=50", "batch_size=64", "generator_width=16",
                "surrogate=resnet20", "surrogate_options={width: 8}", "proj_dim=256",
                "pred_hidden_dim=64", "generator_lr=0.001")
SUPERVISED = ("--model", "resnet20", "--batch-size", "128", "-q", "--set",
              "model.options={width: 8}")
VICTIM = ("--model", "resnet20", "--batch-size", "128", "-q", "--set",
          "model.options={width: 8}", "--set", "ssl.augment=simclr-small", "--set",
          "method_params.proj_hidden_dim=256", "--set", "method_params.proj_output_dim=256",
          "--set", "method_params.pred_hidden_dim=64")


def packed_data(out: Path) -> tuple[Path, Path]:
    """The clean packed synth100 and its CUDA-poisoned copy (made once)."""
    clean, poisoned = out / "data" / "synth100-16", out / "data" / "synth100-16-cuda"
    if not (clean / "meta.json").is_file():
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(clean), "-q",
                     "--force", *SYNTH)
    if not (poisoned / "meta.json").is_file():
        runs.hundred("data", "poison", str(clean), "--method", "cuda", "--key", str(KEY),
                     "--out", str(poisoned), "--replace")
    return clean, poisoned


def cuda_table(out: Path, seeds: int, augments: tuple[str, ...]) -> None:
    clean, poisoned = packed_data(out)
    results: dict[tuple[str, str], list[float]] = {}
    for augment in augments:
        for label, data in (("clean", clean), ("CUDA-poisoned", poisoned)):
            for seed in range(seeds):
                name = f"{label.lower()}-{augment}-s{seed}"
                _, summary = runs.run(out / "cuda", "classify", "erm", name,
                                      ["--data", str(data), *ERM, "--seed", str(seed),
                                       "--set", f"data.augment={augment}"])
                results.setdefault((label, augment), []).append(float(summary["val_top1"]))
    print("\n| training data | augmentation | clean test top-1 (%) |\n|---|---|---|")
    for (label, augment), values in results.items():
        mean, std = runs.mean_std(values)
        print(f"| {label} | {augment} | {mean:.1f} ± {std:.1f} |")


def defence_table(out: Path, seeds: int) -> None:
    data = out / "data" / "synth100-10c-16"
    if not (data / "meta.json").is_file():
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(data), "-q",
                     "--force", *DEFENCE_DATA)
    rows: dict[str, dict[str, list[float]]] = {}
    specs = (  # label, method, epochs, passes per epoch, extra arguments
        ("ERM", "erm", LONG, 1, ()),
        (f"AT from scratch, {LONG} epochs", "at", LONG, PGD_PASSES, ()),
        (f"AT from scratch, {SHORT} epochs (fine-tuning's compute)", "at", SHORT, PGD_PASSES,
         ()),
        (f"adversarial fine-tuning, {SHORT} epochs from ERM", "adv_finetune", SHORT,
         PGD_PASSES, ("init",)),
        (f"DAT, {LONG} epochs", "dat", LONG, None, ()),
    )
    for label, method, epochs, passes, extra in specs:
        for seed in range(seeds):
            args = ["--data", str(data), *DEFENCE, "--epochs", str(epochs), "--seed", str(seed)]
            if "init" in extra:
                args += ["--init", str(out / "robust" / "erm" / f"erm-{LONG}-s{seed}")]
            _, summary = runs.run(out, "robust", method, f"{method}-{epochs}-s{seed}", args)
            row = rows.setdefault(label, {"clean": [], "pgd": [], "seconds": []})
            row["clean"].append(float(summary["val_top1"]))
            row["pgd"].append(float(summary["robust_top1"]))
            row["seconds"].append(float(summary["train_seconds"]))
            row["passes"] = [epochs * passes] if passes else []
    at_passes = LONG * PGD_PASSES
    at_seconds = float(np.mean(rows[f"AT from scratch, {LONG} epochs"]["seconds"]))
    print("\n| method | clean top-1 (%) | PGD-20 top-1 (%) | passes / image (vs AT-30) "
          "| train s (vs AT-30) |\n|---|---|---|---|---|")
    for label, row in rows.items():
        clean, clean_std = runs.mean_std(row["clean"])
        pgd, pgd_std = runs.mean_std(row["pgd"])
        seconds = float(np.mean(row["seconds"]))
        passes = f"{row['passes'][0]} ({row['passes'][0] / at_passes:.2f}×)" if row["passes"] \
            else "—"
        print(f"| {label} | {clean:.1f} ± {clean_std:.1f} | {pgd:.1f} ± {pgd_std:.1f} | "
              f"{passes} | {seconds:.0f} ({seconds / at_seconds:.2f}×) |")


QUSCORE_QUERIES = 1000
QUSCORE_IMAGES = 100  # a fixed uniform sample of the 500 validation images


def quscore_table(out: Path, seeds: int) -> None:
    data = out / "data" / "synth100-10c-16"
    if not (data / "meta.json").is_file():
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(data), "-q",
                     "--force", *DEFENCE_DATA)
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for seed in range(seeds):
        common = ["--data", str(data), *DEFENCE, "--epochs", str(LONG), "--seed", str(seed)]
        models = {
            "ResNet-20": runs.run(out, "robust", "erm", f"erm-{LONG}-s{seed}", common)[0],
            "ConvNet-D3": runs.run(out, "robust", "erm", f"convnet-{LONG}-s{seed}",
                                   [*common, "--model", "convnet_d3", "--set",
                                    "model.options={}"])[0]}
        for name, run_dir in models.items():
            surrogate = next(other for key, other in models.items() if key != name)
            for interpreter in ("cam", "grad"):
                summary = json.loads((run_dir / "summary.json").read_text())
                done = [entry for entry in summary.get("attacks", [])
                        if entry["attack"] == "quscore" and entry["interpreter"] == interpreter
                        and entry["max_queries"] == QUSCORE_QUERIES
                        and entry["images"] == QUSCORE_IMAGES]
                if not done:
                    runs.hundred("attack", str(run_dir), "--attack", "quscore", "--eps",
                                 "8/255", "--interpreter", interpreter, "--max-queries",
                                 str(QUSCORE_QUERIES), "--surrogate", str(surrogate),
                                 "--seed", str(seed), "--limit", str(QUSCORE_IMAGES))
                    summary = json.loads((run_dir / "summary.json").read_text())
                    done = [entry for entry in summary["attacks"]
                            if entry["attack"] == "quscore"
                            and entry["interpreter"] == interpreter
                            and entry["images"] == QUSCORE_IMAGES]
                entry = done[-1]
                row = results.setdefault((name, interpreter), {})
                for key in ("clean_top1", "success_rate", "median_queries", "interp_iou",
                            "robust_top1"):
                    value = entry[key]
                    row.setdefault(key, []).append(math.nan if value is None else float(value))
    print("\n| model | interpreter | clean top-1 (%) | success rate (%) | median queries "
          "| top-20 % IoU of maps | top-1 under attack (%) |\n|---|---|---|---|---|---|---|")
    for (name, interpreter), row in results.items():
        cells = []
        for key, scale in (("clean_top1", 1), ("success_rate", 100), ("median_queries", 1),
                           ("interp_iou", 1), ("robust_top1", 1)):
            mean, std = runs.mean_std([value * scale for value in row[key]])
            digits = 2 if key == "interp_iou" else 1 if key != "median_queries" else 0
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        print(f"| {name} | {interpreter} | " + " | ".join(cells) + " |")


def backdoor_table(out: Path, seeds: int, epochs: int = BACKDOOR_EPOCHS,
                   blto_steps: int = BLTO_STEPS) -> None:
    data = out / "data" / "synth100-10c-16-backdoor"
    if not (data / "meta.json").is_file():
        runs.hundred("data", "pack", "synth100", "--res", "16", "--out", str(data), "-q",
                     "--force", *BACKDOOR_DATA)
    rows: dict[str, dict[str, list[float]]] = {}
    poisoned_count: dict[str, int] = {}
    for seed in range(seeds):
        packs: dict[str, Path] = {}
        for method, fraction in itertools.product(("blto", "patch"), BACKDOOR_FRACTIONS):
            tag = "" if fraction == BACKDOOR_FRACTION else f"-f{fraction:g}"
            method_tag = f"{method}{tag}"
            pack = out / "data" / f"backdoor-{method_tag}-k{blto_steps}-s{seed}"
            if not (pack / "meta.json").is_file():
                options = [f"steps={blto_steps}", *BLTO_OPTIONS] if method == "blto" else []
                started = time.perf_counter()
                runs.hundred("data", "poison", str(data), "--method", method, "--key",
                             str(KEY + seed), "--fraction", str(fraction),
                             "--target-class", str(BACKDOOR_TARGET), "--out", str(pack),
                             "--replace", *[arg for o in options for arg in ("-o", o)])
                print(f"poison {method_tag} s{seed}: {time.perf_counter() - started:.0f} s",
                      flush=True)
            packs[method_tag] = pack
            poisoned_count[method_tag] = json.loads((pack / "meta.json").read_text())[
                "poison"]["poisoned"]
        # (victim, track/method, its data, the triggers measured on it)
        victims = [("clean", ("ssl", "simsiam"), data,
                    [m for m in packs if "-f" not in m]),
                   *[(m, ("ssl", "simsiam"), pack, [m]) for m, pack in packs.items()],
                   # the positive control of the measurement: a *supervised* model trained
                   # on the 10 % pack, where the trigger marks every class-0 image
                   *[(f"supervised-{m}", ("classify", "erm"), pack, [m])
                     for m, pack in packs.items() if "-f" in m]]
        for victim, (track, method_name), victim_data, triggers in victims:
            args = ([*SUPERVISED, "--epochs", str(epochs)] if track == "classify" else
                    [*VICTIM, "--epochs", str(epochs)])
            run_dir, _ = runs.run(out, track, method_name,
                                  f"backdoor-{victim}-k{blto_steps}-e{epochs}-s{seed}",
                                  ["--data", str(victim_data), *args, "--seed", str(seed)])
            for method in triggers:
                pack = packs[method]
                sha = json.loads((pack / "meta.json").read_text())["poison"]["trigger"][
                    "sha256"]

                def found() -> list[dict[str, Any]]:
                    summary = json.loads((run_dir / "summary.json").read_text())
                    return [b for b in summary.get("backdoors", [])
                            if b["trigger_sha256"] == sha and "probe_data" in b]

                if not found():
                    runs.hundred("backdoor", str(run_dir), "--poison", str(pack))
                result = found()[-1]
                share = poisoned_count[method] / 10  # of the 1000 training images, in %
                if victim == "clean":
                    label = f"{method} trigger on a victim pre-trained on clean data (baseline)"
                else:
                    label = (f"{method.split('-')[0]}, {share:g} % poisoned" +
                             (" (sanity check)" if "-f" in method else ""))
                    if track == "classify":
                        label += ", supervised victim (control)"
                row = rows.setdefault(label, {"asr": [], "clean": []})
                row["asr"].append(float(result["backdoor_asr"]))
                row["clean"].append(float(result["backdoor_clean_top1"]))
    print("\n| trigger | poisoned images | ASR (%) | probe clean top-1 (%) |\n|---|---|---|---|")
    for label, row in sorted(rows.items()):
        asr, asr_std = runs.mean_std(row["asr"])
        clean, clean_std = runs.mean_std(row["clean"])
        count = 0 if "baseline" in label else round(float(label.split()[1]) * 10)
        print(f"| {label} | {count} | {asr:.1f} ± {asr_std:.1f} | {clean:.1f} ± "
              f"{clean_std:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/robust-table")
    parser.add_argument("--group", choices=("cuda", "defences", "quscore", "backdoor"),
                        required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--augment", choices=("crop-flip", "none"),
                        help="cuda: only this augmentation (e.g. to split the runs over two "
                        "processes)")
    args = parser.parse_args()
    if args.group == "defences":
        defence_table(Path(args.out), args.seeds)
        return
    if args.group == "quscore":
        quscore_table(Path(args.out), args.seeds)
        return
    if args.group == "backdoor":
        backdoor_table(Path(args.out), args.seeds)
        return
    augments = (args.augment,) if args.augment else ("crop-flip", "none")
    cuda_table(Path(args.out), args.seeds, augments)


if __name__ == "__main__":
    main()
