"""What a compress method adds to the engine's hook set.

The scenario trains the model with the shared trainer (``loss`` and the engine's hooks, as in
every track), then asks the method for the model it produced and measures that one
(:mod:`hundred.engine.cost`). A method overrides only what its paper needs:

* ``needs_flops_target`` — the method aims at ``compress.flops_target`` (a pruning method);
  the scenario refuses a run without one before anything is written;
* :meth:`CompressMethod.prepare` — with the loaded data, before the run directory exists:
  check what the method needs (e.g. that Torch-Pruning can trace the model), so a run that
  cannot work writes nothing;
* :meth:`CompressMethod.train_loader` — the training batches (a method that alternates
  weight and architecture updates on two halves of the train split supplies its own);
* :meth:`CompressMethod.compressed_model` — after training: the model to measure and export
  (a pruning method physically removes its zeroed groups here). The default is the trained
  model itself, which is what the dense baseline and memory-saving training export;
* :meth:`CompressMethod.reference_model` — the uncompressed network ``dense_flops`` is
  measured on (the trained model by default; the dense one for a method that trains an
  already thinned network);
* :meth:`CompressMethod.extra_measurements` — after the shared measurements: summary entries
  of the method's own cost measures on the compressed model (a spiking network's spike
  rates, synaptic operations and energy estimate); none by default.

The exported model must be buildable from the exported ``model:`` config: the run's, with a
physically narrower model's widths as the width plan ``model.options.pruned_widths``
(:mod:`hundred.models.widths`), which the export writes itself; that is what ``--init
RUN_DIR`` and ``hundred attack RUN_DIR`` build before loading the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.method import Method

if TYPE_CHECKING:
    from hundred.data.loader import BatchLoader
    from hundred.engine.run import RunContext
    from hundred.models import Classifier


class CompressMethod(Method):
    """Base class of the compress track's methods."""

    needs_flops_target: ClassVar[bool] = False

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        """Called once the data is loaded, before the run directory is created: check what
        the method needs (nothing by default)."""

    def train_loader(self, ctx: RunContext, dataset: Dataset) -> BatchLoader:
        """The training batches: the run's augmentation of the train split."""
        from hundred.engine.run import train_loader

        return train_loader(ctx, dataset, views=self.views)

    def compressed_model(self, model: Classifier) -> Classifier:
        """The model this method produced from the trained ``model`` (the EMA model when the
        run keeps one): the one that is measured, evaluated and exported. The trained model
        itself by default."""
        return model

    def reference_model(self, model: Classifier) -> nn.Module:
        """The uncompressed network the FLOPs ratio (``dense_flops``) is measured on, given the
        trained ``model``: the trained model itself by default; a method that trains an
        already thinned network (the uniform baseline) returns the dense one."""
        return model

    def extra_measurements(self, model: Classifier, loader: BatchLoader) -> dict[str, Any]:
        """Summary entries of measurements of the compressed ``model`` (eval mode) that only
        this method's kind of model has, on ``loader``'s batches (the val split, in order,
        without augmentation); called on rank 0 after the shared measurements. None by
        default."""
        return {}
