"""What a federated method adds to the engine's hook set.

A client trains with the shared :class:`~hundred.engine.trainer.Trainer` (``loss`` and the
engine's hooks, as in every track) on its own partition for a few local epochs; Flower's
FedAvg averages what the client sends. A method says what is sent and how it predicts:

* ``local_modules`` — names of the method's own trainable modules (``add_trainable``) that
  stay on each client and are never sent nor averaged (FedLoGe's local heads); every other
  trainable module and the whole model are shared;
* :meth:`FederatedMethod.prepare` — before the run directory exists, given the class count
  and the backbone's feature size: refuse what cannot work (nothing by default);
* :meth:`FederatedMethod.shared_state` / :meth:`FederatedMethod.load_shared_state` — the
  tensors a client sends and receives (model + shared method modules, ``method.<name>.*``);
* :meth:`FederatedMethod.local_state` / :meth:`FederatedMethod.load_local_state` — the
  tensors a client keeps between the rounds it is sampled in;
* :meth:`FederatedMethod.generic_logits` — the global model's prediction on the balanced
  test set (the model's head by default);
* :meth:`FederatedMethod.personal_logits` — client ``i``'s prediction on its own test set,
  after :meth:`load_local_state` of its state (the generic prediction by default).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from hundred.config import RunConfig
from hundred.engine.method import Method
from hundred.models import Classifier

METHOD_PREFIX = "method."


class FederatedMethod(Method):
    """Base class of the federated track's methods."""

    local_modules: ClassVar[tuple[str, ...]] = ()

    def prepare(self, config: RunConfig, num_classes: int, feature_dim: int) -> None:
        """Called before the run directory is created: check what the method needs."""

    def _shared_modules(self) -> dict[str, nn.Module]:
        return {name: module for name, module in self.trainable.items()
                if name not in self.local_modules}

    def shared_state(self, model: Classifier) -> dict[str, torch.Tensor]:
        """What a client sends to the server and the server averages."""
        state = dict(model.state_dict())
        for name, module in self._shared_modules().items():
            state.update({f"{METHOD_PREFIX}{name}.{k}": v
                          for k, v in module.state_dict().items()})
        return state

    def load_shared_state(self, model: Classifier, state: dict[str, torch.Tensor]) -> None:
        """Load the aggregated ``state`` (a :meth:`shared_state`) into ``model`` and the
        shared method modules."""
        model.load_state_dict({k: v for k, v in state.items()
                               if not k.startswith(METHOD_PREFIX)})
        for name, module in self._shared_modules().items():
            prefix = f"{METHOD_PREFIX}{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                    if k.startswith(prefix)})

    def local_state(self) -> dict[str, torch.Tensor]:
        """What a client keeps for itself (copies)."""
        return {f"{name}.{k}": v.detach().clone() for name in self.local_modules
                for k, v in self.trainable[name].state_dict().items()}

    def load_local_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.local_modules:
            prefix = f"{name}."
            self.trainable[name].load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                                  if k.startswith(prefix)})

    def generic_logits(self, model: Classifier, features: torch.Tensor) -> torch.Tensor:
        """Logits of the global model for the backbone's ``features`` (the model's head)."""
        return model.head(features)

    def personal_logits(self, model: Classifier, features: torch.Tensor) -> torch.Tensor:
        """Logits of one client (its local state loaded); the generic ones by default."""
        return self.generic_logits(model, features)
