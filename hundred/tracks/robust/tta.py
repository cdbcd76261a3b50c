"""Test-time adaptation (TTA) on a stream of corrupted test domains: the robust track's
second scenario (methods whose class says ``scenario = "tta"``).

A finished classifier (``robust.init``, trained on the run's data and classes: its head is
needed) is adapted *online*, one pass, without labels, on the val split seen through a
sequence of corruption domains (:mod:`.corruptions`, ``robust.tta``): every test batch is
first predicted, and those predictions are scored, then used by the method to adapt (as
TENT's ``forward_and_adapt`` does: the prediction comes from the forward pass the update is
computed on). Nothing is trained beforehand and nothing of the val labels reaches a method.

Stream schedules (:func:`stream_schedule`, a pure function of ``robust.tta`` and the number
of val images): ``recurring`` shows the domain sequence (each corruption at each severity,
corruption-major, in the benchmark's order) ``cycles`` times; ``gradual`` shows, per
corruption, severities 1-2-3-4-5-4-3-2-1. Each visit of a domain shows all its val images
(or ``images_per_domain`` of them, the same rows each time) in a fresh order drawn from
``(robust.tta.seed, cycle, position)``, in batches of ``robust.tta.batch_size`` that never
mix two domains.

Summary: ``robust_top1`` is the top-1 accuracy (%) over the whole stream, the primary metric
of the robust track (top-1 under the run's shift, here the stream); ``val_top1`` the source
model's clean val top-1 (eval mode, running statistics); ``threat_model`` names the stream
(``corruptions: recurring, 15 types sev 5, 10 cycles``) and ``eval_attack`` the TTA method.
``tta_domain_top1`` holds the accuracy of every visit (one row per cycle, one column per
position of the cycle's domain sequence ``tta_domains``), ``tta_cycle_top1`` the accuracy of
each cycle, and ``tta_stream.png`` draws the visits along the stream (collapse shows as a
falling curve, stability as a flat one). A resumed run replays the whole stream: an online
pass has no checkpoint between batches.

Method hooks (:class:`TestTimeAdaptation`): ``prepare(source, ctx)`` once (EATA: the Fisher
information of the source), ``make_learner(model, ctx)`` a :class:`Learner` that adapts one
model, ``start`` (default: one learner on a copy of the source), ``adapt(images)`` (default:
the learner's step), ``record()`` facts for the summary. The shared pieces of TENT (norm
layers on batch statistics, only their affine parameters trained; the entropy; the
optimiser) live here, since TENT, EATA and ReservoirTTA's specialists all use them.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Mapping

import numpy as np
import torch
from torch import nn

from hundred.config import RunConfig
from hundred.errors import HundredError
from hundred.space import Choice, Dimension
from hundred.tracks.robust.config import TTAConfig
from hundred.tracks.robust.corruptions import Domain, corrupt_images, load_corrupted_val
from hundred.tracks.robust.method import RobustMethod

if TYPE_CHECKING:
    from hundred.data import Dataset
    from hundred.data.augment import Augment

GRADUAL_LEVELS = (1, 2, 3, 4, 5, 4, 3, 2, 1)  # severities per corruption (CoTTA's gradual)
FIGURE = "tta_stream.png"


# ------------------------------------------------------------------------------ stream


def domain_sequence(tta: TTAConfig) -> list[Domain]:
    """The domains of one cycle, in order."""
    if tta.schedule == "gradual":
        return [Domain(c, s) for c in tta.corruptions for s in GRADUAL_LEVELS]
    return [Domain(c, s) for c in tta.corruptions for s in tta.severities]


@dataclass(frozen=True)
class Visit:
    """One visit of a domain: ``rows`` of that domain's images, in the order shown."""

    cycle: int
    position: int
    domain: Domain
    rows: np.ndarray = field(repr=False)


def stream_schedule(tta: TTAConfig, images: int) -> list[Visit]:
    """Every visit of the stream over a val split of ``images`` images: a pure function of
    ``tta`` (sequence, cycles, images_per_domain, seed) and ``images``."""
    rows = np.arange(images)
    if tta.images_per_domain is not None and tta.images_per_domain < images:
        rng = np.random.default_rng([tta.seed, 0])
        rows = np.sort(rng.choice(images, tta.images_per_domain, replace=False))
    sequence = domain_sequence(tta)
    return [Visit(cycle, position, domain,
                  np.random.default_rng([tta.seed, 1, cycle, position]).permutation(rows))
            for cycle in range(tta.cycles) for position, domain in enumerate(sequence)]


