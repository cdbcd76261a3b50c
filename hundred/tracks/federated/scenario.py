"""The federated scenario: long-tailed data split over clients, rounds driven by Flower.

1. Before anything is written: the data is loaded and partitioned
   (:mod:`hundred.tracks.federated.partition`: long-tailed train split with imbalance factor
   ``federated.imbalance``, Dirichlet(``federated.alpha``) split over ``federated.clients``,
   a personalised test set per client drawn from val), and the method checks the model.
2. Flower's FedAvg strategy (``flwr.serverapp.strategy.FedAvg``) runs ``federated.rounds``
   rounds: each round it samples ``federated.fraction`` of the clients (Python's ``random``,
   seeded with the run seed), sends them the global ``ArrayRecord``, and averages their
   replies weighted by their ``num-examples``. A sampled client (a Flower ``ClientApp``,
   :class:`ClientSide`) loads the global weights and its own kept state (``Context.state``),
   trains ``federated.local_epochs`` epochs on its partition with the engine's
   :class:`~hundred.engine.trainer.Trainer` (the method's ``loss``; SGD state fresh each
   round, as in FedAvg), keeps its local state and replies with the shared weights. The
   learning rate of round ``r`` is ``optim.lr`` times the ``schedule:`` factor of step ``r``
   of ``rounds`` (constant within a round).
3. Every ``federated.eval_every`` rounds (and after the last) every client evaluates its own
   prediction on its own test set (a Flower evaluate round: **personalised** top-1, the mean
   over clients), and Flower's ``evaluate_fn`` measures the global model's **generic** top-1
   on the balanced val split; both also per many/medium/few-shot class group. A line goes to
   ``metrics.jsonl``.

``federated.engine`` picks who runs the ClientApps: ``local`` (default) delivers Flower's
messages in-process and sequentially (:class:`~hundred.tracks.federated.flower.LocalGrid`:
deterministic, no extra dependency, what the tests use); ``ray`` hands the same ServerApp-side
strategy and the same ClientApp to Flower's simulation runtime (``flwr.simulation``, one Ray
actor per running client, which rebuilds the data and the model from the run config).

The summary's primary metric is ``generic_top1``: the long-tail question is whether the
one global model serves the rare classes, and generic accuracy on balanced data is what the
FedLoGe paper and its baselines (CReFF, FedRoD) rank by first; personalised accuracy is
reported beside it. Resuming is not supported (start the run again).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flwr
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from rich.console import Console

from hundred.config import RunConfig, build_config, with_values
from hundred.data import Dataset
from hundred.data.loader import BatchLoader
from hundred.engine.checkpoint import save_checkpoint
from hundred.engine.method import SetupContext
from hundred.engine.rundir import append_jsonl
from hundred.engine.run import (RunContext, device_budget_bytes, finish_run, image_size,
                                load_data, running)
from hundred.engine.trainer import Trainer, lr_factor, resolve_device
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.tracks.federated.flower import LocalGrid, server_identity
from hundred.tracks.federated.method import FederatedMethod
from hundred.tracks.federated.partition import Partition, make_partition

LOCAL_KEY = "local"  # the ArrayRecord a client keeps in its Context.state
GROUPS = ("many", "medium", "few")


class EpochOffset:
    """A client's loader seen by the trainer: local epoch ``e`` of round ``r`` is the loader's
    epoch ``r * local_epochs + e``, so every round draws a fresh order and augmentation."""

    def __init__(self, loader: BatchLoader, offset: int) -> None:
        self.loader, self.offset = loader, offset

    def __iter__(self) -> Any:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(self.offset + epoch)


@dataclass
class Parts:
    """What training and evaluating needs, in one process: the data, its partition, the
    model and the method (its modules built), on ``device``."""

    config: RunConfig
    device: torch.device
    dataset: Dataset
    partition: Partition
    model: Classifier
    method: FederatedMethod
    initial_local: dict[str, torch.Tensor] = field(default_factory=dict)
    loaders: dict[Any, BatchLoader] = field(default_factory=dict)

    def loader(self, client: int, train: bool = True) -> BatchLoader:
        """Client ``client``'s training batches (shuffled, augmented; batches of
        ``min(data.batch_size, its size)``, the last smaller one kept), or its test set."""
        key = ("train" if train else "test", client)
        if key not in self.loaders:
            data = self.config.data
            indices = (self.partition.clients[client] if train
                       else self.partition.local_tests[client])
            batch = min(data.batch_size, len(indices)) if train else data.eval_batch_size
            self.loaders[key] = BatchLoader(
                self.dataset.arrays("train" if train else "val"), batch_size=batch,
                indices=indices, shuffle=train, drop_last=False, train=train,
                seed=self.config.seed + 7919 * (client + 1), device=self.device,
                augment=data.augment if train else None, out_size=data.image_size,
                mean=data.mean, std=data.std, device_budget_bytes=device_budget_bytes(
                    self.config))
        return self.loaders[key]

    def val_loader(self) -> BatchLoader:
        if "val" not in self.loaders:
            data = self.config.data
            self.loaders["val"] = BatchLoader(
                self.dataset.arrays("val"), batch_size=data.eval_batch_size, shuffle=False,
                train=False, seed=self.config.seed, device=self.device,
                out_size=data.image_size, mean=data.mean, std=data.std,
                device_budget_bytes=device_budget_bytes(self.config))
        return self.loaders["val"]

    @torch.no_grad()
    def counts(self, loader: BatchLoader, personal: bool) -> dict[str, int]:
        """Correct predictions and test images, overall and per shot group."""
        self.model.eval()
        self.method.trainable.eval()
        logits_of = self.method.personal_logits if personal else self.method.generic_logits
        predicted, truth = [], []
        for images, labels in loader:
            logits = logits_of(self.model, self.model.features(images))
            predicted.append(logits.argmax(dim=1).cpu().numpy())
            truth.append(labels.cpu().numpy())
        predicted, truth = np.concatenate(predicted), np.concatenate(truth)
        correct = predicted == truth
        out = {"correct": int(correct.sum()), "total": len(truth)}
        for group in GROUPS:
            inside = np.isin(truth, self.partition.groups[group])
            out[f"correct_{group}"] = int(correct[inside].sum())
            out[f"total_{group}"] = int(inside.sum())
        return out


def build_parts(config: RunConfig, device: torch.device, method: FederatedMethod | None = None,
                dataset: Dataset | None = None, partition: Partition | None = None) -> Parts:
    """Load (or take) the data, partition it, build the model and the method's modules."""
    section = config.federated
    if dataset is None:
        dataset = load_data(config)
    if partition is None:
        partition = make_partition(dataset.arrays("train").labels, dataset.arrays("val").labels,
                                   dataset.num_classes, section.clients, section.alpha,
                                   section.imbalance, config.seed, section.min_client_samples)
    if method is None:
        from hundred.registry import get_method

        method = get_method(config.track, config.method)(config.method_params, config)
    torch.manual_seed(config.seed)  # the same initial model in every process
    size = image_size(config, dataset)
    model = create(config.model.name, dataset.num_classes, head=config.model.head,
                   img_size=size, **config.model.options).to(device)
    method.setup(model, SetupContext(config, device, 1, section.local_epochs))
    for modules in (method.trainable, method.stateful, method.frozen):
        modules.to(device)
    return Parts(config, device, dataset, partition, model, method, method.local_state())


