"""The ``unlearn:`` section of a run config: which part of the train split is forgotten (a
random sample, the worst-case set of Fan et al. 2024, or the set of an earlier run), the
original model a run starts from, the retrain run it is compared with, and the settings of
the worst-case selection and of the membership-inference attack.

Nothing here imports torch (config validation runs before anything heavy).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from hundred.config import StrictModel

ForgetKind = Literal["random", "worst_case"]
Lower = Literal["finetune", "random_labels"]


class UnlearnConfig(StrictModel):
    """Settings of the unlearn track (the scenario is :mod:`hundred.tracks.unlearn.scenario`)."""

    forget: ForgetKind = Field(
        "random", description="how the forget set is chosen: 'random' (a uniform sample of the "
        "train split, seeded by forget_seed) or 'worst_case' (the bi-level selection of Fan et "
        "al., ECCV 2024: the set that the lower-level unlearning forgets least)")
    forget_fraction: float = Field(
        0.1, description="share of the train split to forget, in (0, 1); the set holds "
        "round(fraction x N) samples (at least 1). The paper: 10% (also 5% and 20%)")
    forget_seed: Optional[int] = Field(
        None, ge=0, description="seed of the random forget set (and of the selection's random "
        "start); None = the run seed")
    forget_from: Optional[str] = Field(
        None, description="use exactly the forget set of this finished unlearn run (RUN_DIR, "
        "its forget_indices.npy), e.g. the worst-case set an approximate method was run on, "
        "for its retrain reference; overrides forget/forget_fraction")
    init: Optional[str] = Field(
        None, description="the original model: this finished run (RUN_DIR of a classify/robust "
        "run, or RUN_DIR/original of an unlearn run) trained on the same data, classes and "
        "model; None = train it in this run (train.epochs, optim, schedule) into "
        "RUN_DIR/original")
    reference: Optional[str] = Field(
        None, description="a finished unlearn/retrain run with the same forget set: the "
        "summary then holds each metric's gap to it and their average (avg_gap)")
    # -- the worst-case selection (hundred.tracks.unlearn.selection) -------------------------
    select_iterations: int = Field(
        5, ge=1, description="outer (upper-level) iterations of the worst-case selection; each "
        "restarts the lower level from the original model (the official code's select_epochs)")
    select_lower: Lower = Field(
        "finetune", description="the lower-level unlearning of the selection: 'finetune' "
        "(weighted fine-tuning, (1 - w_i) on each sample's loss: the paper's default, FT) or "
        "'random_labels' (RL)")
    select_lower_steps: int = Field(
        20, ge=1, description="sign-SGD steps of the lower-level unlearning per outer "
        "iteration (a first-order, truncated solution of the lower level)")
    select_lower_lr: float = Field(
        1e-4, gt=0, description="sign-SGD step size of the lower level (the official code "
        "uses sign-SGD for it)")
    select_lr: float = Field(
        0.1, gt=0, description="step size of the projected gradient step on the weights w")
    select_gamma: float = Field(
        1e-3, ge=0, description="gamma of the upper level's gamma ||w||^2 (keeps w spread out)")
    # -- the membership-inference attack (hundred.tracks.unlearn.evaluation) -----------------
    mia_limit: Optional[int] = Field(
        None, ge=2, description="fit the attack on at most this many val images (and as many "
        "retain images); None = the whole val split (the paper: the whole test set)")

    @field_validator("forget_fraction")
    @classmethod
    def _inside_unit_interval(cls, value: float) -> float:
        if not 0.0 < value < 1.0:  # NaN is refused by StrictModel
            raise ValueError(f"unlearn.forget_fraction={value} is outside (0, 1): it is the "
                             "share of the train split to forget (e.g. 0.1)")
        return value