@dataclass
class Stream:
    """The images of every domain of the stream (uint8 ``N, H, W, 3``, row ``i`` made from
    clean val row ``i``), the labels, the visits and where the images came from."""

    images: dict[Domain, np.ndarray]
    labels: np.ndarray
    visits: list[Visit]
    source: str


def build_stream(config: RunConfig, dataset: Dataset) -> Stream:
    """The stream of ``robust.tta`` over ``dataset``'s val split: from the corrupted pack
    ``robust.tta.pack`` (checked to be made from this very val split and to hold every domain
    needed), else corrupted here with ``robust.tta.seed``. Raises HundredError on bad input
    (called before the run directory exists)."""
    tta = config.robust.tta
    needed = list(dict.fromkeys(domain_sequence(tta)))
    val = dataset.arrays("val")
    labels = np.asarray(val.labels)
    if tta.pack is None:
        clean = np.asarray(val.images)
        images = {d: corrupt_images(clean, d, tta.seed) for d in needed}
        source = f"corrupted on the fly (seed {tta.seed})"
    else:
        record, packed, packed_labels, domains = load_corrupted_val(tta.pack)
        if record["source"]["fingerprint"] != dataset.info.get("fingerprint"):
            raise HundredError(f"robust.tta.pack {tta.pack} was made from "
                               f"{record['source']['name']} ({record['source']['path']}), not "
                               f"from this run's data {dataset.name}: corrupt the run's own pack")
        ids = {Domain(d["corruption"], d["severity"]): d["id"] for d in record["domains"]}
        missing = [d.name for d in needed if d not in ids]
        if missing:
            raise HundredError(f"robust.tta.pack {tta.pack} lacks the domains "
                               f"{', '.join(missing)} (it holds "
                               f"{', '.join(k.name for k in ids)})")
        images = {}
        for domain in needed:
            where = np.flatnonzero(domains == ids[domain])
            if not np.array_equal(packed_labels[where], labels):
                raise HundredError(f"robust.tta.pack {tta.pack}: the labels of {domain.name} "
                                   "differ from the run's val split")
            contiguous = len(where) and where[-1] - where[0] + 1 == len(where)
            # a memory-mapped view of the domain's block (hundred data corrupt writes
            # domains as contiguous blocks), not a copy
            images[domain] = (packed[where[0]:where[-1] + 1] if contiguous
                              else np.asarray(packed[where]))
        source = f"pack {tta.pack} (seed {record['seed']})"
    return Stream(images, labels, stream_schedule(tta, len(labels)), source)