def accuracies(per_client: list[dict[str, int]]) -> dict[str, float | None]:
    """Top-1 (%) per client, averaged over the clients that have test images (overall and per
    shot group); None where no client has any."""
    out: dict[str, float | None] = {}
    for suffix, key in (("", "top1"), *((f"_{g}", g) for g in GROUPS)):
        rates = [100.0 * c[f"correct{suffix}"] / c[f"total{suffix}"] for c in per_client
                 if c[f"total{suffix}"] > 0]
        out[key] = float(np.mean(rates)) if rates else None
    return out


class ClientSide:
    """The clients' ClientApp handlers. ``parts`` is given in-process (``engine=local``);
    a Ray actor receives this object without it and rebuilds it from the config once."""

    def __init__(self, config: RunConfig, parts: Parts | None = None) -> None:
        self.raw = config.model_dump(mode="json")
        self._parts = parts
        self.quiet = Console(stderr=True, quiet=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"raw": self.raw, "_parts": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.quiet = Console(stderr=True, quiet=True)

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            config = build_config(base=self.raw)
            self._parts = build_parts(config, resolve_device(config.train.device))
        return self._parts

    def app(self) -> ClientApp:
        app = ClientApp()
        app.train()(self.train)
        app.evaluate()(self.evaluate)
        return app

    def _load(self, message: Message, context: Context) -> Parts:
        parts = self.parts
        parts.method.load_shared_state(parts.model,
                                       message.content["arrays"].to_torch_state_dict())
        kept = context.state.array_records.get(LOCAL_KEY)
        parts.method.load_local_state(parts.initial_local if kept is None
                                      else kept.to_torch_state_dict())
        return parts

    def client_config(self, server_round: int) -> RunConfig:
        """The run's config as one client's training of ``server_round`` sees it."""
        config, section = self.parts.config, self.parts.config.federated
        factor = lr_factor(server_round - 1, 1, section.rounds, config.schedule)
        return with_values(config, {
            "train.epochs": section.local_epochs, "optim.lr": config.optim.lr * factor,
            "schedule.name": "constant", "schedule.warmup_epochs": 0,
            "train.ema_decay": None}, "the federated client")

    def train(self, message: Message, context: Context) -> Message:
        client = int(context.node_config["partition-id"])
        server_round = int(message.content["config"]["server-round"])
        parts = self._load(message, context)
        loader = EpochOffset(parts.loader(client),
                             (server_round - 1) * parts.config.federated.local_epochs)
        trainer = Trainer(self.client_config(server_round), parts.model, parts.method, loader,
                          None, parts.device, None, console=self.quiet)
        history = trainer.fit().history
        if parts.method.local_modules:
            context.state[LOCAL_KEY] = ArrayRecord(torch_state_dict={
                k: v.cpu() for k, v in parts.method.local_state().items()})
        shared = {k: v.detach().cpu() for k, v in
                  parts.method.shared_state(parts.model).items()}
        metrics = {"num-examples": len(parts.partition.clients[client]), "client": client,
                   "train_loss": float(np.mean([r["train_loss"] for r in history]))}
        return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=shared),
                                   "metrics": MetricRecord(metrics)}), reply_to=message)

    def evaluate(self, message: Message, context: Context) -> Message:
        """The client's own prediction on its own test set: counts, overall and per group."""
        client = int(context.node_config["partition-id"])
        parts = self._load(message, context)
        if len(parts.partition.local_tests[client]):
            counts = parts.counts(parts.loader(client, train=False), personal=True)
        else:
            counts = {"correct": 0, "total": 0, **{f"{k}_{g}": 0 for g in GROUPS
                                                   for k in ("correct", "total")}}
        return Message(RecordDict({"metrics": MetricRecord(
            {"num-examples": counts["total"], "client": client, **counts})}),
            reply_to=message)


