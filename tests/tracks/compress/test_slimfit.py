"""SlimFit on a tiny ViT: the update magnitude is the paper's formula, the scheduler freezes
exactly floor(fraction x layers) layers of lowest magnitude (every layer tried first), frozen
layers do not move under SGD with momentum or AdamW with weight decay, the saved activations
shrink against plain fine-tuning while the gradients of the trained layers stay close to
exact, and a fine-tuning run from a dense ViT run records its frozen fraction and bytes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.cost import saved_tensor_bytes
from hundred.engine.losses import cross_entropy
from hundred.engine.trainer import build_optimizer
from hundred.models import create
from hundred.tracks.compress.methods.slimfit import (LayerScheduler, SlimFit, candidate_layers,
                                                     update_magnitude)

VIT = "model.options={depth: 2, embed_dim: 32, num_heads: 2, mlp_ratio: 2.0}"
TINY = "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}"
SETTINGS = [TINY, "model.name=vit_tiny_p4_32", VIT, "data.batch_size=8", "quiet=true",
            "compress.latency_batch=2", "compress.latency_warmup=0",
            "compress.latency_repeats=1", "train.epochs=1"]
EXACT = {"linear_bits": None, "gelu_bits": None, "attention_bits": None,
         "layer_norm_keep": None}


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("vit_tiny_p4_32", 4, img_size=16, depth=2, embed_dim=32, num_heads=2,
                  mlp_ratio=2.0)


def slimfit(model: torch.nn.Module, *overrides: str, **params) -> SlimFit:
    config = build_config(overrides=["track=compress", "method=slimfit", *overrides])
    method = SlimFit(params, config)
    method.setup(model, None)
    return method


def batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 16, 16, generator=generator), torch.arange(size) % 4


def test_update_magnitude_is_the_relative_l1_change_per_entry():
    previous = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    current = torch.tensor([[1.5, -1.0], [0.5, 3.0]])
    # |(1 - 1.5)/1| + |(-2 + 1)/-2| + 0 + (zero entry skipped), over 4 entries
    assert update_magnitude(previous, current) == pytest.approx((0.5 + 0.5) / 4)
    weights = torch.randn(6, 5)
    moved = weights + 0.01 * torch.randn(6, 5)
    expected = torch.norm((weights - moved) / weights / weights.numel(), p=1)  # the formula
    assert update_magnitude(weights, moved) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.95])
def test_the_scheduler_freezes_the_fraction_of_lowest_magnitude(fraction):
    count = 15
    scheduler = LayerScheduler(count, fraction, seed=3)
    frozen_count = math.floor(fraction * count)  # 7, 13, 14
    assert scheduler.frozen_count == frozen_count
    # exploration: never-trained layers rank above measured ones, so every layer is trained
    # within the first ceil(n / (n - frozen)) iterations
    trained_first: set[int] = set()
    for _ in range(math.ceil(count / (count - frozen_count))):
        frozen = scheduler.choose()
        assert len(frozen) == frozen_count
        for index in set(range(count)) - set(frozen):
            trained_first.add(index)
            scheduler.record(index, float(torch.rand(())))
    assert trained_first == set(range(count))
    magnitudes = torch.rand(count, dtype=torch.float64)
    for index in range(count):
        scheduler.magnitudes[index] = float(magnitudes[index])
    assert scheduler.choose() == sorted(torch.argsort(magnitudes)[:frozen_count].tolist())


def test_candidates_are_the_weights_and_block_norms_never_the_head():
    names = [name for name, _ in candidate_layers(tiny_vit())]
    assert "backbone.model.blocks.0.norm1.weight" in names
    assert "backbone.model.blocks.1.mlp.fc2.weight" in names
    assert "backbone.model.pos_embed" in names
    assert not any(name.startswith("head.") or name.endswith(".bias") for name in names)
    assert "backbone.model.norm.weight" not in names  # the final norm always trains
    assert len(names) == 3 + 2 * 6


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_layers_are_bit_identical_after_a_step(optimizer):
    model = tiny_vit()
    method = slimfit(model, f"optim.name={optimizer}", "optim.momentum=0.9",
                     "optim.weight_decay=0.1", "optim.lr=0.05", "optim.decay_norm_and_bias=true")
    optim = build_optimizer(model, method.config.optim)
    images, labels = batch()
    moved_once = set()
    for _ in range(4):  # after the first steps every layer has momentum / Adam state
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        states = {name: {k: v.clone() for k, v in optim.state[p].items()
                         if isinstance(v, torch.Tensor)} for name, p in model.named_parameters()}
        optim.zero_grad(set_to_none=True)
        method.loss(model, images, labels).backward()
        frozen = {method.layers[i][0] for i in method.frozen_layers}
        optim.step()
        method.after_optimizer_step(model)
        assert len(frozen) == math.floor(0.9 * len(method.layers))
        for name, parameter in model.named_parameters():
            if name in frozen:
                assert torch.equal(parameter, before[name]), name
                for key, value in optim.state[parameter].items():
                    if isinstance(value, torch.Tensor):
                        assert torch.equal(value, states[name][key]), (name, key)
            elif not torch.equal(parameter, before[name]):
                moved_once.add(name)
    trained = {name for name, _ in method.layers} - frozen
    assert trained <= moved_once and "head.weight" in moved_once


def test_saved_bytes_drop_against_plain_fine_tuning():
    images, labels = batch(16)
    model = tiny_vit()
    parameters = list(model.parameters())
    plain = saved_tensor_bytes(lambda: cross_entropy(model(images), labels), parameters)
    frozen_only = slimfit(model, **EXACT)
    freezing = saved_tensor_bytes(lambda: frozen_only.loss(model, images, labels), parameters)
    model = tiny_vit()
    method = slimfit(model)
    full = saved_tensor_bytes(lambda: method.loss(model, images, labels),
                              list(model.parameters()))
    # frozen layers keep no input for their weight gradient; compression shrinks the rest
    assert freezing.activation_bytes < 0.9 * plain.activation_bytes
    assert full.activation_bytes < 0.4 * plain.activation_bytes
    assert full.parameter_bytes == plain.parameter_bytes  # weights are not activations


def test_gradients_of_the_trained_layers_stay_close_to_exact():
    images, labels = batch(32)
    model = tiny_vit()
    exact = slimfit(model, **EXACT)
    model.zero_grad()
    exact.loss(model, images, labels).backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()
                 if p.grad is not None}
    compressed = slimfit(model)
    compressed.frozen_layers = list(exact.frozen_layers)  # the same layers frozen
    model.zero_grad()
    compressed.loss(model, images, labels).backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()
                 if p.grad is not None}
    assert gradients.keys() == reference.keys()
    frozen = {exact.layers[i][0] for i in exact.frozen_layers}
    assert not frozen & gradients.keys()
    flat = torch.cat([gradients[name].flatten() for name in reference])
    flat_reference = torch.cat([reference[name].flatten() for name in reference])
    assert torch.cosine_similarity(flat, flat_reference, dim=0) > 0.99
    for name in reference:
        cosine = torch.cosine_similarity(gradients[name].flatten(),
                                         reference[name].flatten(), dim=0)
        assert cosine > 0.95, name


def test_fine_tuning_from_a_dense_vit_run_records_fraction_and_bytes(tmp_path):
    def run(method: str, *extra: str) -> dict:
        sets = [*SETTINGS, f"root={tmp_path}", "name=r", *extra]
        assert main(["run", "compress", method, "--device", "cpu",
                     *(part for setting in sets for part in ("--set", setting))]) == 0
        return json.loads((tmp_path / "compress" / method / "r" / "summary.json").read_text())

    dense = run("dense")
    tuned = run("slimfit", f"compress.init={tmp_path / 'compress' / 'dense' / 'r'}")
    record = tuned["slimfit"]
    assert tuned["init_weights"] == "model"
    assert record["frozen_per_step"] == math.floor(0.9 * record["layers"])
    assert record["frozen_fraction"] == pytest.approx(record["frozen_per_step"] / 15)
    assert record["steps"] == 4  # 32 images, batch 8, one epoch
    assert sum(record["trained_steps"].values()) == 4 * (15 - record["frozen_per_step"])
    assert tuned["saved_activation_bytes"] < 0.5 * dense["saved_activation_bytes"]
    lines = (tmp_path / "compress" / "slimfit" / "r" / "metrics.jsonl").read_text().splitlines()
    epoch = [json.loads(line) for line in lines if "slimfit_frozen_fraction" in line][-1]
    assert epoch["slimfit_frozen_fraction"] == record["frozen_fraction"]


def test_pruned_layer_norm_and_4_bit_codes():
    from hundred.engine.mesa import Mesa, Treatment

    model = tiny_vit()  # Mesa serves ViTs; its first block's modules are used directly
    block = model.backbone.model.blocks[0]
    norm, gelu = block.norm1.requires_grad_(False), block.mlp.act
    leaf = torch.randn(4, 8, 32, requires_grad=True)
    results = []
    for keep in (None, 1.0, 0.1):
        mesa = Mesa(model, policy=lambda m, kind: Treatment(keep=keep) if m is norm and keep
                    else None)

        def forward():
            with mesa.saving():
                return (norm(leaf * 1.0) ** 2).sum()  # an activation (not a leaf) is saved

        counted = saved_tensor_bytes(forward, list(model.parameters())).activation_bytes
        (approximate,) = torch.autograd.grad(forward(), leaf)
        (exact,) = torch.autograd.grad((norm(leaf * 1.0) ** 2).sum(), leaf)
        mesa.remove()
        results.append((counted, float(torch.cosine_similarity(approximate.flatten(),
                                                               exact.flatten(), dim=0))))
    (exact_bytes, exact_cosine), (_, full_cosine), (pruned_bytes, pruned_cosine) = results
    assert exact_cosine > 0.99999 and full_cosine > 0.9999  # keep=1: restored exactly
    # the LayerNorm input (fp32) is replaced by 10 % of its values, their int32 positions
    # and the row means; everything else saved (mean, 1/std, the square's input) is the same
    kept = int(leaf.numel() * 0.1)
    assert pruned_bytes - (exact_bytes - 4 * leaf.numel()) == 4 * kept + 4 * kept + 4 * 32
    assert 0.3 < pruned_cosine < 0.9999  # pruned: the input gradient is approximate
    # 4-bit GELU codes: half a byte per entry (+ one scale and shift per group)
    mesa = Mesa(model, policy=lambda m, kind: Treatment(bits=4) if m is gelu else None)
    hidden = torch.randn(4, 8, 64, requires_grad=True)

    def activation():
        with mesa.saving():
            return gelu(hidden * 1.0).sum()

    gelu_bytes = saved_tensor_bytes(activation, []).activation_bytes
    assert hidden.numel() // 2 <= gelu_bytes <= hidden.numel() // 2 + 64
    (approximate_gelu,) = torch.autograd.grad(activation(), hidden)
    (exact_gelu,) = torch.autograd.grad(gelu(hidden * 1.0).sum(), hidden)
    assert torch.cosine_similarity(approximate_gelu.flatten(), exact_gelu.flatten(), dim=0) > 0.9
