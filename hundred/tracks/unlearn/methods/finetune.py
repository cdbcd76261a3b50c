"""Fine-tuning (FT): a few epochs of training on the retained data only, so that catastrophic
forgetting erases the forget set's influence.

Warnecke et al., "Machine Unlearning of Features and Labels" (NDSS 2023); the FT baseline of
Jia et al., "Model Sparsity Can Simplify Machine Unlearning" (NeurIPS 2023) and Fan et al.
(ECCV 2024): minimise (1/|D_r|) sum_{D_r} CE(f_theta(x), y) from theta_o, 10 epochs, lr
0.01 to 0.1 (tuned per setting in those papers).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from hundred.registry import register
from hundred.tracks.unlearn.method import PhaseParams, UnlearnMethod


class FinetuneParams(PhaseParams):
    epochs: int = Field(10, ge=1, description="fine-tuning epochs on the retained data "
                        "(Jia et al. 2023: 10)")
    lr: float = Field(0.01, gt=0, description="constant learning rate (Jia et al. 2023: "
                      "0.01 to 0.1, tuned)")


@register("unlearn", "finetune")
class Finetune(UnlearnMethod):
    """Cross-entropy on the retained rows, starting from the original model."""

    Params: ClassVar[type[BaseModel]] = FinetuneParams
