"""What a compat method adds to the engine's hook set.

The scenario trains (or reuses) the old model, computes its class prototypes, hands both to
the method (:meth:`CompatMethod.attach_old`), then builds the new model with the method's
embedding dimension and head and trains it with the shared trainer (``loss`` as in every
track). Retrieval reads the new model's embedding, ``model.features(images)``.

* :meth:`CompatMethod.embedding_dim` — the new embedding's dimension given the old one
  (the same by default; OCA extends it);
* :meth:`CompatMethod.build_head` — the new model's classification head on that embedding
  (a bias-free linear classifier by default; OCA puts its orthogonal transformation first);
* :meth:`CompatMethod.attach_old` — receive the frozen old model and its prototypes before
  training; a method registers what it uses with ``add_frozen`` (so it follows the device and
  stays out of the optimiser and the checkpoint).
"""

from __future__ import annotations

from torch import nn

from hundred.engine.method import Method
from hundred.tracks.compat.embedding import OldModel, linear_classifier


class CompatMethod(Method):
    """Base class of the compat track's methods."""

    old: OldModel | None = None

    def embedding_dim(self, old_dim: int) -> int:
        """The new model's embedding dimension (the old model's by default)."""
        return old_dim

    def build_head(self, dim: int, num_classes: int) -> nn.Module:
        """The new model's head on its ``dim``-d embedding."""
        return linear_classifier(dim, num_classes)

    def attach_old(self, old: OldModel) -> None:
        """Called once before the new model's training with the frozen old model."""
        self.old = old
