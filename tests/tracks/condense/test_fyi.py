"""FYI (Son et al., ECCV 2024) on the distribution-matching methods: each synthetic class
batch is matched together with its horizontal flip."""

import pytest
import torch

from hundred.tracks.condense.methods.datadam import DataDAM
from hundred.tracks.condense.methods.dm import DM
from hundred.tracks.condense.synthetic import SyntheticSet

METHODS = [DM, DataDAM]


def _loss(cls, synthetic, ctx, fyi, seed=0):
    torch.manual_seed(seed)
    return cls({"fyi": fyi}, config=ctx.config).matching_loss(synthetic, ctx)


def _symmetric(synthetic):
    images = synthetic.images.detach()
    return SyntheticSet((images + images.flip(-1)) / 2, synthetic.labels)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_a_flip_symmetric_set_loses_the_same_with_or_without_fyi(cls, make_context,
                                                                 random_set):
    ctx = make_context("condense.ipc=2", "condense.real_batch=2", per_class=4)
    symmetric = _symmetric(random_set(2))
    assert torch.equal(symmetric.images, symmetric.images.flip(-1))
    with_fyi = _loss(cls, symmetric, ctx, fyi=True)
    without = _loss(cls, symmetric, ctx, fyi=False)
    assert with_fyi > 0
    assert torch.allclose(with_fyi, without, rtol=1e-5)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_fyi_changes_the_loss_of_an_asymmetric_set(cls, make_context, random_set):
    ctx = make_context("condense.ipc=2", "condense.real_batch=2", per_class=4)
    synthetic = random_set(2)
    with_fyi = _loss(cls, synthetic, ctx, fyi=True)
    without = _loss(cls, synthetic, ctx, fyi=False)
    assert not torch.allclose(with_fyi, without, rtol=1e-3)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
@pytest.mark.parametrize("fyi", [False, True])
def test_fyi_doubles_each_matched_class_batch_with_its_flip(cls, fyi, make_context,
                                                            random_set):
    ctx = make_context("condense.ipc=2", "condense.real_batch=3", per_class=4)
    seen = []

    def siamese(real, synthetic):  # DSA off: record what is matched
        seen.append((real, synthetic))
        return real, synthetic

    ctx.siamese = siamese
    synthetic = random_set(2)
    torch.manual_seed(0)
    cls({"fyi": fyi}, config=ctx.config).matching_loss(synthetic, ctx)
    assert len(seen) == 4  # one matched pair per class
    for label, (real, matched) in enumerate(seen):
        own = synthetic.class_images(label).detach()
        assert real.shape[0] == 3
        if fyi:
            assert matched.shape[0] == 4
            assert torch.equal(matched[:2].detach(), own)
            assert torch.equal(matched[2:].detach(), own.flip(-1))
        else:
            assert torch.equal(matched.detach(), own)
