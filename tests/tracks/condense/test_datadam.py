"""DataDAM (Sajedi et al., ICCV 2023): spatial attention matching of the intermediate layers
plus mean matching of the final embeddings, under a fresh random network."""

import math

import pytest
import torch
from torch import nn

from hundred.tracks.condense.methods.datadam import DataDAM, attention_layers, attention_map


def _loss(method, synthetic, ctx, seed=0):
    torch.manual_seed(seed)
    return method.matching_loss(synthetic, ctx)


@pytest.mark.parametrize("power", [1.0, 2.0, 4.0])
def test_attention_map_ignores_the_order_of_channels(power):
    torch.manual_seed(0)
    features = torch.randn(3, 6, 4, 4)
    permuted = features[:, torch.randperm(6)]
    assert torch.allclose(attention_map(features, power), attention_map(permuted, power),
                          atol=1e-6)
    # but it does see where the activity is
    shifted = features.roll(1, dims=-1)
    assert not torch.allclose(attention_map(features, power), attention_map(shifted, power))


def test_attention_map_by_hand_on_two_channels():
    # one image, 2 channels, 1 x 2 pixels: f_0 = [1, -2], f_1 = [2, 0]
    features = torch.tensor([[[[1.0, -2.0]], [[2.0, 0.0]]]])
    # p = 2: a = [1 + 4, 4 + 0] = [5, 4], normalised by sqrt(41)
    expected = torch.tensor([[5.0, 4.0]]) / math.sqrt(41.0)
    assert torch.allclose(attention_map(features, 2.0), expected)
    # p = 1: a = [1 + 2, 2 + 0] = [3, 2], normalised by sqrt(13)
    expected = torch.tensor([[3.0, 2.0]]) / math.sqrt(13.0)
    assert torch.allclose(attention_map(features, 1.0), expected)
    assert attention_map(features, 4.0).shape == (1, 2)


def test_matched_layers_are_the_activations_of_every_block_but_the_last(make_context):
    ctx = make_context()
    torch.manual_seed(0)
    network = ctx.new_network()
    layers = attention_layers(network)
    activations = [m for m in network.backbone.layers
                   if not isinstance(m, (nn.Conv2d, nn.GroupNorm, nn.AvgPool2d))]
    assert len(activations) == 3
    assert layers == activations[:2]
    method = DataDAM(config=ctx.config)
    described = method.describe(network, torch.randn(5, 3, 8, 8))
    # two attention maps (8x8 and 4x4 positions), then the flattened final features
    assert [tuple(t.shape) for t in described] == [(5, 64), (5, 16), (5, network.feature_dim)]


def test_loss_is_scaled_sum_of_attention_and_weighted_embedding_terms(make_context,
                                                                      random_set):
    ctx = make_context("method=datadam", "condense.ipc=2", "condense.real_batch=2",
                       per_class=4)
    synthetic = random_set(2)

    def loss(**params):
        return _loss(DataDAM(params, config=ctx.config), synthetic, ctx)

    attention = loss(loss_scale=1.0, task_balance=0.0)
    with_embedding = loss(loss_scale=1.0, task_balance=1.0)
    embedding = with_embedding - attention
    assert attention > 0 and embedding > 0
    assert torch.allclose(loss(), 100.0 * (attention + 0.01 * embedding), rtol=1e-4)
    # p changes the attention term only
    assert not torch.allclose(loss(power=1.0, loss_scale=1.0, task_balance=0.0), attention)


def test_gradient_reaches_the_synthetic_pixels(make_context, random_set):
    ctx = make_context("method=datadam", "condense.ipc=2")
    method = DataDAM(config=ctx.config)
    synthetic = random_set(2)
    torch.manual_seed(0)
    logs = method.compute_gradients(synthetic, ctx)
    assert logs["loss"] > 0
    grad = synthetic.images.grad
    for label in range(4):
        assert grad[label * 2:(label + 1) * 2].abs().sum() > 0


def test_attention_term_alone_has_a_gradient(make_context, random_set):
    # the hooked intermediate activations keep their graph: L_SAM alone moves the pixels
    ctx = make_context("method=datadam", "condense.ipc=1")
    method = DataDAM({"task_balance": 0.0}, config=ctx.config)
    synthetic = random_set(1)
    torch.manual_seed(0)
    method.compute_gradients(synthetic, ctx)
    assert synthetic.images.grad.abs().sum() > 0


def test_paper_defaults(make_context):
    params = DataDAM.Params()
    assert (params.power, params.task_balance, params.loss_scale) == (4.0, 0.01, 100.0)
    low = make_context("method=datadam", "condense.ipc=50").config
    high = make_context("method=datadam", "condense.ipc=51").config
    chosen = make_context("method=datadam", "condense.ipc=51", "condense.image_lr=0.5").config
    method = DataDAM(config=low)
    assert method.image_lr(low) == 1.0
    assert method.image_lr(high) == 10.0
    assert method.image_lr(chosen) == 0.5
