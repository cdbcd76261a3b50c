"""A whole class-incremental run, side by side with the plain PyTorch loop of the seed repos.

Three processes train WA (CE + KD at T=2 weighted by n_old/n_seen) on the same synth100
data, B0-Inc10, ResNet-32, the same batch size, epochs and memory (random exemplars), one
thread each:

* ``plain`` — the loop most seed repositories (PyCIL among them) use: a ``Dataset`` that
  turns uint8 images into PIL images with PIL transforms (pad-4 random crop, flip,
  ToTensor, Normalize), a ``DataLoader`` with worker processes, the training step, then an
  evaluation pass after each task at batch 128;
* ``hundred (system malloc)`` — ``hundred run incremental wa`` with glibc's default
  allocator settings (``HUNDRED_MALLOC=system``), as before freed memory was kept;
* ``hundred`` — the same command as users run it.

For each, the wall time and the user and system CPU time of the process and its children
(the DataLoader workers included), and the minor page faults. Not part of the test suite::

    python benchmarks/incremental_e2e.py                       # ~10 min on 2 CPU cores
    python benchmarks/incremental_e2e.py --epochs 2 --train-per-class 200
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def plain_loop(args: argparse.Namespace) -> dict[str, float]:
    """WA class-incremental training written the way the seed repositories write it."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from hundred.data.sources import open_source
    from hundred.models import create

    torch.manual_seed(args.seed)
    data = open_source("synth100", classes=args.classes, train_per_class=args.train_per_class,
                       val_per_class=args.val_per_class, res=args.res)
    train, val = data.arrays("train"), data.arrays("val")
    order = np.random.RandomState(1993).permutation(args.classes)
    position = np.empty_like(order)
    position[order] = np.arange(args.classes)
    train_labels, val_labels = position[train.labels], position[val.labels]

    class Images(Dataset):
        def __init__(self, images, labels, transform):
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])

    normalize = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train_tf = transforms.Compose([transforms.RandomCrop(args.res, padding=4),
                                   transforms.RandomHorizontalFlip(), *normalize])
    test_tf = transforms.Compose(normalize)
    rng = np.random.default_rng(args.seed)
    memory: list[int] = []
    model, accuracies = None, []
    for task, start in enumerate(range(0, args.classes, args.increment)):
        seen = start + args.increment
        new = np.flatnonzero((train_labels >= start) & (train_labels < seen))
        indices = np.concatenate([new, np.asarray(memory, dtype=np.int64)])
        loader = DataLoader(Images(train.images[indices], train_labels[indices], train_tf),
                            batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.workers, persistent_workers=False)
        old = None
        if model is None:
            model = create("resnet32", seen)
        else:
            old = copy.deepcopy(model).eval().requires_grad_(False)
            model.head = model.head.grown(args.increment)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        epochs = args.first_task_epochs if task == 0 and args.first_task_epochs else args.epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
        for _ in range(epochs):
            model.train()
            for images, labels in loader:
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                if old is not None:
                    with torch.no_grad():
                        old_logits = old(images)
                    kd = -(F.softmax(old_logits / 2, 1) * F.log_softmax(logits[:, :start] / 2, 1)
                           ).sum(1).mean()
                    loss = (1 - start / seen) * loss + start / seen * kd
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.head.weight.clamp_(min=0)
        per_class = args.memory // seen  # random exemplars, a fixed total
        memory = [int(i) for c in range(seen)
                  for i in rng.permutation(np.flatnonzero(train_labels == c))[:per_class]]
        test = np.flatnonzero(val_labels < seen)
        correct = 0
        model.eval()
        with torch.no_grad():
            for images, labels in DataLoader(Images(val.images[test], val_labels[test], test_tf),
                                             batch_size=128, num_workers=args.workers):
                correct += int((model(images).argmax(1) == labels).sum())
        accuracies.append(100 * correct / len(test))
    return {"avg_incremental_accuracy": float(np.mean(accuracies))}


def measured(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``command``; wall time, children's user/system time and minor faults."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return {"wall": wall, "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt,
            "stdout": result.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--increment", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--first-task-epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (plain)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(plain_loop(args)))
        return

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    options = (f"{{classes: {args.classes}, train_per_class: {args.train_per_class}, "
               f"val_per_class: {args.val_per_class}, res: {args.res}}}")
    root = tempfile.mkdtemp(prefix="hundred-e2e-")
    hundred = [sys.executable, "-m", "hundred.cli", "run", "incremental", "wa",
               "--data", "synth100", "--set", f"data.options={options}", "--model", "resnet32",
               "--scenario", f"B0-Inc{args.increment}", "--memory", str(args.memory),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--set", "incremental.selection=random", "--set", "schedule.name=cosine",
               "--seed", str(args.seed), "--root", root, "-q"]
    if args.first_task_epochs:
        hundred += ["--set", f"incremental.first_task_epochs={args.first_task_epochs}"]
    plain = [sys.executable, __file__, "--plain", *sys.argv[1:]]
    rows = {
        "plain PyTorch loop (PIL + DataLoader)": measured(plain, env),
        "hundred (system malloc)": measured(hundred + ["--name", "system"],
                                            {**env, "HUNDRED_MALLOC": "system"}),
        "hundred": measured(hundred + ["--name", "default"], env),
    }
    accuracy = {"plain PyTorch loop (PIL + DataLoader)":
                json.loads(rows["plain PyTorch loop (PIL + DataLoader)"]["stdout"].strip().splitlines()[-1])[
                    "avg_incremental_accuracy"]}
    for name in ("system", "default"):
        summary = json.loads((Path(root) / "incremental" / "wa" / name / "summary.json").read_text())
        accuracy["hundred (system malloc)" if name == "system" else "hundred"] = summary[
            "avg_incremental_accuracy"]
    base = rows["plain PyTorch loop (PIL + DataLoader)"]["wall"]
    print(f"WA, synth100 {args.classes} classes x {args.train_per_class} images at {args.res} px, "
          f"B0-Inc{args.increment}, resnet32, {args.epochs} epoch(s) per task, batch "
          f"{args.batch_size}, memory {args.memory}, one thread each\n")
    print("| loop | wall s | user s | system s | system / wall | minor faults | wall vs plain "
          "| avg inc acc |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall']:.1f} | {row['user']:.1f} | {row['sys']:.1f} | "
              f"{100 * row['sys'] / row['wall']:.1f} % | {row['faults'] / 1e6:.2f} M | "
              f"{row['wall'] / base:.2f}x | {accuracy[name]:.1f} |")


if __name__ == "__main__":
    main()
