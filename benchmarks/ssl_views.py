"""Self-supervised pre-training throughput: hundred's two-view pipeline against solo-learn's.

Baseline ("reference"): solo-learn's loop without DALI — a torchvision-style ``Dataset``
whose transform returns two independently augmented views of each image through PIL with
SimCLR's recipe (Chen et al., ICML 2020, Appendix A; solo-learn's defaults):
RandomResizedCrop (scale 0.08-1), horizontal flip, ColorJitter(0.4, 0.4, 0.2, 0.1) with
p = 0.8, RandomGrayscale p = 0.2, Gaussian blur (sigma 0.1-2, PIL) with p = 0.5 from 64 px
up (small-image recipes have none), ToTensor, Normalize; a ``DataLoader`` with as many
workers as cores; then the model on each view, lightly's ``SimCLRProjectionHead`` and
``NTXentLoss``, the online probe (the model's head on the detached features of view 0, as
the ssl track's methods train it) and SGD.

hundred: the ssl track's SimCLR (``hundred.tracks.ssl.methods.simclr``) through ``Trainer``
with a ``BatchLoader(views=2, view_augments=view_specs(recipe))``: the data resident in
memory, both views augmented in batches on the device; the recipe is ``simclr`` (with blur)
from 64 px up and ``simclr-small`` (without) below, the same steps as the reference's (the
jitter strengths differ, not the work).

Both use the same model, projection head, loss, batch size and precision (bf16 autocast and
channels_last on CUDA, as the trainer does by default), on the same synth100 images, for
the same number of steps after a warm-up; images/s counts images (two views each). The script
prints images/s for each and the ratio. Not part of the test suite.

    python benchmarks/ssl_views.py                 # CPU, resnet20@32 and resnet18_lowres@64
    python benchmarks/ssl_views.py --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from rich.console import Console
from rich.table import Table

from hundred.config import RunConfig, build_config
from hundred.data.augment import view_specs
from hundred.data.loader import BatchLoader
from hundred.engine.allocator import keep_freed_memory
from hundred.engine.trainer import Trainer
from hundred.models import create
from hundred.tracks.ssl.methods.simclr import SimCLR, SimCLRParams

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from train_step import MEAN, STD, PilDataset, _sync, synth_images  # noqa: E402

#: below this size SimCLR's recipes leave out the Gaussian blur (CIFAR-scale images)
BLUR_FROM_PX = 64


class PilGaussianBlur:
    """PIL's Gaussian blur with a radius drawn uniformly from ``sigma`` (SimCLR, MoCo v2 and
    solo-learn blur this way on the CPU)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class TwoViews:
    """A transform giving two independently augmented views of one image."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [self.transform(image), self.transform(image)]


def simclr_transform(res: int):
    """SimCLR's augmentation of one view, as torchvision transforms on a PIL image."""
    from torchvision import transforms as T

    blur = [T.RandomApply([PilGaussianBlur()], p=0.5)] if res >= BLUR_FROM_PX else []
    return T.Compose([
        T.RandomResizedCrop(res, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        *blur, T.ToTensor(), T.Normalize(MEAN, STD)])


def simclr_config(device: torch.device, batch: int, epochs: int) -> RunConfig:
    """The ssl track's SimCLR run config both loops take their settings from."""
    return build_config(overrides=[
        "track=ssl", "method=simclr", f"data.batch_size={batch}", "quiet=true", "optim.lr=0.05",
        f"train.device={device}", f"train.epochs={epochs}"])


def reference_rate(model, images, labels, res, batch, steps, warmup, device, *,
                   workers: int | None = None) -> float:
    """solo-learn's two-view loop: ``warmup`` untimed steps, then ``steps`` timed ones;
    images/s."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    config, params = simclr_config(device, batch, 1), SimCLRParams()
    workers = os.cpu_count() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        PilDataset(images, labels, TwoViews(simclr_transform(res))), batch_size=batch,
        shuffle=True, drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)
    on_cuda = device.type == "cuda"
    memory_format = (torch.channels_last if on_cuda and config.model.channels_last
                     else torch.contiguous_format)
    model.to(device, memory_format=memory_format).train()
    projector = SimCLRProjectionHead(model.feature_dim, params.proj_hidden_dim,
                                     params.proj_output_dim).to(device).train()
    criterion = NTXentLoss(temperature=params.temperature)
    optimizer = torch.optim.SGD([*model.parameters(), *projector.parameters()],
                                lr=config.optim.lr, momentum=config.optim.momentum,
                                weight_decay=config.optim.weight_decay)
    bf16 = config.train.amp == "bf16" or (config.train.amp == "auto" and on_cuda)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def step() -> None:
        views, y = next(stream)
        views = [v.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                 for v in views]
        y = y.to(device, non_blocking=True)
        with (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
              else contextlib.nullcontext()):
            features = [model(v, return_features=True)[1] for v in views]
            loss = (criterion(projector(features[0]), projector(features[1]))
                    + F.cross_entropy(model.head(features[0].detach()), y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def view_recipe(res: int) -> str:
    """hundred's SimCLR view recipe for ``res`` px: with blur from 64 px up, as the reference."""
    return "simclr" if res >= BLUR_FROM_PX else "simclr-small"


def hundred_rate(model, images, labels, res, batch, steps, warmup, device) -> float:
    """hundred's SimCLR: one warm-up pass over the data, then about ``steps`` timed steps
    (whole passes; ``warmup`` is unused); images/s as the trainer counts them."""
    loader = BatchLoader((images, labels), batch_size=batch, shuffle=True, drop_last=True,
                         views=2, view_augments=view_specs(view_recipe(res)), device=device)
    passes = max(1, round(steps / len(loader)))  # timed passes, after one warm-up pass
    config = simclr_config(device, batch, 1 + passes)
    history = Trainer(config, model, SimCLR(config=config), loader, None, device).fit().history
    timed = history[1:]
    return (len(timed) * len(loader) * batch
            / sum(record["seconds"] for record in timed))


def two_view_images(res: int, steps: int, warmup: int, batch: int):
    """synth100 train images and labels for ``warmup + steps`` batches (at least a batch
    per class would make toy runs slow: evenly spaced images beyond that are kept)."""
    images, labels = synth_images(res, steps, warmup, batch)
    keep = np.linspace(0, len(labels) - 1, min(len(labels), (steps + warmup) * batch)).astype(int)
    return images[keep], labels[keep]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cases", default="resnet20@32,resnet18_lowres@64")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the reference (default: as many as cores)")
    args = parser.parse_args(argv)
    # both loops train in this process with the allocator settings hundred's runs use
    keep_freed_memory()
    device = torch.device(args.device)
    table = Table(title=f"SimCLR pre-training images/s (2 views each) on {device} "
                        f"({os.cpu_count()} cores, torch {torch.__version__})")
    for column in ("model @ px", "reference (PIL 2 views + DataLoader)", "hundred", "ratio"):
        table.add_column(column, justify="right")
    rows = []
    for case in args.cases.split(","):
        name, res = case.split("@")
        res = int(res)
        images, labels = two_view_images(res, args.steps, args.warmup, args.batch)
        rates = []
        for measure in (reference_rate, hundred_rate):
            torch.manual_seed(0)
            model = create(name, 100, head="linear", img_size=res)
            extra = {"workers": args.workers} if measure is reference_rate else {}
            rates.append(measure(model, images, labels, res, args.batch, args.steps,
                                 args.warmup, device, **extra))
        rows.append({"model": name, "res": res, "reference": rates[0], "hundred": rates[1],
                     "ratio": rates[1] / rates[0]})
        table.add_row(f"{name} @ {res}", *(f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}"
                                           for rate in rates),
                      f"{rates[1] / rates[0]:.2f}x")
    Console().print(table)
    return rows


if __name__ == "__main__":
    main()