class ScheduledFedAvg(FedAvg):
    """Flower's FedAvg whose client-side evaluation (every client) runs only in the rounds
    that ``due`` names, and which stops the run when a client failed (Flower's own FedAvg
    logs the failure and averages the others, which would silently change the experiment)."""

    def __init__(self, due: Any, **options: Any) -> None:
        super().__init__(**options)
        self.due = due

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Any:
        if not self.due(server_round):
            return []
        # Flower draws the evaluated nodes with random.sample too: keep Python's random state
        # as it was, so the clients sampled for training do not depend on federated.eval_every
        state = random.getstate()
        try:
            return list(super().configure_evaluate(server_round, arrays, config, grid))
        finally:
            random.setstate(state)

    @staticmethod
    def _refuse_failures(server_round: int, replies: Any) -> list[Message]:
        replies = list(replies)
        failed = [r for r in replies if r.has_error()]
        if failed:
            raise HundredError(f"round {server_round}: {len(failed)} client(s) failed; first: "
                               f"{failed[0].error.reason[-2000:]}")
        return replies

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        return super().aggregate_train(server_round,
                                       self._refuse_failures(server_round, replies))

    def aggregate_evaluate(self, server_round: int, replies: Any) -> Any:
        return super().aggregate_evaluate(server_round,
                                          self._refuse_failures(server_round, replies))


