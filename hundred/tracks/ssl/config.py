"""The ``ssl:`` section of a run config: the view recipe of pre-training and the offline
evaluation that follows it (linear probe and weighted kNN on frozen features)."""

from __future__ import annotations

from pydantic import Field

from hundred.config import StrictModel


class SSLConfig(StrictModel):
    """Settings of the self-supervised track."""

    augment: str = Field(
        "simclr", description="view recipe of pre-training (hundred.data.augment.view_specs: "
        "simclr, simclr-small, byol ...); data.augment is not used by this track")
    probe_epochs: int = Field(100, ge=1, description="epochs of the offline linear probe on "
                              "frozen features (solo-learn: 100)")
    probe_lr: float = Field(0.1, gt=0, description="learning rate of the offline linear probe")
    probe_batch_size: int = Field(256, ge=1, description="batch of the offline linear probe")
    knn_k: list[int] = Field(default_factory=lambda: [20, 200], min_length=1,
                             description="neighbours of the weighted kNN evaluation")
    knn_temperature: float = Field(0.07, gt=0, description="temperature of the kNN weights "
                                   "exp(cos / T) (Wu et al. 2018)")
    offline_eval: bool = Field(True, description="after pre-training, extract features once "
                               "and run the linear probe and kNN on the held-out split")
