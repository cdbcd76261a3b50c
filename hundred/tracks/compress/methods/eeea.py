"""EEEA-Net: multi-objective evolutionary search of DARTS-like cells with an early-exit
population initialisation, then training of the chosen architecture.

Termritthikun, Jamtsho, Ieamsaard, Muneesawang & Lee, "EEEA-Net: An Early Exit Evolutionary
Neural Architecture Search", Engineering Applications of Artificial Intelligence 104 (2021)
(official code github.com/chakkritte/EEEA-Net, read only, nothing copied):

* search space: DARTS-like normal and reduction cells, seven operations (max/avg pool 3x3,
  skip, sep conv 3x3/5x5, dil conv 3x3/5x5), :mod:`hundred.models.cells`; the
  genome is a vector of integers (per node: two inputs and two operations);
* NSGA-II (Deb et al., 2002; here pymoo's ``NSGA2`` with integer SBX crossover and
  polynomial mutation, rounded) minimising two objectives: the validation error after a short
  proxy training (1 epoch in the paper) and the parameter count (millions, "MB" in the paper);
* Early Exit Population Initialisation (EE-PI, Sec. 3): every random architecture of the
  initial population whose parameter count is ``>= beta`` is discarded and redrawn *before*
  it is trained, so none of them costs a proxy training (``beta = 5.0`` in the paper); with
  ``early_exit_scope=all`` offspring ``>= beta`` are not trained either (they get the worst
  error, 1.0), an extension the paper does not use;
* paper defaults: population 40, 30 generations, 1 proxy epoch, SGD lr 0.025, momentum 0.9,
  weight decay 5e-4, batch 128, 4 nodes per cell, 8 layers; the defaults here are scaled
  down for a CPU (each hyperparameter's description gives the paper's value).

Proxy training is a small inner loop (SGD, cosine learning rate, gradient clipping at 5 as
the official code) on one class-balanced half of the train split, the error measured on the
other half (the run's val split is never seen by the search). It is not the engine's
``fit``: each of the up to ``population x generations`` candidates would otherwise get a run
directory, checkpoints and a metrics log; the data still comes from the engine's
:class:`~hundred.data.loader.BatchLoader`.

In the run: the search happens in :meth:`EEEA.prepare` (before the run directory exists, so a
search that cannot start writes nothing). The chosen architecture is the most accurate member
of the final Pareto front (lowest proxy error, then fewest parameters); the run's ``model``
becomes ``cellnet`` with that genome, and the scenario trains it from scratch for
``train.epochs`` with the shared trainer and exports it as a plain model (``--init RUN_DIR``
and ``hundred attack RUN_DIR`` build it from ``summary.export.model``). The run directory
gets ``eeea_candidates.jsonl`` (every drawn candidate: genome, params, error, trained or
not) and ``eeea_pareto.png``; the summary's ``search`` entry holds the front, the chosen
genome and the search time. A resumed run repeats the (seeded) search before it resumes.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from hundred.config import ModelConfig, RunConfig
from hundred.data import Dataset
from hundred.engine.cost import count_parameters
from hundred.engine.losses import cross_entropy
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.registry import register
from hundred.models.cells import check_genome, describe, genome_bounds, random_genome
from hundred.tracks.compress.method import CompressMethod

CANDIDATES_FILE = "eeea_candidates.jsonl"
PLOT_FILE = "eeea_pareto.png"


class EEEAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    population: int = Field(8, ge=2, description="NSGA-II population size (paper: 40)")
    generations: int = Field(3, ge=1, description="NSGA-II generations, the initial population "
                             "included (paper: 30)")
    beta: float = Field(0.038, gt=0, description="early-exit threshold: initial architectures "
                        "with at least this many million parameters are redrawn untrained "
                        "(paper: 5.0 'MB' for its CIFAR space; here about the median of random "
                        "architectures of the default CPU space)")
    early_exit: bool = Field(True, description="EE-PI on; False draws the initial population "
                             "without the threshold (the paper's 'normal search')")
    early_exit_scope: Literal["init", "all"] = Field(
        "init", description="init: the threshold applies to the initial population (paper); "
        "all: offspring at or above beta are not trained either (error set to 1.0)")
    max_draws: int = Field(1000, ge=1, description="random draws allowed per initial "
                           "architecture before a too-small beta is refused")
    proxy_epochs: int = Field(1, ge=1, description="proxy training epochs per candidate "
                              "(paper: 1)")
    proxy_steps: Optional[int] = Field(None, ge=1, description="cap on proxy steps per epoch "
                                       "(None: the whole half of the train split)")
    proxy_batch: int = Field(64, ge=1, description="proxy batch size (paper: 128)")
    proxy_lr: float = Field(0.025, gt=0, description="proxy SGD learning rate, cosine-decayed "
                            "(paper: 0.025)")
    proxy_momentum: float = Field(0.9, ge=0, lt=1, description="proxy SGD momentum (0.9)")
    proxy_weight_decay: float = Field(5e-4, ge=0, description="proxy weight decay (5e-4)")
    channels: int = Field(8, ge=2, description="initial channels of the cell network "
                          "(official search: 16)")
    layers: int = Field(5, ge=1, description="cells in the network, reductions at 1/3 and 2/3 "
                        "(paper: 8)")
    nodes: int = Field(3, ge=1, description="intermediate nodes per cell (paper: 4)")


def nondominated(points: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``points`` (to minimise, column-wise) no other row dominates."""
    keep = []
    for i, p in enumerate(points):
        dominated = np.any(np.all(points <= p, axis=1) & np.any(points < p, axis=1))
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


