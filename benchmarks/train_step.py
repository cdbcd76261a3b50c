"""Training throughput: hundred's loop against the loop most seed repositories use.

Baseline ("reference"): a torchvision-style ``Dataset`` that turns each uint8 image into a
PIL image and applies PIL transforms (RandomCrop with padding or RandomResizedCrop,
horizontal flip, ToTensor, Normalize), a ``DataLoader`` with as many workers as cores, the
model, cross-entropy and SGD — the loop of most of the seed papers' code.

hundred: the same model, batch size, optimiser and augmentation through ``Trainer`` and
``BatchLoader`` (data resident in memory, augmentation batched on the device).

Both train on the same synth100 images for the same number of steps after a warm-up;
the script prints images/s for each and the ratio. Not part of the test suite.

    python benchmarks/train_step.py                      # CPU, resnet20@32 and resnet18@64
    python benchmarks/train_step.py --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.table import Table

from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.data.sources import open_source
from hundred.engine.trainer import Trainer
from hundred.models import create
from hundred.tracks.classify.methods.erm import ERM

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PilDataset(torch.utils.data.Dataset):
    """One image at a time through PIL, as torchvision datasets do."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def reference_rate(model, images, labels, res, batch, steps, warmup, device) -> float:
    from torchvision import transforms as T

    crop = (T.RandomCrop(res, padding=4) if res <= 32 else T.RandomResizedCrop(res))
    transform = T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(
        PilDataset(images, labels, transform), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=os.cpu_count(), pin_memory=device.type == "cuda", persistent_workers=True)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    done, start = 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def hundred_rate(model, images, labels, res, batch, steps, warmup, device) -> float:
    augment = "crop-flip" if res <= 32 else "rrc-flip"
    loader = BatchLoader((images, labels), batch_size=batch, shuffle=True, drop_last=True,
                         augment=augment, device=device)
    passes = max(1, round(steps / len(loader)))  # timed passes, after one warm-up pass
    config = build_config(overrides=[
        f"data.batch_size={batch}", f"data.augment={augment}", "quiet=true", "optim.lr=0.05",
        f"train.device={device}", f"train.epochs={1 + passes}"])
    history = Trainer(config, model, ERM(config=config), loader, None, device).fit().history
    timed = history[1:]
    return len(timed) * len(loader) * batch / sum(record["seconds"] for record in timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cases", default="resnet20@32,resnet18@64")
    args = parser.parse_args()
    device = torch.device(args.device)
    table = Table(title=f"training images/s on {device} ({os.cpu_count()} cores, "
                        f"torch {torch.__version__})")
    for column in ("model @ px", "reference (PIL + DataLoader)", "hundred", "ratio"):
        table.add_column(column, justify="right")
    for case in args.cases.split(","):
        name, res = case.split("@")
        res = int(res)
        data = open_source("synth100", classes=100, train_per_class=max(
            20, (args.steps + args.warmup) * args.batch // 100 + 1), val_per_class=1, res=res)
        images, labels = data.arrays("train").images, data.arrays("train").labels
        rates = []
        for measure in (reference_rate, hundred_rate):
            torch.manual_seed(0)
            model = create(name, 100, img_size=res)
            rates.append(measure(model, images, labels, res, args.batch, args.steps,
                                 args.warmup, device))
        table.add_row(f"{name} @ {res}", f"{rates[0]:.0f}", f"{rates[1]:.0f}",
                      f"{rates[1] / rates[0]:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