# ----------------------------------------------------------------- the shared pieces


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def configure_norm_adaptation(model: nn.Module) -> list[nn.Parameter]:
    """TENT's model setup (Wang et al., ICLR 2021, Sec. 3): train mode, every parameter
    frozen except the affine scale and shift of the normalisation layers, and batch-norm
    layers normalising with the test batch's statistics (their running estimates dropped).
    Returns the trainable parameters (in module order)."""
    model.train()
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
        if isinstance(module, NORM_LAYERS):
            for param in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if isinstance(param, nn.Parameter):
                    param.requires_grad_(True)
                    params.append(param)
    if not params:
        raise HundredError("test-time adaptation of normalisation layers: this model has no "
                           "normalisation layer with affine parameters")
    return params


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the softmax prediction of each sample, ``-sum p log p`` (nats)."""
    log_p = logits.float().log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def make_optimizer(params: list[nn.Parameter], tta: TTAConfig) -> torch.optim.Optimizer:
    """The online optimiser of ``robust.tta``: SGD (momentum 0.9) or Adam (0.9, 0.999)."""
    lr = tta.learning_rate()
    if tta.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


@dataclass
class TTAContext:
    """What a TTA method may use besides the source model: the run's config, the device,
    the data (the clean *train* split, e.g. for EATA's Fisher; never the val labels) and the
    pixel pipeline that turns uint8 images into the model's normalised input."""

    config: RunConfig
    device: torch.device
    dataset: Dataset
    normalise: Augment

    def clean_train_batches(self, count: int, batch_size: int, seed_offset: int = 0
                            ) -> Iterator[torch.Tensor]:
        """Normalised batches of a fixed uniform sample of ``count`` clean train images
        (drawn from the run seed), without labels."""
        train = self.dataset.arrays("train")
        rng = np.random.default_rng([self.config.seed, 2, seed_offset])
        rows = np.sort(rng.choice(len(train.labels), min(count, len(train.labels)),
                                  replace=False))
        for start in range(0, len(rows), batch_size):
            chunk = np.asarray(train.images[rows[start:start + batch_size]])
            yield self.normalise(torch.from_numpy(chunk).to(self.device))


class Learner(ABC):
    """Adapts one model online: :meth:`step` predicts a normalised test batch (logits) and
    updates the model from it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @abstractmethod
    def step(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of ``images``; the model adapted from them (or not, for the source)."""

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The model's logits in its current state, without adapting."""
        return self.model(images)


class TestTimeAdaptation(RobustMethod):
    """Base class of the test-time adaptation methods: adapt the finished ``robust.init``
    model on the test stream (:func:`run`), no training."""

    scenario: ClassVar[Literal["adversarial", "tta"]] = "tta"
    needs_init: ClassVar[bool] = True
    # nothing is trained: tuning searches the online optimiser, not the shared training grid
    shared_grid: ClassVar[bool] = False
    search_space: ClassVar[Mapping[str, Dimension]] = {
        "robust.tta.optimizer": Choice(("sgd", "adam")),
        "robust.tta.lr": Choice((1e-4, 2.5e-4, 1e-3))}
    learner: Learner | None = None

    def loss(self, model: nn.Module, images: Any, labels: torch.Tensor) -> torch.Tensor:
        raise HundredError(f"robust/{self.name} adapts at test time; it has no training loss")

    def prepare(self, source: nn.Module, ctx: TTAContext) -> None:
        """Once before the stream, with the source model (eval mode; do not change it)."""

    def make_learner(self, model: nn.Module, ctx: TTAContext) -> Learner:
        """A :class:`Learner` adapting ``model`` (a copy of the source, or of a specialist).
        Needed by the default :meth:`start` / :meth:`adapt` (one learner for the whole
        stream); a method that overrides both (reservoir_tta) need not provide it."""
        raise HundredError(f"robust/{self.name} adapts with one learner but defines no "
                           "make_learner(); override start() and adapt() otherwise")

    def start(self, source: nn.Module, ctx: TTAContext) -> None:
        """Before the stream: :meth:`prepare`, then one learner on a copy of the source."""
        self.prepare(source, ctx)
        self.learner = self.make_learner(copy.deepcopy(source), ctx)

    def adapt(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of one normalised test batch, the model adapted on it (online)."""
        assert self.learner is not None, "start() first"
        return self.learner.step(images)

    def label(self) -> str:
        """The method in words, for ``eval_attack``."""
        return self.name

    def record(self) -> dict[str, Any]:
        """Facts for the summary after the stream (JSON-able)."""
        return {}


# -------------------------------------------------------------------------- the run


def run(config: RunConfig, method: RobustMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Adapt the ``robust.init`` model with ``method`` along the ``robust.tta`` stream of
    the val split; returns the summary. The init run, the stream (pack or on-the-fly
    corruption) and the settings are checked before the run directory is created."""
    from hundred.data.augment import build_augment
    from hundred.engine.init import init_model_weights
    from hundred.engine.run import finish_run, image_size, load_data, running
    from hundred.models import create

    if not isinstance(method, TestTimeAdaptation):
        raise HundredError(f"robust/{config.method} says scenario 'tta' but does not subclass "
                           "TestTimeAdaptation")
    if config.robust.init is None:
        raise HundredError(f"robust/{config.method} adapts a finished model at test time: give "
                           "--init RUN_DIR (a run of the same model on the same data, e.g. "
                           "robust/erm or classify/erm)")
    dataset = load_data(config)
    size = image_size(config, dataset)
    weights, whole_model = init_model_weights(Path(config.robust.init), config, size,
                                              dataset.num_classes, dataset.name)
    if not whole_model:
        raise HundredError(f"init {config.robust.init} was not trained on {dataset.name} with "
                           f"these {dataset.num_classes} classes: test-time adaptation needs "
                           "the source classifier itself (its head)")
    stream = build_stream(config, dataset)
    tta = config.robust.tta
    with running(config, resume_dir) as ctx:
        if ctx.dist.enabled:
            raise HundredError("test-time adaptation is one online pass: run it without "
                               "torchrun")
        model = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=size, **config.model.options)
        model.load_state_dict(weights, strict=True)
        model.to(ctx.device).eval()
        normalise = build_augment("none", size, config.data.mean, config.data.std, train=False)
        clean = _clean_top1(ctx, model, dataset)
        tta_ctx = TTAContext(config, ctx.device, dataset, normalise)
        method.start(model, tta_ctx)
        result = adapt_stream(method, stream, tta, normalise, ctx.device, ctx.console,
                              quiet=config.quiet)
        _draw(ctx.run_dir / FIGURE, result, method.label(), tta.label())
        summary = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            "init": config.robust.init, "init_weights": "model",
            "robust_top1": result["top1"], "val_top1": clean,
            "threat_model": tta.label(), "eval_attack": method.label(),
            "tta_stream": stream.source, "tta_images": result["images"],
            "tta_batches": result["batches"],
            "tta_optimizer": {"name": tta.optimizer, "lr": tta.learning_rate(),
                              "steps": tta.steps, "batch_size": tta.batch_size},
            "tta_domains": [d.name for d in domain_sequence(tta)],
            "tta_domain_top1": result["domain_top1"],
            "tta_cycle_top1": result["cycle_top1"],
            "tta_first_cycle_top1": result["cycle_top1"][0],
            "tta_last_cycle_top1": result["cycle_top1"][-1],
            "tta_seconds": result["seconds"],
            **{f"tta_{key}": value for key, value in method.record().items()},
        }
        return finish_run(ctx, summary, title=f"robust/{config.method} on {dataset.name}: "
                          f"{tta.label()}", dataset=dataset)


