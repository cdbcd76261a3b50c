"""Training throughput: hundred's loop against the loop most seed repositories use.

Baseline ("reference"): a torchvision-style ``Dataset`` that turns each uint8 image into a
PIL image and applies PIL transforms (RandomCrop with padding or RandomResizedCrop,
horizontal flip, ToTensor, Normalize), a ``DataLoader`` with as many workers as cores, the
model, cross-entropy and SGD — the loop of most of the seed papers' code.

hundred: the same model, batch size, optimiser and augmentation through ``Trainer`` and
``BatchLoader`` (data resident in memory, augmentation batched on the device).

Both train on the same synth100 images for the same number of steps after a warm-up;
the script prints images/s for each and the ratio. Not part of the test suite.
``reference_measure`` and ``hundred_measure`` (used by ``benchmarks/gpu_check.py``) can also
measure the share of step time spent waiting for data.

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
from hundred.engine.allocator import keep_freed_memory
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_measure(model, images, labels, res, batch, steps, warmup, device, *,
                      workers: int | None = None, bf16: bool = False,
                      channels_last: bool = False, data_share: bool = False) -> dict:
    """The reference loop: ``warmup`` untimed steps, then ``steps`` timed ones.

    Returns ``images_per_s``; with ``data_share``, ``steps`` more steps follow with the device
    synchronised before and after fetching each batch (and moving it to the device), so that
    ``data_share`` = time waiting for data / total step time is measured without the overlap
    that asynchronous execution gives the timed steps. ``bf16`` (autocast) and
    ``channels_last`` apply on CUDA only, as hundred's trainer does by default there.
    """
    from torchvision import transforms as T

    crop = (T.RandomCrop(res, padding=4) if res <= 32 else T.RandomResizedCrop(res))
    transform = T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    workers = os.cpu_count() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        PilDataset(images, labels, transform), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if channels_last and on_cuda else torch.contiguous_format
    model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and on_cuda else None

    def batches():
        while True:
            yield from loader

    stream = batches()

    def step(timed_data: bool) -> float:
        if timed_data:
            _sync(device)
            started = time.perf_counter()
        x, y = next(stream)
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        waited = 0.0
        if timed_data:
            _sync(device)
            waited = time.perf_counter() - started
        if autocast is not None:
            with autocast:
                loss = F.cross_entropy(model(x), y)
        else:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return waited

    for _ in range(warmup):
        step(False)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(False)
    _sync(device)
    result = {"images_per_s": steps * batch / (time.perf_counter() - start),
              "data_share": None, "workers": workers}
    if data_share:
        start = time.perf_counter()
        waited = sum(step(True) for _ in range(steps))
        _sync(device)
        result["data_share"] = waited / (time.perf_counter() - start)
    return result


def reference_rate(model, images, labels, res, batch, steps, warmup, device) -> float:
    return reference_measure(model, images, labels, res, batch, steps, warmup,
                             device)["images_per_s"]


class _TimedLoader:
    """Wraps a BatchLoader for the trainer; from epoch ``sync_from`` on, it synchronises the
    device before and after producing each batch and adds that time to ``waited[epoch]``."""

    def __init__(self, loader, device: torch.device, sync_from: int) -> None:
        self.loader, self.device, self.sync_from = loader, device, sync_from
        self.epoch, self.waited = 0, {}

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self):
        iterator = iter(self.loader)
        timed = self.epoch >= self.sync_from
        while True:
            if timed:
                _sync(self.device)
                started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            if timed:
                _sync(self.device)
                self.waited[self.epoch] = (self.waited.get(self.epoch, 0.0)
                                           + time.perf_counter() - started)
            yield batch


def hundred_measure(model, images, labels, res, batch, steps, warmup, device, *,
                    data_share: bool = False) -> dict:
    """hundred's loop: one warm-up pass over the data, then about ``steps`` timed steps
    (whole passes; ``warmup`` is unused). With ``data_share``, as many synchronised steps
    follow (see :func:`reference_measure`)."""
    augment = "crop-flip" if res <= 32 else "rrc-flip"
    loader = BatchLoader((images, labels), batch_size=batch, shuffle=True, drop_last=True,
                         augment=augment, device=device)
    passes = max(1, round(steps / len(loader)))  # timed passes, after one warm-up pass
    timed_loader = _TimedLoader(loader, device, sync_from=1 + passes)
    config = build_config(overrides=[
        f"data.batch_size={batch}", f"data.augment={augment}", "quiet=true", "optim.lr=0.05",
        f"train.device={device}", f"train.epochs={1 + passes * (2 if data_share else 1)}"])
    history = Trainer(config, model, ERM(config=config), timed_loader, None, device).fit().history
    timed = history[1:1 + passes]
    result = {"images_per_s": len(timed) * len(loader) * batch
              / sum(record["seconds"] for record in timed),
              "data_share": None, "resident": loader.resident}
    if data_share:
        synced = history[1 + passes:]
        result["data_share"] = (sum(timed_loader.waited.values())
                                / sum(record["seconds"] for record in synced))
    return result


def hundred_rate(model, images, labels, res, batch, steps, warmup, device) -> float:
    return hundred_measure(model, images, labels, res, batch, steps, warmup, device)["images_per_s"]


def synth_images(res: int, steps: int, warmup: int, batch: int):
    """synth100 train images and labels, enough for ``warmup + steps`` batches."""
    data = open_source("synth100", classes=100, train_per_class=max(
        20, (steps + warmup) * batch // 100 + 1), val_per_class=1, res=res)
    return data.arrays("train").images, data.arrays("train").labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cases", default="resnet20@32,resnet18@64")
    args = parser.parse_args(argv)
    # both loops train in this process with the allocator settings hundred's runs use, so the
    # ratio compares the loops (incremental_e2e.py measures the allocator itself)
    keep_freed_memory()
    device = torch.device(args.device)
    table = Table(title=f"training images/s on {device} ({os.cpu_count()} cores, "
                        f"torch {torch.__version__})")
    for column in ("model @ px", "reference (PIL + DataLoader)", "hundred", "ratio"):
        table.add_column(column, justify="right")
    for case in args.cases.split(","):
        name, res = case.split("@")
        res = int(res)
        images, labels = synth_images(res, args.steps, args.warmup, args.batch)
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