def build(genome: list[int], params: EEEAParams, num_classes: int, size: int,
          head: str = "linear") -> Classifier:
    """The classifier ``genome`` describes (what the run exports)."""
    return create("cellnet", num_classes, head=head, img_size=size,
                  **model_options(genome, params))


def model_options(genome: list[int], params: EEEAParams) -> dict[str, Any]:
    return {"genome": list(map(int, genome)), "channels": params.channels,
            "layers": params.layers, "nodes": params.nodes}


@register("compress", "eeea")
class EEEA(CompressMethod):
    """EEEA-Net (Termritthikun et al., EAAI 2021): NSGA-II over cells with early exit."""

    Params = EEEAParams

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.records: list[dict[str, Any]] = []
        self.search: dict[str, Any] | None = None

    # -- the search -------------------------------------------------------------------------
    def param_millions(self, genome: list[int]) -> float:
        """Parameters (millions) of the classifier ``genome`` builds, counted on the meta
        device (nothing allocated)."""
        with torch.device("meta"):
            model = build(genome, self.params, self._classes, self._size, self._head)
        return count_parameters(model) / 1e6

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        """Run the search, then make the run's model the chosen architecture."""
        self.run_search(config, dataset, image_size)
        assert self.search is not None
        config.model = ModelConfig(name="cellnet", head=config.model.head,
                                   options=model_options(self.search["chosen"]["genome"],
                                                         self.params))

    def run_search(self, config: RunConfig, dataset: Dataset, size: int) -> dict[str, Any]:
        """NSGA-II with EE-PI on ``dataset``'s train split; fills ``records`` and ``search``."""
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.core.sampling import Sampling
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.optimize import minimize

        from hundred.engine.trainer import resolve_device
        from hundred.tracks.compress.methods.tas import split_halves

        p = self.params
        self._classes, self._size, self._head = dataset.num_classes, size, config.model.head
        self._device = resolve_device(config.train.device)
        train = dataset.arrays("train")
        self._halves = split_halves(train.labels, config.seed)
        self._train = train
        self.records = []
        rng = np.random.default_rng(config.seed)
        method = self
        low, high = genome_bounds(p.nodes)
        generation = [0]

        class EarlyExitSampling(Sampling):
            def _do(self, problem: Any, n_samples: int, **kwargs: Any) -> np.ndarray:
                return np.array([method.draw_initial(rng) for _ in range(n_samples)])

        class CellProblem(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=len(high), n_obj=2, xl=low, xu=high, vtype=int)

            def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any,
                          **kwargs: Any) -> None:
                rows = [method.evaluate([int(v) for v in np.round(row)], generation[0])
                        for row in x]
                generation[0] += 1
                out["F"] = np.array(rows, dtype=float)

        start = time.perf_counter()
        torch_state = torch.get_rng_state()
        torch.manual_seed(config.seed)
        algorithm = NSGA2(pop_size=p.population, sampling=EarlyExitSampling(),
                          crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                          mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
                          eliminate_duplicates=True)
        result = minimize(CellProblem(), algorithm, ("n_gen", p.generations), seed=config.seed,
                          verbose=False)
        torch.set_rng_state(torch_state)
        seconds = time.perf_counter() - start
        population = [[int(v) for v in np.round(row)] for row in result.pop.get("X")]
        scores = np.asarray(result.pop.get("F"), dtype=float)
        front_rows = nondominated(scores)
        front = sorted(({"genome": population[i], "error": float(scores[i, 0]),
                         "params": int(round(scores[i, 1] * 1e6))} for i in front_rows),
                       key=lambda e: (e["params"], e["error"]))
        unique = {json.dumps(e["genome"]): e for e in front}
        front = list(unique.values())
        chosen = min(front, key=lambda e: (e["error"], e["params"]))
        trained = [r for r in self.records if r["trained"]]
        self.search = {
            "search_seconds": round(seconds, 2), "population": p.population,
            "generations": p.generations, "beta_m": p.beta, "early_exit": p.early_exit,
            "early_exit_scope": p.early_exit_scope, "proxy_epochs": p.proxy_epochs,
            "proxy_steps": p.proxy_steps, "drawn": len(self.records),
            "trained": len(trained),
            "exited": sum(1 for r in self.records if r["exited"]),
            "proxy_seconds": round(sum(r["seconds"] for r in trained), 2),
            "front": front,
            "chosen": {**chosen, "rule": "lowest proxy error on the final front, then fewest "
                       "parameters", "cells": describe(chosen["genome"], p.nodes)},
            "candidates_file": CANDIDATES_FILE, "plot": PLOT_FILE}
        return self.search

    def draw_initial(self, rng: np.random.Generator) -> list[int]:
        """One architecture of the initial population: with early exit, redrawn (and recorded
        as exited, untrained) while its parameter count is at least ``beta``."""
        p = self.params
        for _ in range(p.max_draws):
            genome = random_genome(p.nodes, rng)
            millions = self.param_millions(genome)
            if not p.early_exit or millions < p.beta:
                return genome
            self.records.append({"generation": 0, "genome": genome,
                                 "params": int(round(millions * 1e6)), "error": None,
                                 "trained": False, "exited": True, "seconds": 0.0})
        raise HundredError(
            f"compress/eeea: no random architecture below beta={p.beta}M parameters in "
            f"{p.max_draws} draws (channels={p.channels}, layers={p.layers}, nodes={p.nodes}); "
            "raise method_params.beta or shrink the space")

    def evaluate(self, genome: list[int], generation: int) -> tuple[float, float]:
        """The two objectives of ``genome`` (proxy error, million parameters), recorded."""
        p = self.params
        genome = check_genome(genome, p.nodes)
        millions = self.param_millions(genome)
        record = {"generation": generation, "genome": genome,
                  "params": int(round(millions * 1e6)), "error": 1.0, "trained": False,
                  "exited": False, "seconds": 0.0}
        if p.early_exit and p.early_exit_scope == "all" and millions >= p.beta:
            record["exited"] = True
        else:
            start = time.perf_counter()
            record["error"] = self.proxy_error(genome)
            record["trained"] = True
            record["seconds"] = round(time.perf_counter() - start, 3)
        self.records.append(record)
        return float(record["error"]), millions

    def proxy_error(self, genome: list[int]) -> float:
        """Train ``genome``'s network for ``proxy_epochs`` on the first half of the train split
        (SGD, cosine schedule, gradient norm clipped at 5) and return its top-1 error on the
        second half."""
        from hundred.data.loader import BatchLoader

        p = self.params
        model = build(genome, p, self._classes, self._size, self._head).to(self._device)
        first, second = self._halves
        loader = BatchLoader(self._train, p.proxy_batch, indices=first, shuffle=True,
                             seed=self.config.seed, out_size=self._size, device=self._device)
        steps_per_epoch = math.ceil(len(first) / p.proxy_batch)
        if p.proxy_steps is not None:
            steps_per_epoch = min(steps_per_epoch, p.proxy_steps)
        total = steps_per_epoch * p.proxy_epochs
        optimiser = torch.optim.SGD(model.parameters(), lr=p.proxy_lr,
                                    momentum=p.proxy_momentum,
                                    weight_decay=p.proxy_weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, total)
        model.train()
        for epoch in range(p.proxy_epochs):
            loader.set_epoch(epoch)
            for step, (images, labels) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                loss = cross_entropy(model(images), labels)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimiser.step()
                schedule.step()
        held_out = BatchLoader(self._train, max(p.proxy_batch, 256), indices=second,
                               shuffle=False, train=False, out_size=self._size,
                               device=self._device)
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for images, labels in held_out:
                correct += int((model(images).argmax(1) == labels).sum())
                seen += len(labels)
        return 1.0 - correct / max(seen, 1)

    # -- the run ----------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, images: Any, labels: torch.Tensor) -> torch.Tensor:
        """The chosen architecture trains with plain cross-entropy."""
        return cross_entropy(model(images), labels,
                             label_smoothing=self.config.train.label_smoothing)

    def train_loader(self, ctx: Any, dataset: Dataset) -> Any:
        """Write the search's records and plot into the new run directory, then the usual
        batches."""
        if ctx.dist.is_main and self.search is not None:
            write_records(ctx.run_dir / CANDIDATES_FILE, self.records)
            plot_front(ctx.run_dir / PLOT_FILE, self.records, self.search)
        return super().train_loader(ctx, dataset)

    def extra_measurements(self, model: Classifier, loader: Any) -> dict[str, Any]:
        """The summary's ``search`` entry (front, chosen genome, times), with a check that the
        exported model has the parameter count the search recorded."""
        if self.search is None:
            return {}
        recorded = self.search["chosen"]["params"]
        return {"search": {**self.search,
                           "chosen_params_match": count_parameters(model) == recorded}}


