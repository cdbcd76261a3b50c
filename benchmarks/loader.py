"""Images per second: torchvision ImageFolder + DataLoader against hundred's packed loader.

Generates a JPEG tree of ImageNet-like images (default 20 classes x 50 images of 500x375),
then for each output resolution R measures

* the baseline most of the seed papers' code uses: ``torchvision.datasets.ImageFolder`` with
  PIL transforms (RandomResizedCrop(R), RandomHorizontalFlip, ToTensor, Normalize) in a
  ``DataLoader`` with ``os.cpu_count()`` worker processes;
* packing the tree once with ``hundred.data.pack.pack`` at ``R + R // 8`` (JPEG draft mode on
  and off);
* ``BatchLoader`` over the packed arrays with the comparable ``rrc-flip`` augmentation to R,
  resident (the default when the split fits the budget) and streamed from the memory map.

Every loader runs one warm-up epoch, then ``--epochs`` timed epochs; batches are moved to
``--device`` in both cases. Not part of the test suite::

    python benchmarks/loader.py --res 32 64 --device cpu
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

from hundred.data.augment import IMAGENET_MEAN, IMAGENET_STD
from hundred.data.loader import BatchLoader


def make_jpeg_tree(root: Path, classes: int, per_class: int, size: tuple[int, int], seed: int = 0,
                   workers: int = 1) -> int:
    """Write ``root/{train,val}/<class>/<i>.jpg``; returns the number of train images.

    Images are smooth random fields plus pixel noise, so JPEG sizes and decode costs are close
    to natural photos (a flat or pure-noise image would be unrealistically cheap or costly).
    val gets two images per class (the folder source expects both splits).

    ``workers`` > 1 writes the class folders from that many threads (PIL and numpy release the
    GIL while they resize, encode and draw), each class from its own generator seeded by
    ``(seed, split, class)``: other pixels than ``workers=1``, equally realistic.
    """
    jobs = [(split, label, count) for split, count in (("train", per_class), ("val", 2))
            for label in range(classes)]
    if workers <= 1:
        rng = np.random.default_rng(seed)
        for split, label, count in jobs:
            _write_class(root / split / f"n{label:08d}", count, size, rng)
    else:
        from concurrent.futures import ThreadPoolExecutor

        def job(item: tuple[str, int, int]) -> None:
            split, label, count = item
            rng = np.random.default_rng([seed, split == "val", label])
            _write_class(root / split / f"n{label:08d}", count, size, rng)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(job, jobs))
    return classes * per_class


def _write_class(folder: Path, count: int, size: tuple[int, int], rng: np.random.Generator) -> None:
    width, height = size
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.int16)
        noisy = field + rng.normal(0, 12, field.shape).astype(np.int16)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        image.save(folder / f"{index:05d}.jpg", quality=90)


def time_epochs(batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], epochs: int,
                device: torch.device) -> float:
    """Images per second over ``epochs`` epochs, after one untimed warm-up epoch."""

    def one_epoch() -> int:
        seen = 0
        for images, labels in batches():
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            seen += int(labels.shape[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return seen

    one_epoch()
    started = time.perf_counter()
    seen = sum(one_epoch() for _ in range(epochs))
    return seen / (time.perf_counter() - started)


def imagefolder_rate(
    root: Path, res: int, batch_size: int, workers: int, epochs: int, device: torch.device
) -> float:
    """The torchvision baseline."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(res),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    dataset = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False,
    )
    return time_epochs(lambda: loader, epochs, device)


def pack_rate(root: Path, out: Path, res: int, draft: bool, images: int) -> float:
    """Packing throughput (images per second, train + val)."""
    from hundred.data.pack import pack

    started = time.perf_counter()
    pack("imagefolder:" + str(root), out=out, res=res, draft=draft, quiet=True, force=True)
    return images / (time.perf_counter() - started)


def packed_rate(packed: Path, res: int, batch_size: int, epochs: int, device: torch.device,
                resident: bool | None) -> tuple[float, bool]:
    """hundred's loader over the packed train split; returns (rate, whether it was resident)."""
    from hundred.data.pack import load_packed

    split = load_packed(packed).arrays("train")
    loader = BatchLoader(split, batch_size, augment="rrc-flip", out_size=res, device=device,
                         seed=0, resident=resident)
    return time_epochs(lambda: loader, epochs, device), loader.resident


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--res", type=int, nargs="+", default=[32, 64], help="output resolutions")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--images-per-class", type=int, default=50)
    parser.add_argument("--image-size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for hundred's loader (default: torch's choice)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the tree here (default: temp)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hundred-bench-"))
    root = workdir / "tree"
    try:
        if not (root / "train").is_dir():
            started = time.perf_counter()
            train_images = make_jpeg_tree(root, args.classes, args.images_per_class, (width, height))
            elapsed = time.perf_counter() - started
            print(f"generated {train_images} train JPEGs {width}x{height} in {elapsed:.1f}s")
        total_images = sum(1 for _ in root.rglob("*.jpg"))
        print(f"device {device}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
              f"batch {args.batch_size}, {args.workers} DataLoader workers, {args.epochs} timed epochs\n")

        rows: list[tuple[str, str]] = []
        for res in args.res:
            pack_res = res + res // 8
            packed = workdir / f"packed{pack_res}"
            rate_draft = pack_rate(root, packed, pack_res, True, total_images)
            rate_full = pack_rate(root, workdir / f"packed{pack_res}-nodraft", pack_res, False, total_images)
            baseline = imagefolder_rate(root, res, args.batch_size, args.workers, args.epochs, device)
            resident, was_resident = packed_rate(packed, res, args.batch_size, args.epochs, device, None)
            streamed, _ = packed_rate(packed, res, args.batch_size, args.epochs, device, False)
            mode = "resident" if was_resident else "streamed"
            rows += [
                (f"R={res}: pack {pack_res}px, JPEG draft on", f"{rate_draft:10.0f}"),
                (f"R={res}: pack {pack_res}px, JPEG draft off", f"{rate_full:10.0f}"),
                (f"R={res}: ImageFolder + DataLoader ({args.workers} workers)", f"{baseline:10.0f}"),
                (f"R={res}: BatchLoader rrc-flip ({mode})", f"{resident:10.0f}   x{resident / baseline:.1f}"),
                (f"R={res}: BatchLoader rrc-flip (streamed, memmap)",
                 f"{streamed:10.0f}   x{streamed / baseline:.1f}"),
            ]
        width_name = max(len(name) for name, _ in rows)
        print(f"{'measurement':<{width_name}}   images/s   vs ImageFolder")
        print("-" * (width_name + 30))
        for name, value in rows:
            print(f"{name:<{width_name}} {value}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