class Server:
    """The server's side of one run: the strategy, the generic evaluation and the log."""

    def __init__(self, ctx: RunContext, parts: Parts) -> None:
        self.ctx, self.parts = ctx, parts
        self.section = ctx.config.federated
        self.trained: list[tuple[int, float]] = []  # (client, train loss) of the newest round
        self.personal: dict[str, float | None] = {}
        self.last: dict[str, Any] = {}  # the newest evaluation's record
        self.strategy = ScheduledFedAvg(
            self.due, fraction_train=self.section.fraction, fraction_evaluate=1.0,
            # FedAvg samples max(int(connected * fraction), min_train_nodes) nodes: fixing
            # the minimum at the intended count keeps it when Flower's simulation has not
            # connected every node yet in round 1 (it waits for min_available_nodes)
            min_train_nodes=max(1, int(self.section.clients * self.section.fraction)),
            min_evaluate_nodes=self.section.clients,
            min_available_nodes=self.section.clients,
            train_metrics_aggr_fn=self._train_metrics,
            evaluate_metrics_aggr_fn=self._personal_metrics)

    def due(self, server_round: int) -> bool:
        return server_round > 0 and (server_round % self.section.eval_every == 0
                                     or server_round == self.section.rounds)

    def _train_metrics(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        """The round's sampled clients and their losses (kept for the log); the
        sample-weighted mean loss."""
        metrics = [next(iter(r.metric_records.values())) for r in records]
        self.trained = sorted((int(m["client"]), float(m["train_loss"])) for m in metrics)
        sizes = [float(m[weight_key]) for m in metrics]
        losses = [float(m["train_loss"]) for m in metrics]
        return MetricRecord({"train_loss": float(np.average(losses, weights=sizes))})

    def _personal_metrics(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        per_client = [dict(next(iter(r.metric_records.values()))) for r in records]
        self.personal = accuracies(per_client)
        return MetricRecord({k: v for k, v in self.personal.items() if v is not None})

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn`` (after the round's client-side evaluation): the generic
        accuracy, and the round's record in ``metrics.jsonl``."""
        if not self.due(server_round):
            return None
        parts = self.parts
        parts.method.load_shared_state(parts.model, arrays.to_torch_state_dict())
        generic = accuracies([parts.counts(parts.val_loader(), personal=False)])
        record: dict[str, Any] = {"round": server_round}
        record.update({f"generic_{k}": v for k, v in generic.items()})
        record.update({f"personal_{k}": self.personal.get(k) for k in generic})
        record["sampled_clients"] = [client for client, _ in self.trained]
        record["train_loss"] = (float(np.mean([loss for _, loss in self.trained]))
                                if self.trained else None)
        if self.ctx.dist.is_main:
            append_jsonl(self.ctx.run_dir / "metrics.jsonl", record)
        self.last = record
        if not self.ctx.config.quiet:
            self.ctx.console.print(
                f"round {server_round:>3}/{self.section.rounds}  generic top1 "
                f"{record['generic_top1']:.2f}  personal top1 "
                f"{record['personal_top1'] or 0:.2f}  clients {record['sampled_clients']}",
                highlight=False)
        return MetricRecord({k: v for k, v in record.items()
                             if isinstance(v, (int, float)) and v is not None})


def _run_local(server: Server, clients: ClientSide, initial: ArrayRecord, rounds: int
               ) -> tuple[ArrayRecord, dict[int, RecordDict]]:
    grid = LocalGrid(clients.app(), server.section.clients)
    with server_identity(quiet=True):
        result = server.strategy.start(grid, initial, num_rounds=rounds,
                                       train_config=ConfigRecord(), evaluate_fn=server.evaluate)
    states = {int(c.node_config["partition-id"]): c.state for c in grid.contexts.values()}
    return result.arrays, states


def _run_ray(server: Server, clients: ClientSide, initial: ArrayRecord, rounds: int,
             config: RunConfig) -> tuple[ArrayRecord, dict[int, RecordDict]]:
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    section = config.federated
    holder: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        holder["result"] = server.strategy.start(grid, initial, num_rounds=rounds,
                                                 train_config=ConfigRecord(),
                                                 evaluate_fn=server.evaluate)

    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        run_simulation(server_app=server_app, client_app=clients.app(),
                       num_supernodes=section.clients, backend_config={"client_resources": {
                           "num_cpus": section.client_cpus, "num_gpus": section.client_gpus}})
    finally:
        logger.setLevel(level)
    if "result" not in holder:
        raise HundredError("Flower's simulation ended without a result (see its log above)")
    return holder["result"].arrays, {}  # the clients' states stay with the simulation


def run(config: RunConfig, method: FederatedMethod, resume_dir: Path | None = None
        ) -> dict[str, Any]:
    """Partition ``config.data`` over the clients, run the Flower rounds with ``method``;
    returns the summary written to the run directory. Bad settings, data or models are
    refused before the run directory is created."""
    if resume_dir is not None:
        raise HundredError("federated runs cannot be resumed; start the run again "
                           "(--replace)")
    section = config.federated
    if section.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise HundredError("federated.engine=ray needs Flower's simulation runtime: "
                               "pip install 'flwr[simulation]'") from None
    dataset = load_data(config)
    size = image_size(config, dataset)
    partition = make_partition(dataset.arrays("train").labels, dataset.arrays("val").labels,
                               dataset.num_classes, section.clients, section.alpha,
                               section.imbalance, config.seed, section.min_client_samples)
    with torch.device("meta"):
        probe = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=size, **config.model.options)
    method.prepare(config, dataset.num_classes, probe.feature_dim)
    with running(config, resume_dir) as ctx:
        parts = build_parts(config, ctx.device, method, dataset, partition)
        server = Server(ctx, parts)
        initial = ArrayRecord(torch_state_dict={
            k: v.detach().cpu() for k, v in method.shared_state(parts.model).items()})
        saved_random = random.getstate()
        random.seed(config.seed)  # Flower samples the round's clients with random.sample
        try:
            if section.engine == "local":
                arrays, states = _run_local(server, ClientSide(config, parts), initial,
                                            section.rounds)
            else:
                arrays, states = _run_ray(server, ClientSide(config), initial,
                                          section.rounds, config)
        finally:
            random.setstate(saved_random)
        method.load_shared_state(parts.model, arrays.to_torch_state_dict())
        _save(ctx, parts, states)
        summary: dict[str, Any] = {
            "data": dataset.name, "model": config.model.name, "classes": dataset.num_classes,
            **{k: v for k, v in server.last.items() if k.startswith(("generic_", "personal_"))},
            "rounds": section.rounds, "clients": section.clients,
            "fraction": section.fraction, "local_epochs": section.local_epochs,
            "alpha": section.alpha, "imbalance": section.imbalance,
            "shot_thresholds": "many > n_max*100/500, few < n_max*20/500 (CIFAR-100-LT's "
                               ">100 / <20 at n_max=500)",
            **partition.record(),
            "engine": {"flwr": flwr.__version__, "strategy": "flwr.serverapp.strategy.FedAvg",
                       "runtime": section.engine}}
        return finish_run(ctx, summary, title=f"{config.track}/{config.method} on "
                          f"{dataset.name}", dataset=dataset)


def _save(ctx: RunContext, parts: Parts, states: dict[int, RecordDict]) -> None:
    """The final global model (and shared method modules) with every client's kept state
    (``client<i>.*``; in-process runs only) as the run's checkpoint."""
    if not ctx.dist.is_main:
        return
    weights = dict(parts.method.shared_state(parts.model))
    for client, state in sorted(states.items()):
        kept = state.array_records.get(LOCAL_KEY)
        if kept is not None:
            weights.update({f"client{client}.{k}": v
                            for k, v in kept.to_torch_state_dict().items()})
    save_checkpoint(ctx.run_dir / "checkpoints", ctx.config.federated.rounds - 1, weights,
                    {"round": ctx.config.federated.rounds})
