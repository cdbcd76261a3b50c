"""DM (Zhao & Bilen, WACV 2023): per-class mean embeddings under a fresh random network."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from hundred.models import Classifier
from hundred.registry import get_method
from hundred.tracks.condense.methods.dm import DM
from hundred.tracks.condense.synthetic import SyntheticSet


def _loss(method, synthetic, ctx, seed=0):
    torch.manual_seed(seed)
    return method.matching_loss(synthetic, ctx)


@pytest.mark.parametrize("name", ["dm", "datadam"])
def test_loss_vanishes_when_the_set_is_each_whole_class(make_context, whole_classes, name):
    # ipc = the class size and real_batch >= it: each real batch is the whole class (in a
    # random order), so the mean embeddings (and DataDAM's mean attention maps) agree
    # whatever the network.
    ctx = make_context(f"method={name}", "condense.ipc=3", "condense.real_batch=256")
    method = get_method("condense", name)(config=ctx.config)
    exact = whole_classes(ctx)
    loss = _loss(method, exact, ctx)
    moved = SyntheticSet(exact.images.detach() + 0.3 * torch.randn_like(exact.images),
                         exact.labels)
    control = _loss(method, moved, ctx)
    assert control > 1e-3
    assert loss <= 1e-6 * control


class _Flatten(nn.Module):
    """A linear embedding: the pixels themselves."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.feature_dim = 3 * size * size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_one_image_at_the_class_mean_matches_under_a_linear_embedding(make_context):
    # DM matches first moments: with a linear embedding, one synthetic image per class equal
    # to the class's mean image is a perfect match; a real image of the class is not.
    ctx = make_context("condense.ipc=1", "condense.real_batch=256", per_class=5)
    ctx.new_network = lambda name=None: Classifier(_Flatten(8), nn.Linear(192, 4))
    method = DM(config=ctx.config)
    labels = torch.arange(4)
    means = torch.stack([ctx.real.take(idx).mean(0) for idx in ctx.real.class_indices])
    firsts = torch.stack([ctx.real.take(idx[:1])[0] for idx in ctx.real.class_indices])
    at_mean = _loss(method, SyntheticSet(means, labels), ctx)
    at_first = _loss(method, SyntheticSet(firsts, labels), ctx)
    assert at_first > 1.0
    assert at_mean <= 1e-6 * at_first
    # and the loss is the sum over classes of the squared distance of the means
    expected = sum((m - f).pow(2).sum() for m, f in zip(means, firsts))
    assert torch.allclose(at_first, expected, rtol=1e-5)


def test_gradient_reaches_every_synthetic_pixel_block_but_no_network_weight(make_context,
                                                                            random_set):
    ctx = make_context("condense.ipc=2")
    networks = []
    new_network = ctx.new_network

    def recording(name=None):
        networks.append(new_network(name))
        return networks[-1]

    ctx.new_network = recording
    method = DM(config=ctx.config)
    synthetic = random_set(2)
    torch.manual_seed(0)
    logs = method.compute_gradients(synthetic, ctx)
    assert logs["loss"] > 0
    grad = synthetic.images.grad
    assert grad is not None
    for label in range(4):
        assert grad[label * 2:(label + 1) * 2].abs().sum() > 0
    assert len(networks) == 1
    assert all(p.grad is None and not p.requires_grad for p in networks[0].parameters())


def test_each_iteration_draws_a_fresh_network_from_the_global_rng(make_context, random_set):
    ctx = make_context("condense.ipc=2", "condense.real_batch=2", per_class=6)
    method = DM(config=ctx.config)
    synthetic = random_set(2)
    torch.manual_seed(5)
    first = method.matching_loss(synthetic, ctx)
    second = method.matching_loss(synthetic, ctx)
    assert not torch.allclose(first, second)  # another network and other real batches
    torch.manual_seed(5)
    assert torch.equal(method.matching_loss(synthetic, ctx), first)  # resume redraws them


def test_paper_defaults():
    assert DM.default_image_lr == 1.0
    assert DM.Params().fyi is False
    with pytest.raises(ValidationError):
        DM.Params(unknown=1)
