"""Online distillation: the run's model (the student) is trained together with a second network
from scratch, in one loss and one backward, instead of against a frozen pretrained teacher.

:class:`OnlineDistillationMethod` owns the second network, called the *peer* (DML's second
network, BD-KD's online teacher). It is built in :meth:`setup` with ``add_trainable("peer",
...)``, so the trainer moves it to the device, optimises it with the student under the same
optimiser and schedule, averages its gradients under DDP and saves it in every checkpoint as
``method.peer.*`` keys; the run's model (evaluated, saved, reported) stays the plain student.
Both networks see the same augmented batch. Each step, :meth:`loss` returns

    CE(student) + CE(peer) + mutual_terms(student_logits, peer_logits)

and a subclass defines ``mutual_terms``: the two networks' distillation terms, each against
the *other's detached* outputs, so that one backward gives each network the gradient of its
own loss only (the simultaneous form of DML's alternating updates).

The peer's architecture is ``method_params.peer`` (a model name, as ``model.name``); ``None``
means the student's own architecture (and its ``model.options``), which runs with any model.
A pretrained teacher (``classify.teacher``, ``--teacher``) is refused: it would be ignored.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.tracks.classify.method import ClassifyMethod


class OnlineParams(BaseModel):
    """The hyperparameter every online-distillation method has: the peer's architecture."""

    model_config = ConfigDict(extra="forbid")

    peer: Optional[str] = Field(
        None, description="architecture of the network trained alongside the student (a "
        "model name, like model.name); None: the student's own architecture and options")


class OnlineDistillationMethod(ClassifyMethod):
    """A student trained together with a peer network, both from scratch (see the module)."""

    Params = OnlineParams
    _num_classes: int | None = None
    _image_size: int | None = None

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        if config.classify.teacher is not None:
            raise HundredError(
                f"{self.track}/{self.name} trains its own peer network from scratch alongside "
                f"the student and would ignore the teacher {config.classify.teacher!r}: drop "
                "--teacher / classify.teacher (choose the peer with --set method_params.peer=NAME)")
        self._num_classes = dataset.num_classes
        self._image_size = image_size

    def teacher_label(self) -> str | None:
        return f"online {self.peer_name()} (trained with the student)"

    def peer_name(self) -> str:
        """The peer's architecture: ``method_params.peer``, else the student's ``model.name``."""
        return self.params.peer or self.config.model.name

    def build_peer(self) -> nn.Module:
        """A fresh peer for the prepared data (classes, image size), with the student's head;
        the student's ``model.options`` go with it only when it has the student's architecture."""
        if self._num_classes is None:
            raise HundredError(f"{self.track}/{self.name}: the data was not prepared (prepare() "
                               "records the number of classes and the image size)")
        from hundred.models import create

        name = self.peer_name()
        options = self.config.model.options if name == self.config.model.name else {}
        return create(name, self._num_classes, head=self.config.model.head,
                      img_size=self._image_size, **options)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "peer" not in self.trainable:
            peer = self.build_peer()
            if ctx.device.type == "cuda" and self.config.model.channels_last:
                peer = peer.to(memory_format=torch.channels_last)  # as the trainer does the model
            self.add_trainable("peer", peer)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        student_logits = model(images)
        peer_logits = self.trainable["peer"](images)
        smoothing = self.config.train.label_smoothing
        return (cross_entropy(student_logits, labels, smoothing)
                + cross_entropy(peer_logits, labels, smoothing)
                + self.mutual_terms(student_logits, peer_logits))

    @abstractmethod
    def mutual_terms(self, student_logits: torch.Tensor, peer_logits: torch.Tensor
                     ) -> torch.Tensor:
        """The sum of both networks' distillation terms (the cross-entropies are added by
        :meth:`loss`); each network's target is the other's output, detached."""
