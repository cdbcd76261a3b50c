"""Federated learning under long-tailed data: a long-tailed train split (imbalance factor)
divided over clients by a Dirichlet draw, rounds driven by Flower's FedAvg strategy, each
sampled client training a few local epochs with the shared trainer. Generic top-1 (the global
model on the balanced val split) is the primary metric; personalised top-1 (each client's own
prediction on a test set that follows its class distribution) is reported with it, both also
on many/medium/few-shot classes."""

from hundred.track import Metric, ReportSpec, Shortcut, Track
from hundred.tracks.federated.config import FederatedConfig

TRACK = Track(
    name="federated",
    package=__name__,
    about="federated long-tailed learning (Flower FedAvg rounds): generic and personalised "
          "top-1, many/medium/few-shot",
    runner=".scenario:run",
    method_base=".method:FederatedMethod",
    section=FederatedConfig,
    report=ReportSpec(
        metrics=(Metric("generic_top1", "generic top-1"),
                 Metric("personal_top1", "personalised top-1"),
                 Metric("generic_many", "generic many"), Metric("generic_medium", "generic med."),
                 Metric("generic_few", "generic few"), Metric("personal_many", "pers. many"),
                 Metric("personal_medium", "pers. med."), Metric("personal_few", "pers. few")),
        required=("generic_top1", "personal_top1"),
        always_shown=("model",),
        descriptors=("clients", "alpha", "imbalance")),
    shortcuts=(Shortcut("clients", "federated.clients", int, help="number of clients"),
               Shortcut("rounds", "federated.rounds", int, help="communication rounds"),
               Shortcut("alpha", "federated.alpha", float,
                        help="Dirichlet concentration of the client split (> 0)"),
               Shortcut("imbalance", "federated.imbalance", float,
                        help="imbalance factor of the long-tailed train split (>= 1)")),
    protocol_fixed={
        "federated.clients": "the federation is the experiment itself",
        "federated.fraction": "the federation is the experiment itself",
        "federated.alpha": "the data heterogeneity is the experiment itself",
        "federated.imbalance": "the long tail is the experiment itself",
        "federated.rounds": "the communication budget is the experiment itself"},
    check_methods=("fedavg", "fedloge"),
)
