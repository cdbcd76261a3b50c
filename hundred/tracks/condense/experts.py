"""Expert trajectories: networks trained on the full real data, their parameters recorded after
initialisation and after every epoch, for trajectory matching (MTT, TESLA) to match.

Cazenavette, Wang, Torralba, Efros & Zhu, "Dataset Distillation by Matching Training
Trajectories" (CVPR 2022, arXiv 2203.11932), Sec. 3.1: an expert trajectory
``theta*_0, theta*_1, ..., theta*_E`` is the sequence of one network's parameters at the end of
each epoch of ordinary training on the real data. The official buffer defaults (their
``buffer.py``): SGD at a constant lr 0.01, no momentum, no weight decay, batch 256, DSA
augmentation (``color_crop_cutout_flip_scale_rotate``), 50 epochs, 100 experts.

``hundred condense experts --data D --model M --experts K --epochs E --out DIR`` writes

* ``DIR/meta.json`` — what the experts were trained on and how (format, data label and
  fingerprint, model name, head and options, image size, mean/std, optimiser, epochs, DSA
  strategy, seed, and each parameter's name and shape in flattening order);
* ``DIR/expert_XXXX.safetensors`` — one file per expert: for each parameter name a tensor
  ``(E + 1, *shape)`` (row 0: the initialisation, row e: after epoch e), written atomically
  (:func:`hundred.io.atomic_open`) only once the expert has finished.

Resuming: rerunning the command with the same settings skips every expert whose file exists and
trains the missing ones; an expert killed mid-training left no file (at most a temporary one,
removed) and is trained again from its start. Expert ``k`` draws from seed ``seed * 100000 + k``,
so a resumed buffer holds the experts an uninterrupted run would have written.

Reading (:class:`ExpertBank`) uses safetensors only (never pickle) and checks the directory
against the run that uses it — the data's fingerprint, model, options, image size,
normalisation, parameter names and shapes, and every file's tensors — and refuses a mismatch
with one :class:`~hundred.errors.HundredError` that lists what differs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.errors import HundredError
from hundred.io import atomic_open, remove_stale_temporaries, write_json
from hundred.models import create

FORMAT = "hundred-experts"
FORMAT_VERSION = 1
META = "meta.json"
SEED_STRIDE = 100_000


def expert_path(directory: Path, index: int) -> Path:
    """The file of expert ``index`` in ``directory``."""
    return Path(directory) / f"expert_{index:04d}.safetensors"


class ParamLayout:
    """How a network's parameters map to one flat vector: names and shapes in
    ``named_parameters()`` order (what expert files store and functional calls take)."""

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> None:
        self.names = list(names)
        self.shapes = [tuple(int(s) for s in shape) for shape in shapes]
        self.sizes = [math.prod(shape) for shape in self.shapes]

    @classmethod
    def of(cls, network: nn.Module) -> "ParamLayout":
        named = list(network.named_parameters())
        return cls([n for n, _ in named], [tuple(p.shape) for _, p in named])

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The parameters (a name -> tensor mapping) as one flat vector."""
        return torch.cat([params[name].reshape(-1) for name in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` shaped as the parameters (differentiable: a graph through ``flat``
        reaches every parameter)."""
        return {name: chunk.view(shape) for name, chunk, shape
                in zip(self.names, flat.split(self.sizes), self.shapes)}

    def record(self) -> list[list[Any]]:
        return [[name, list(shape)] for name, shape in zip(self.names, self.shapes)]


@dataclass(frozen=True)
class ExpertSettings:
    """How experts train (MTT's buffer defaults)."""

    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa_strategy: str | None = "color_crop_cutout_flip_scale_rotate"
    seed: int = 0


def describe(config: RunConfig, dataset: Dataset, size: int, layout: ParamLayout,
             settings: ExpertSettings) -> dict[str, Any]:
    """meta.json: what a buffer of experts was trained on and how."""
    return {
        "format": FORMAT, "version": FORMAT_VERSION,
        "data": {"source": config.data.label, "name": dataset.name,
                 "fingerprint": dataset.info.get("fingerprint"),
                 "classes": dataset.num_classes},
        "model": {"name": config.model.name, "head": config.model.head,
                  "options": json.loads(json.dumps(config.model.options))},
        "image_size": int(size),
        "mean": [float(v) for v in config.data.mean], "std": [float(v) for v in config.data.std],
        "training": asdict(settings),
        "parameters": layout.record(),
    }


# the entries of meta.json that must agree for two runs to fill one buffer
_SAME_BUFFER = ("format", "version", "data", "model", "image_size", "mean", "std", "training",
                "parameters")


def train_experts(config: RunConfig, out: str | Path, count: int, settings: ExpertSettings, *,
                  device: torch.device, dsa: Callable[[torch.Tensor], torch.Tensor] | None,
                  log: Callable[[str], None] = print) -> list[Path]:
    """Train experts ``0 .. count-1`` into ``out`` (skipping finished ones); their files."""
    from hundred.engine.run import image_size, load_data
    from hundred.tracks.condense.synthetic import RealImages

    if count < 1 or settings.epochs < 1:
        raise HundredError("--experts and --epochs must be at least 1")
    if (settings.dsa_strategy is None) != (dsa is None):
        raise HundredError("ExpertSettings.dsa_strategy and the dsa callable disagree")
    out = Path(out)
    dataset = load_data(config)
    size = image_size(config, dataset)
    with torch.random.fork_rng(devices=[]):
        template = create(config.model.name, dataset.num_classes, img_size=size,
                          **config.model.options)
    layout = ParamLayout.of(template)
    meta = describe(config, dataset, size, layout, settings)
    if (out / META).is_file():
        stored = _read_meta(out)
        differs = [key for key in _SAME_BUFFER if stored.get(key) != meta[key]]
        if differs:
            raise HundredError(f"{out} holds experts trained otherwise ({', '.join(differs)} "
                               f"differ); use another --out")
    elif out.exists() and any(out.iterdir()):
        raise HundredError(f"{out} exists and is not an expert directory; use another --out")
    else:
        write_json(out / META, meta)
    for stale in remove_stale_temporaries(out):
        log(f"removed {stale.name} (an expert killed while being written; it is retrained)")
    real = RealImages(dataset.arrays("train"), dataset.num_classes, size, device,
                      config.data.mean, config.data.std)
    images, labels = real.all()
    held_out = None
    if "val" in dataset.splits:
        test = RealImages(dataset.arrays("val"), dataset.num_classes, size, device,
                          config.data.mean, config.data.std, every_class=False)
        held_out = test.all()
    paths = []
    for index in range(count):
        path = expert_path(out, index)
        paths.append(path)
        if path.is_file():
            log(f"expert {index + 1}/{count}: done already ({path.name})")
            continue
        started = time.perf_counter()
        trajectory, top1 = train_expert(config, dataset.num_classes, size, images, labels,
                                        settings, index, device, dsa, held_out)
        metadata = {"format": FORMAT, "expert": str(index), "epochs": str(settings.epochs),
                    "seed": str(settings.seed * SEED_STRIDE + index),
                    "val_top1": "" if top1 is None else f"{top1:.2f}"}
        with atomic_open(path, "wb") as handle:
            handle.write(save_safetensors(trajectory, metadata=metadata))
        where = "" if top1 is None else f", val top-1 {top1:.2f} %"
        log(f"expert {index + 1}/{count}: {settings.epochs} epochs in "
            f"{time.perf_counter() - started:.1f} s{where} -> {path.name}")
    return paths


def train_expert(config: RunConfig, num_classes: int, size: int, images: torch.Tensor,
                 labels: torch.Tensor, settings: ExpertSettings, index: int,
                 device: torch.device, dsa: Callable[[torch.Tensor], torch.Tensor] | None,
                 held_out: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[dict[str, torch.Tensor], float | None]:
    """One expert's trajectory ``{name: (E + 1, *shape)}`` (CPU, float32) and its held-out
    top-1 (None without held-out data); seeded by its index."""
    from hundred.tracks.condense.evaluation import accuracy, train_network

    torch.manual_seed(settings.seed * SEED_STRIDE + index)
    network = create(config.model.name, num_classes, img_size=size,
                     **config.model.options).to(device)
    snapshots: list[dict[str, torch.Tensor]] = []

    def snapshot(_epoch: int, model: nn.Module) -> None:
        snapshots.append({name: p.detach().float().cpu().clone()
                          for name, p in model.named_parameters()})

    snapshot(-1, network)
    train_network(network, images, labels, epochs=settings.epochs, lr=settings.lr,
                  batch_size=settings.batch_size, momentum=settings.momentum,
                  weight_decay=settings.weight_decay, decay_at_half=False, augment=dsa,
                  on_epoch_end=snapshot)
    trajectory = {name: torch.stack([s[name] for s in snapshots]).contiguous()
                  for name in snapshots[0]}
    top1 = None if held_out is None else accuracy(network, *held_out)
    return trajectory, top1


def _read_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HundredError(f"{directory / META} is not readable JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HundredError(f"{directory / META} is not a {FORMAT} description")
    return meta


class ExpertBank:
    """A checked directory of expert trajectories, read lazily: :meth:`segment` reads only the
    two epochs it needs from the (memory-mapped) safetensors file."""

    def __init__(self, directory: Path, meta: dict[str, Any], layout: ParamLayout,
                 files: list[Path]) -> None:
        self.directory = directory
        self.meta = meta
        self.layout = layout
        self.files = files
        self.epochs = int(meta["training"]["epochs"])

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def open(cls, directory: str | Path, config: RunConfig, dataset: Dataset, size: int,
             layout: ParamLayout) -> "ExpertBank":
        """The experts in ``directory``, checked against the run (one error listing every
        mismatch)."""
        directory = Path(directory)
        hint = ("train them with: hundred condense experts --data DATA --model MODEL "
                f"--out {directory}")
        if not directory.is_dir():
            raise HundredError(f"no expert directory {directory}; {hint}")
        if not (directory / META).is_file():
            raise HundredError(f"{directory} has no {META}: not an expert directory; {hint}")
        meta = _read_meta(directory)
        problems = []
        if meta.get("version") != FORMAT_VERSION:
            problems.append(f"format version {meta.get('version')} (expected {FORMAT_VERSION})")
        data = meta.get("data") or {}
        fingerprint = dataset.info.get("fingerprint")
        if fingerprint is not None and data.get("fingerprint") != fingerprint:
            problems.append(f"data: trained on {data.get('source')} (fingerprint "
                            f"{data.get('fingerprint')}), this run uses {config.data.label} "
                            f"({fingerprint})")
        model = meta.get("model") or {}
        options = json.loads(json.dumps(config.model.options))
        if model.get("name") != config.model.name:
            problems.append(f"model {model.get('name')} (this run: {config.model.name})")
        if model.get("options") != options:
            problems.append(f"model.options {model.get('options')} (this run: {options})")
        if model.get("head", config.model.head) != config.model.head:
            problems.append(f"model.head {model.get('head')} (this run: {config.model.head})")
        if meta.get("image_size") != size:
            problems.append(f"image size {meta.get('image_size')} (this run: {size})")
        for key in ("mean", "std"):
            ours = [float(v) for v in getattr(config.data, key)]
            theirs = meta.get(key) or []
            if len(theirs) != 3 or any(abs(a - b) > 1e-6 for a, b in zip(theirs, ours)):
                problems.append(f"data.{key} {theirs} (this run: {ours})")
        if meta.get("parameters") != layout.record():
            problems.append("the network's parameter names or shapes")
        epochs = (meta.get("training") or {}).get("epochs")
        if not isinstance(epochs, int) or epochs < 1:
            problems.append(f"training.epochs {epochs!r}")
        if problems:
            raise HundredError(f"the experts in {directory} do not fit this run: "
                               + "; ".join(problems))
        files = sorted(directory.glob("expert_*.safetensors"))
        if not files:
            raise HundredError(f"{directory} holds no finished expert; {hint}")
        for path in files:
            _check_file(path, layout, epochs)
        return cls(directory, meta, layout, files)

    def segment(self, expert: int, start: int, target: int, device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``expert``'s flat parameters after epochs ``start`` and ``target``."""
        with safe_open(str(self.files[expert]), framework="pt", device="cpu") as handle:
            rows = [[handle.get_slice(name)[epoch].reshape(-1) for name in self.layout.names]
                    for epoch in (start, target)]
        first, second = (torch.cat(row).to(device=device, dtype=dtype) for row in rows)
        return first, second


def _check_file(path: Path, layout: ParamLayout, epochs: int) -> None:
    """A readable safetensors expert file holding exactly the layout's parameters, each
    ``(epochs + 1, *shape)`` float32."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = set(handle.keys())
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in keys}
            dtypes = {name: handle.get_slice(name).get_dtype() for name in keys}
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types
        raise HundredError(f"{path} is not a readable safetensors file ({error})") from None
    if metadata.get("format") != FORMAT:
        raise HundredError(f"{path} is not a {FORMAT} file")
    if keys != set(layout.names):
        raise HundredError(f"{path} holds other parameters than the network "
                           f"({sorted(keys ^ set(layout.names))[:4]} ...)")
    for name, shape in zip(layout.names, layout.shapes):
        if shapes[name] != (epochs + 1, *shape) or dtypes[name] != "F32":
            raise HundredError(f"{path}: {name} is {dtypes[name]} {list(shapes[name])}, "
                               f"expected F32 {[epochs + 1, *shape]}")


__all__ = ["ExpertBank", "ExpertSettings", "FORMAT", "ParamLayout", "describe", "expert_path",
           "train_expert", "train_experts"]