def write_records(path: Any, records: list[dict[str, Any]]) -> None:
    from hundred.io import write_text

    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def plot_front(path: Any, records: list[dict[str, Any]], search: dict[str, Any]) -> None:
    """Parameters against proxy error: every trained candidate, the exited (untrained) ones
    as ticks along the bottom edge (they have no error), the final front and the chosen
    architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hundred.io import atomic_open

    figure, axes = plt.subplots(figsize=(6, 4))
    trained = [r for r in records if r["trained"]]
    exited = [r for r in records if r["exited"]]
    axes.scatter([r["params"] / 1e3 for r in trained], [100 * r["error"] for r in trained],
                 s=12, c="0.6", label=f"trained candidates ({len(trained)})")
    if exited:
        axes.scatter([r["params"] / 1e3 for r in exited], [0.03] * len(exited), marker="|",
                     c="tab:orange", transform=axes.get_xaxis_transform(),
                     label=f"early exit, never trained ({len(exited)}; no error)")
    front = search["front"]
    axes.plot([e["params"] / 1e3 for e in front], [100 * e["error"] for e in front], "o-",
              c="tab:red", label="final Pareto front")
    chosen = search["chosen"]
    axes.scatter([chosen["params"] / 1e3], [100 * chosen["error"]], marker="*", s=160,
                 c="tab:blue", zorder=3, label="chosen")
    if search["early_exit"]:
        axes.axvline(search["beta_m"] * 1e3, ls="--", c="tab:orange", lw=1)
    every = [r["params"] / 1e3 for r in records]
    pad = 0.03 * (max(every) - min(every) or 1.0)
    axes.set_xlim(min(every) - pad, max(every) + pad)  # the exited ticks do not autoscale
    axes.set_xlabel("parameters (k)")
    axes.set_ylabel("proxy error (%)")
    axes.set_title(f"EEEA search: pop {search['population']}, {search['generations']} gens, "
                   f"early exit {'on' if search['early_exit'] else 'off'}")
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)
