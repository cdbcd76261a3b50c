"""The defining claims of the compat methods at tiny scale: OCA's transformation stays
orthogonal through training and preserves the new embedding's geometry; an embedding whose
old coordinates are the old model's gives the old model's distances against an old gallery;
BCT's influence loss goes through the frozen old classifier, which training leaves as it
was."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hundred.config import build_config
from hundred.engine.trainer import Trainer
from hundred.tracks.compat.embedding import (OldModel, class_prototypes, embedding_model,
                                             linear_classifier)
from hundred.tracks.compat.methods.bct import BCT
from hundred.tracks.compat.methods.oca import OCA, OrthogonalHead
from hundred.tracks.compat.retrieval import cosine_distances

NUM_CLASSES, NUM_OLD, OLD_DIM, SIZE = 4, 2, 6, 8


def tiny_config(method: str):
    return build_config(overrides=[
        "track=compat", f"method={method}", "model.name=resnet20", "model.options={width: 4}",
        f"compat.embed_dim={OLD_DIM}", "train.epochs=2", "train.device=cpu", "quiet=true",
        "optim.lr=0.5"])


def batches(count: int = 3, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.rand(size, 3, SIZE, SIZE, generator=generator),
             torch.randint(0, NUM_CLASSES, (size,), generator=generator)) for _ in range(count)]


class ListLoader(list):
    """The trainer's loader protocol over a fixed list of batches."""

    num_samples = 24

    def set_epoch(self, epoch: int) -> None:
        pass


def old_model_for(config) -> OldModel:
    torch.manual_seed(0)
    model = embedding_model(config.model, SIZE, OLD_DIM, linear_classifier(OLD_DIM, NUM_OLD))
    model.eval().requires_grad_(False)
    return OldModel(model, OLD_DIM, NUM_OLD, class_prototypes(model, batches(), NUM_CLASSES))


def trained(method_class, method: str, params: dict | None = None):
    config = tiny_config(method)
    method = method_class(params, config)
    old = old_model_for(config)
    method.attach_old(old)
    dim = method.embedding_dim(OLD_DIM)
    model = embedding_model(config.model, SIZE, dim, method.build_head(dim, NUM_CLASSES))
    before = copy.deepcopy(model.state_dict())
    Trainer(config, model, method, ListLoader(batches()), None, torch.device("cpu")).fit()
    return method, model, old, before


def test_oca_transformation_stays_orthogonal_through_training():
    method, model, _, before = trained(OCA, "oca", {"extra_dims": 3})
    weight = model.head.transform.weight
    assert weight.shape == (OLD_DIM + 3, OLD_DIM + 3)
    assert torch.allclose(weight @ weight.T, torch.eye(OLD_DIM + 3), atol=1e-5)
    # it did train (6 optimiser steps moved it)
    assert not torch.allclose(weight, _transform_weight(before), atol=1e-4)


def _transform_weight(state: dict) -> torch.Tensor:
    head = OrthogonalHead(OLD_DIM + 3, NUM_CLASSES)
    head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return head.transform.weight.detach()


def test_the_orthogonal_transformation_preserves_the_embedding_geometry():
    head = OrthogonalHead(10, NUM_CLASSES)
    with torch.no_grad():
        head.transform.weight = torch.linalg.qr(torch.randn(10, 10))[0]
    embeddings = torch.randn(12, 10)
    transformed = head.transform(embeddings)
    assert torch.allclose(torch.cdist(transformed, transformed),
                          torch.cdist(embeddings, embeddings), atol=1e-5)


def test_old_coordinates_equal_to_the_old_embedding_give_the_old_distances():
    config = tiny_config("oca")
    old = old_model_for(config)
    method = OCA({"extra_dims": 4}, config)
    dim = method.embedding_dim(OLD_DIM)
    new = embedding_model(config.model, SIZE, dim, method.build_head(dim, NUM_CLASSES)).eval()
    # the new network is the old one and its projection is the old one's on the old dimensions
    # (identity there), with 4 more coordinates of its own
    new.backbone.network.load_state_dict(old.model.backbone.network.state_dict())
    with torch.no_grad():
        new.backbone.projection.weight[:OLD_DIM] = old.model.backbone.projection.weight
        new.backbone.projection.bias[:OLD_DIM] = old.model.backbone.projection.bias
    images = torch.cat([b[0] for b in batches()])
    with torch.no_grad():
        old_f, new_f = old.model.features(images), new.features(images)
    assert new_f.shape[1] == OLD_DIM + 4
    assert torch.allclose(cosine_distances(new_f, old_f), cosine_distances(old_f, old_f),
                          atol=1e-5)


def test_bct_influence_goes_through_the_frozen_old_classifier():
    method, model, old, before = trained(BCT, "bct")
    head = old.model.head
    frozen_before = old_model_for(tiny_config("bct")).model.head.weight  # the same seed
    assert torch.equal(head.weight, frozen_before)  # training left it unchanged
    assert not head.weight.requires_grad and method.frozen["influence"].old_head is head
    assert not any(name.startswith("method.") for name in method.checkpointed().state_dict())
    assert not torch.equal(model.state_dict()["backbone.projection.weight"],
                           before["backbone.projection.weight"])
    # the influence term depends on the old classifier: change it and the loss changes
    images, labels = batches()[0]
    model.eval()
    loss = method.loss(model, images, labels)
    with torch.no_grad():
        head.weight.mul_(3.0)
    assert not torch.allclose(method.loss(model, images, labels), loss)


def test_oca_losses_pull_the_old_coordinates_to_the_prototypes():
    config = tiny_config("oca")
    method = OCA({"extra_dims": 2, "ce_weight": 0.0}, config)
    old = old_model_for(config)
    method.attach_old(old)
    dim = method.embedding_dim(OLD_DIM)
    model = embedding_model(config.model, SIZE, dim, method.build_head(dim, NUM_CLASSES))
    images, labels = batches()[0]
    first = method.losses(model, images, labels)["alignment"]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(10):
        optimiser.zero_grad()
        method.loss(model, images, labels).backward()
        optimiser.step()
    assert method.losses(model, images, labels)["alignment"] < first
    assert isinstance(model.head, nn.Module) and model.feature_dim == OLD_DIM + 2