@torch.no_grad()
def _clean_top1(ctx: Any, model: nn.Module, dataset: Dataset) -> float:
    """The source model's top-1 (%) on the clean val split (eval mode)."""
    from hundred.engine.metrics import evaluate
    from hundred.engine.run import eval_loader

    return evaluate(model, eval_loader(ctx, dataset))["top1"]


def adapt_stream(method: TestTimeAdaptation, stream: Stream, tta: TTAConfig,
                 normalise: Augment, device: torch.device, console: Any = None,
                 quiet: bool = True) -> dict[str, Any]:
    """Run ``method`` along ``stream``: per batch, predict and adapt; score the predictions.
    Returns the stream's top-1 (%), a cycle x position matrix of visit top-1 and the
    per-cycle top-1."""
    import time

    started = time.perf_counter()
    positions = len(domain_sequence(tta))
    hits = np.zeros((tta.cycles, positions), dtype=np.int64)
    seen = np.zeros((tta.cycles, positions), dtype=np.int64)
    batches = 0
    labels_all = torch.from_numpy(stream.labels.astype(np.int64))
    for visit in stream.visits:
        images = stream.images[visit.domain]
        for start in range(0, len(visit.rows), tta.batch_size):
            rows = visit.rows[start:start + tta.batch_size]
            batch = normalise(torch.from_numpy(np.ascontiguousarray(images[rows])).to(device))
            logits = method.adapt(batch)
            labels = labels_all[rows].to(device)
            hits[visit.cycle, visit.position] += int((logits.argmax(1) == labels).sum())
            seen[visit.cycle, visit.position] += len(rows)
            batches += 1
        if console is not None and not quiet and visit.position == positions - 1:
            top1 = 100.0 * hits[visit.cycle].sum() / seen[visit.cycle].sum()
            console.print(f"cycle {visit.cycle + 1}/{tta.cycles}: top-1 {top1:.2f}",
                          highlight=False)
    return {"top1": 100.0 * float(hits.sum()) / float(seen.sum()),
            "domain_top1": (100.0 * hits / seen).round(4).tolist(),
            "cycle_top1": (100.0 * hits.sum(1) / seen.sum(1)).round(4).tolist(),
            "images": int(seen.sum()), "batches": batches,
            "seconds": round(time.perf_counter() - started, 2)}


def _draw(path: Path, result: dict[str, Any], method: str, stream: str) -> None:
    """Top-1 of every visit along the stream, cycles marked, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hundred.io import atomic_open

    matrix = np.asarray(result["domain_top1"], dtype=float)
    cycles, positions = matrix.shape
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(np.arange(matrix.size) + 1, matrix.ravel(), lw=1, label="per visit")
    centres = np.arange(cycles) * positions + (positions + 1) / 2
    ax.plot(centres, result["cycle_top1"], "o-", lw=2, label="cycle mean")
    for cycle in range(1, cycles):
        ax.axvline(cycle * positions + 0.5, color="0.8", lw=0.8)
    ax.set_xlabel("domain visit along the stream")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{method}: {stream}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
