"""Joint training: at every task, train on all data of every class seen so far — the upper
bound that class-incremental methods are measured against (e.g. iCaRL, CVPR 2017, Sec. 4)."""

from __future__ import annotations

from hundred.registry import register
from hundred.tracks.incremental.methods.finetune import Finetune


@register("incremental", "joint")
class Joint(Finetune):
    """Cross-entropy on the full data of all seen classes; no memory needed (it inherits
    ``exemplars = "never"``: it keeps no exemplars, so ``incremental.memory=0`` is valid; as
    it ``trains_on_all_seen`` it is the upper bound, never an exemplar-free run)."""

    trains_on_all_seen = True
