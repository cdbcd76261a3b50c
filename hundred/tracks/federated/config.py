"""The ``federated:`` section of a run config: the clients, the long-tailed Dirichlet
partition, the rounds and the local training of each round.

Defaults follow FedLoGe's CIFAR-100-LT setting (Xiao et al., ICLR 2024): 40 clients, 30% of
them per round, Dirichlet alpha 0.5, imbalance factor 100, 5 local epochs. Nothing here
imports torch (config validation runs before anything heavy).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hundred.config import StrictModel


class FederatedConfig(StrictModel):
    """Settings of the federated track (see :mod:`hundred.tracks.federated.scenario`)."""

    clients: int = Field(40, ge=1, description="number of clients the long-tailed train split "
                         "is divided over (FedLoGe: 40)")
    fraction: float = Field(0.3, gt=0, le=1, description="share of the clients Flower's FedAvg "
                            "samples each round (fraction_train; FedLoGe: 0.3), at least one")
    rounds: int = Field(10, ge=1, description="communication rounds (replaces train.epochs, "
                        "which this track does not read; FedLoGe: 500)")
    local_epochs: int = Field(5, ge=1, description="epochs each sampled client trains on its "
                              "own data per round (FedLoGe: 5)")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration of the split over "
                         "clients, > 0 (FedLoGe: 0.5; smaller = more heterogeneous)")
    imbalance: float = Field(100.0, ge=1, description="imbalance factor IF >= 1 of the "
                             "long-tailed train split: n_c = n_max * IF^(-c/(C-1)) "
                             "(FedLoGe: 100)")
    min_client_samples: int = Field(
        1, ge=1, description="Dirichlet draws are repeated until every client holds at least "
        "this many samples (the reference code uses 10 on CIFAR)")
    eval_every: int = Field(1, ge=1, description="rounds between evaluations (generic and "
                            "personalised); the last round is always evaluated")
    engine: Literal["local", "ray"] = Field(
        "local", description="who runs the ClientApps: 'local' = in-process and sequential "
        "(hundred.tracks.federated.flower.LocalGrid; deterministic, no extra dependency), "
        "'ray' = Flower's simulation runtime (needs flwr[simulation]; one Ray actor per "
        "running client)")
    client_cpus: float = Field(1.0, gt=0, description="engine=ray: CPUs per client actor")
    client_gpus: float = Field(0.0, ge=0, le=1, description="engine=ray: share of a GPU per "
                               "client actor (e.g. 0.25: four clients per GPU; 0 = CPU)")
