"""The ``robust:`` section of a run config: the threat model that adversarial training
crafts its examples under and that the end-of-run evaluation attacks with, and the finished
run a run starts from (adversarial fine-tuning).

ε is in pixel units: images in [0, 1] *before* normalisation (the convention of every paper
of the field: 8/255 on CIFAR, 4/255 on ImageNet). It may be written as a fraction,
``robust.eps=8/255`` or ``--eps 8/255``, and must lie in [0, 1].

``robust.tta`` (:class:`TTAConfig`) describes the test stream of the test-time adaptation
methods (tta_source, tent, eata, reservoir_tta): which corrupted domains, in which order, how
many cycles, and the online optimiser.

Nothing here imports torch (config validation runs before anything heavy).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from hundred.config import StrictModel

Norm = Literal["linf", "l2"]
TTASchedule = Literal["recurring", "gradual"]


class TTAConfig(StrictModel):
    """The test stream and online optimiser of test-time adaptation (``robust.tta``).

    ``recurring``: the domains (every corruption at every severity, corruption-major, in the
    benchmark's order) one after the other, the whole sequence repeated ``cycles`` times
    (ReservoirTTA's recurring setting; each visit shows every val image of the domain once,
    in a fresh order). ``gradual``: per corruption, severity 1, 2, 3, 4, 5, 4, 3, 2, 1 (the
    gradual setting of continual TTA, Wang et al., CoTTA, CVPR 2022), ``severities`` unused.
    """

    pack: Optional[str] = Field(
        None, description="a corrupted pack of the run's data (hundred data corrupt) holding "
        "every domain of the stream; None = corrupt the run's val split on the fly with the "
        "same generator and seed")
    schedule: TTASchedule = Field("recurring", description="recurring (the domain sequence "
                                  "repeated cycles times) or gradual (severity 1->5->1 per "
                                  "corruption)")
    corruptions: list[str] = Field(
        default_factory=lambda: ["all"], validate_default=True, description="corruption "
        "types in stream order: [all] = the 15 of ImageNet-C / CIFAR-10-C in the benchmark's "
        "order")
    severities: list[int] = Field(default_factory=lambda: [5], description="severities of "
                                  "each corruption (recurring): the field's 5 by default")
    cycles: int = Field(10, ge=1, description="times the whole domain sequence is shown")
    images_per_domain: Optional[int] = Field(
        None, ge=1, description="a fixed uniform sample of N val images per domain (the same "
        "rows in every visit); None = all")
    batch_size: int = Field(64, ge=1, description="test batch size (TENT/EATA on ImageNet: "
                            "64; CIFAR benchmarks: 200)")
    steps: int = Field(1, ge=1, description="adaptation steps per test batch (TENT: 1)")
    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="sgd (momentum 0.9, TENT and EATA on ImageNet) or adam (betas "
        "0.9/0.999, TENT on CIFAR)")
    lr: Optional[float] = Field(
        None, gt=0, description="learning rate; None = 0.00025 * batch_size / 64 for sgd "
        "(TENT/EATA ImageNet), 0.001 for adam (TENT CIFAR)")
    seed: int = Field(0, ge=0, description="seed of the on-the-fly corruptions (a pack has "
                      "its own) and of the image order within each visit")

    @field_validator("corruptions")
    @classmethod
    def _corruptions(cls, names: list[str]) -> list[str]:
        from hundred.tracks.robust.corruptions import parse_corruptions

        try:
            return parse_corruptions(names)
        except Exception as error:  # HundredError -> a validation message
            raise ValueError(str(error)) from None

    @field_validator("severities")
    @classmethod
    def _severities(cls, levels: list[int]) -> list[int]:
        from hundred.tracks.robust.corruptions import parse_severities

        try:
            return parse_severities(levels)
        except Exception as error:
            raise ValueError(str(error)) from None

    def learning_rate(self) -> float:
        """``lr``, or the paper default of the optimiser at this batch size."""
        if self.lr is not None:
            return self.lr
        return 0.00025 * self.batch_size / 64 if self.optimizer == "sgd" else 0.001

    def label(self) -> str:
        """The stream in words: ``corruptions: recurring, 15 types sev 5, 10 cycles``."""
        types = f"{len(self.corruptions)} type{'s' * (len(self.corruptions) > 1)}"
        if len(self.corruptions) == 1:
            types = self.corruptions[0]
        if self.schedule == "gradual":
            levels = "sev 1-5-1"
        else:
            levels = "sev " + ",".join(map(str, self.severities))
        return (f"corruptions: {self.schedule}, {types} {levels}, {self.cycles} "
                f"cycle{'s' * (self.cycles > 1)}")


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

    tta: TTAConfig = Field(default_factory=TTAConfig, description="the test stream of the "
                           "test-time adaptation methods (tent, eata, reservoir_tta...)")

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
