"""The cost measurements every compress run reports (hundred.engine.cost), against hand
counts: parameters, fvcore's MACs (one multiply-add = one flop) and FLOPs = 2 x MACs,
sparsity over conv/linear weights, layer widths, latency, and the bytes one forward pass
saves for backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hundred.engine.cost import (count_flops, count_parameters, measure_latency,
                                 saved_tensor_bytes, sparsity, structure)
from hundred.report.plots import pareto_front


def tiny_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_parameter_count_equals_the_hand_count_and_counts_a_shared_tensor_once():
    # conv 3*4*3*3 + 4 bias, batch norm 4 + 4, linear 4*2 + 2
    assert count_parameters(tiny_net()) == 108 + 4 + 8 + 8 + 2
    shared = nn.Linear(5, 5, bias=False)
    assert count_parameters(nn.Sequential(shared, nn.ReLU(), shared)) == 25
    net = tiny_net()
    net[0].requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == 8 + 8 + 2


@pytest.mark.parametrize("kernel, cin, cout, size", [(3, 3, 5, 8), (1, 3, 7, 4)])
def test_fvcore_macs_of_a_conv_are_the_closed_form_and_flops_twice_that(kernel, cin, cout,
                                                                         size):
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    count = count_flops(conv, size)
    assert count.macs == kernel * kernel * cin * cout * size * size  # bias not counted
    assert count.flops == 2 * count.macs
    assert count.input_shape == (1, cin, size, size) and "multiply-add = 1" in count.convention


def test_fvcore_macs_of_a_linear_layer_are_in_times_out():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 7))
    count = count_flops(net, 4)
    assert count.macs == 48 * 7 and count.flops == 2 * 48 * 7
    assert count.by_operator == {"linear": 48 * 7}


def test_flop_count_keeps_the_models_mode():
    net = tiny_net().train()
    count_flops(net, 8)
    assert all(module.training for module in net.modules())


def test_sparsity_of_a_net_with_half_its_prunable_weights_zeroed_is_one_half():
    net = tiny_net()
    assert sparsity(net) == 0.0
    with torch.no_grad():
        for layer in (net[0], net[5]):
            flat = layer.weight.view(-1)
            flat[: flat.numel() // 2] = 0
            layer.bias.zero_()  # biases are not prunable weights: they do not count
        net[1].weight.zero_()  # nor are normalisation parameters
    assert sparsity(net) == pytest.approx(0.5)


def test_structure_lists_the_output_width_of_every_conv_and_linear_layer():
    assert structure(tiny_net()) == {"0": 4, "5": 2}


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("batch", [6, 3])
def test_saved_bytes_of_a_tiny_mlp_equal_the_hand_count(batch):
    net = mlp()
    images = torch.randn(batch, 4)
    saved = saved_tensor_bytes(lambda: net(images).sum(), net.parameters())
    # saved for backward: the input (first linear, for its weight's gradient, B x 4) and the
    # ReLU's output (for the ReLU, and the second linear's input: one storage, B x 8), in
    # float32; the second linear also keeps its weight (8 x 3) for the input's gradient
    assert saved.activation_bytes == (batch * 4 + batch * 8) * 4
    assert saved.parameter_bytes == 8 * 3 * 4
    assert saved.tensors == 4 and saved.storages == 3


def test_saved_activation_bytes_scale_with_the_batch():
    net = mlp()
    sizes = [saved_tensor_bytes(lambda b=b: net(torch.randn(b, 4)).sum(),
                                net.parameters()).activation_bytes for b in (8, 4)]
    assert sizes[0] == 2 * sizes[1]


def test_latency_gives_positive_medians_at_each_batch_size_and_the_thread_count():
    net = tiny_net().train()
    latency = measure_latency(net, 8, batch_sizes=(1, 4), warmup=1, repeats=3)
    assert set(latency.median_ms) == {1, 4} and min(latency.median_ms.values()) > 0
    assert latency.threads == torch.get_num_threads() and latency.device == "cpu"
    assert latency.record()["median_ms"].keys() == {"1", "4"}
    assert net.training  # the mode is restored
    with pytest.raises(ValueError):
        measure_latency(net, 8, batch_sizes=(0,))


def test_pareto_front_keeps_the_undominated_points_by_increasing_cost():
    points = [(3, 20), (1, 10), (2, 5), (4, 15), (5, 30), (5, 25)]
    assert pareto_front(points) == [(1, 10), (3, 20), (5, 30)]
    assert pareto_front(points, higher_is_better=False) == [(1, 10), (2, 5)]
