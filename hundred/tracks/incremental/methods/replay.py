"""Experience replay with exemplars: cross-entropy on the new task's data plus the exemplar
memory (the "Replay" baseline of PyCIL and of Chaudhry et al., "On Tiny Episodic Memories in
Continual Learning", 2019)."""

from __future__ import annotations

from hundred.registry import register
from hundred.tracks.incremental.methods.finetune import Finetune


@register("incremental", "replay")
class Replay(Finetune):
    """Finetune's loss on task data + memory (herding-selected by default)."""

    exemplars = "required"  # without exemplars it is finetune
