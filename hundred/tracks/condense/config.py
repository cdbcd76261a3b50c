"""The ``condense:`` section of a run config: the synthetic set (images per class, how it
starts), the optimisation of its images, and the evaluation of the learned set by fresh
networks (the field's protocol, with each evaluation trick labelled)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from hundred.config import StrictModel


class CondenseConfig(StrictModel):
    """Settings of the dataset-condensation track."""

    ipc: int = Field(10, ge=1, description="synthetic images per class (IPC: 1, 10, 50)")
    init: Literal["real", "noise"] = Field(
        "real", description="start from randomly chosen real images of each class, or from "
        "Gaussian noise (in normalised pixel units)")
    iterations: int = Field(1000, ge=0, description="optimisation steps of the synthetic set "
                            "(DM: 20000, MTT/TESLA: 5000 on CIFAR)")
    image_lr: Optional[float] = Field(None, gt=0, description="learning rate of the synthetic "
                                      "pixels (default: the method's paper value)")
    image_momentum: float = Field(0.5, ge=0, lt=1, description="SGD momentum of the synthetic "
                                  "pixels (DC/DSA/DM/MTT: 0.5)")
    real_batch: int = Field(256, ge=1, description="real images per class per matching step "
                            "(DM: 256)")
    dsa: bool = Field(True, description="differentiable Siamese augmentation while matching "
                      "(the same sampled transformation on the real and synthetic batches)")
    dsa_strategy: str = Field("color_crop_cutout_flip_scale_rotate",
                              description="DSA's transformation families, one drawn per call")
    checkpoint_every: int = Field(100, ge=1, description="iterations between checkpoints and "
                                  "image grids")
    log_every: int = Field(10, ge=1, description="iterations between metrics.jsonl records")

    eval_models: list[str] = Field(default_factory=list, description="architectures trained "
                                   "fresh on the learned set (default: model.name); more than "
                                   "one gives a cross-architecture table")
    eval_runs: int = Field(5, ge=1, description="fresh networks per evaluation setting "
                           "(mean ± std over them)")
    eval_epochs: int = Field(300, ge=1, description="epochs of each evaluation network (DC/DSA: "
                             "300, DM/MTT: 1000); lr x0.1 at half")
    eval_lr: float = Field(0.01, gt=0, description="evaluation lr (a learned lr, as MTT's, "
                           "replaces it)")
    eval_batch_size: int = Field(256, ge=1, description="evaluation batch (images)")
    eval_weight_decay: float = Field(5e-4, ge=0, description="evaluation weight decay")
    eval_augment: list[Literal["dsa", "none"]] = Field(
        default_factory=lambda: ["dsa", "none"], min_length=1,
        description="evaluate with DSA augmentation, without any, or both (the first is the "
        "reported eval_top1)")
    eval_labels: Literal["auto", "hard", "soft"] = Field(
        "auto", description="auto: the set's soft labels when it has them (and hard labels "
        "too, labelled), else hard labels")
