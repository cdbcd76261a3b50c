"""The ``robust:`` section of a run config: the threat model that adversarial training
crafts its examples under and that the end-of-run evaluation attacks with, and the finished
run a run starts from (adversarial fine-tuning).

ε is in pixel units: images in [0, 1] *before* normalisation (the convention of every paper
of the field: 8/255 on CIFAR, 4/255 on ImageNet). It may be written as a fraction,
``robust.eps=8/255`` or ``--eps 8/255``, and must lie in [0, 1].

Nothing here imports torch (config validation runs before anything heavy).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from hundred.config import StrictModel

Norm = Literal["linf", "l2"]


def parse_eps(value: Any, what: str = "eps") -> float:
    """A perturbation size in pixel units: a number or a fraction such as ``"8/255"``;
    ValueError (naming ``what``) when it is not a number in [0, 1]."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number in [0, 1] (pixel units, e.g. 8/255), "
                         f"got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{what} must be a number or a fraction such as 8/255, got "
                             f"{value!r}") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"{what} must be a number in [0, 1] (pixel units, e.g. 8/255), "
                         f"got {value!r}")
    if not 0.0 <= number <= 1.0:  # also refuses NaN
        raise ValueError(f"{what}={value} is outside [0, 1]: perturbations are measured on "
                         "images in [0, 1] before normalisation (e.g. 8/255 = 0.0314)")
    return number


def eps_label(eps: float) -> str:
    """``8/255`` when ``eps`` is a whole number of 1/255 steps, else the number itself."""
    steps = eps * 255
    if abs(steps - round(steps)) < 1e-6:
        return "0" if round(steps) == 0 else f"{round(steps)}/255"
    return f"{eps:.6g}"


class RobustConfig(StrictModel):
    """Settings of the robust track: the threat model of training and evaluation."""

    norm: Norm = Field("linf", description="the threat model's norm: linf or l2")
    eps: float = Field(8 / 255, description="perturbation budget in pixel units ([0, 1] "
                       "images, before normalisation); a fraction such as 8/255 is accepted")
    steps: int = Field(10, ge=1, description="PGD steps when adversarial training crafts "
                       "its examples (Madry et al.: 7 on CIFAR; Rice et al.: 10)")
    step_size: Optional[float] = Field(
        2 / 255, description="PGD step size in pixel units (a fraction is accepted); None = "
        "eps / 4 (2/255 at 8/255)")
    restarts: int = Field(1, ge=1, description="random restarts of the training attack")
    random_start: bool = Field(True, description="start PGD at a uniformly random point of "
                               "the eps-ball (Madry et al.)")
    eval_attacks: list[str] = Field(
        default_factory=lambda: ["pgd"], description="attacks run on the held-out split at "
        "the end of every run (names of hundred.tracks.robust.attacks.ATTACKS); the first "
        "gives robust_top1")
    eval_steps: int = Field(20, ge=1, description="PGD steps of the end-of-run evaluation "
                            "(PGD-20, the field's convention)")
    eval_step_size: Optional[float] = Field(
        None, description="PGD step size of the evaluation (pixel units); None = the "
        "training step_size, or eps / 4 when that is None too")
    eval_restarts: int = Field(1, ge=1, description="random restarts of the evaluation PGD")
    eval_limit: Optional[int] = Field(
        None, ge=1, description="attack only N images of the held-out split, a fixed uniform "
        "sample (AutoAttack on ImageNet is slow); None = all")
    init: Optional[str] = Field(
        None, description="start from this finished run (RUN_DIR; same model.name and "
        "model.options): its whole model when it was trained on the same data and classes, "
        "else its backbone with a new head; None = random initialisation")

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> float:
        return parse_eps(value, "robust.eps")

    @field_validator("step_size", "eval_step_size", mode="before")
    @classmethod
    def _step(cls, value: Any) -> Optional[float]:
        return None if value is None else parse_eps(value, "a PGD step size")

    @field_validator("eval_attacks")
    @classmethod
    def _some_attack(cls, names: list[str]) -> list[str]:
        # the names are checked against the attack registry (which imports torch) by the
        # scenario, before the run directory is created
        if not names:
            raise ValueError("give at least one evaluation attack (e.g. [pgd])")
        return names

    @model_validator(mode="after")
    def _step_positive(self) -> "RobustConfig":
        for key in ("step_size", "eval_step_size"):
            if getattr(self, key) == 0:
                raise ValueError(f"robust.{key} must be above 0 (None: derived from eps)")
        return self

    def label(self) -> str:
        """The threat model in words: ``Linf 8/255``."""
        return f"{'Linf' if self.norm == 'linf' else 'L2'} {eps_label(self.eps)}"
