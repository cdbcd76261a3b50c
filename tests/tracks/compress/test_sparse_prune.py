"""Sparse-then-Prune on a tiny ViT: global L1 pruning zeroes exactly the share p of the
prunable weights, the mask survives fine-tuning steps, the regulariser is the mean of
log(1 + a^2) over the attention probabilities and pushes a gradient into the attention, and
the pipeline (train, prune, fine-tune, export) runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.losses import cross_entropy
from hundred.models import create
from hundred.tracks.compress.methods.sparse_prune import SparsePrune, prunable_parameters

VIT = "model.options={depth: 2, embed_dim: 32, num_heads: 2, mlp_ratio: 2.0}"
TINY = "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}"
SETTINGS = [TINY, "model.name=vit_tiny_p4_32", VIT, "data.batch_size=8", "quiet=true",
            "compress.latency_batch=2", "compress.latency_warmup=0",
            "compress.latency_repeats=1"]


def method_for(model: torch.nn.Module, **params) -> SparsePrune:
    config = build_config(overrides=["track=compress", "method=sparse_prune",
                                     "train.epochs=2"])
    method = SparsePrune(params, config)
    method.setup(model, None)
    return method


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("vit_tiny_p4_32", 4, img_size=16, depth=2, embed_dim=32, num_heads=2,
                  mlp_ratio=2.0)


@pytest.mark.parametrize("scope", ["blocks", "official"])
def test_global_pruning_zeroes_exactly_the_rate(scope):
    model = tiny_vit()
    method = method_for(model, prune_rate=0.3, prune_scope=scope)
    weights = [module.weight for module, _, _ in prunable_parameters(model, scope)]
    total = sum(weight.numel() for weight in weights)
    method.prune(model)
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    assert zeros == round(0.3 * total)
    assert not any(hasattr(module, "weight_orig") for module in model.modules())  # permanent
    per_layer = [float((weight == 0).float().mean()) for weight in weights]
    assert max(per_layer) - min(per_layer) > 0.01  # global, not layer by layer


def test_the_mask_survives_fine_tuning_steps():
    model = tiny_vit()
    method = method_for(model, prune_rate=0.5)
    method.prune(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    images, labels = torch.randn(4, 3, 16, 16), torch.arange(4)
    for _ in range(2):
        optimizer.zero_grad()
        method.loss(model, images, labels).backward()
        optimizer.step()
        method.after_optimizer_step(model)
    parameters = dict(model.named_parameters())
    for name, mask in method.masks.items():
        assert bool((parameters[name][~mask] == 0).all())
        assert not torch.equal(parameters[name][mask], before[name][mask])  # still trained


def test_the_regulariser_is_the_mean_log1p_square_of_the_attention_probabilities():
    model = tiny_vit()
    images, labels = torch.randn(4, 3, 16, 16), torch.arange(4)
    kept = []
    for block in model.backbone.model.blocks:
        block.attn.attn_drop.register_forward_hook(lambda _m, i, _o: kept.append(i[0]))
    method = method_for(model, reg_weight=0.5)
    loss = method.loss(model, images, labels)
    assert len(kept) == 2 and torch.allclose(kept[0].sum(-1), torch.ones(()))  # softmax rows
    expected = torch.stack([torch.log1p(p ** 2).mean() for p in kept]).mean()
    regulariser = loss - cross_entropy(model(images), labels)
    assert torch.allclose(regulariser, 0.5 * expected, atol=1e-6)
    qkv = model.backbone.model.blocks[0].attn.qkv.weight
    (gradient,) = torch.autograd.grad(regulariser, qkv)
    assert gradient.abs().sum() > 0
    last = method_for(model, reg_weight=0.5, reg_layers="last")
    kept.clear()
    regulariser = last.loss(model, images, labels) - cross_entropy(model(images), labels)
    assert torch.allclose(regulariser, 0.5 * torch.log1p(kept[1] ** 2).mean(), atol=1e-6)


def summary_and_export(root: Path, name: str) -> tuple[dict, dict]:
    run_dir = root / "compress" / "sparse_prune" / name
    return (json.loads((run_dir / "summary.json").read_text()),
            load_file(run_dir / "model.safetensors"))


@pytest.mark.parametrize("reg_weight,prune_rate", [(0.01, 0.5), (0.0, 0.0)])
def test_the_pipeline_runs_end_to_end(tmp_path, reg_weight, prune_rate):
    params = f"method_params={{reg_weight: {reg_weight}, prune_rate: {prune_rate}, " \
             "finetune_epochs: 1}"
    sets = [*SETTINGS, "train.epochs=2", params, f"root={tmp_path}", "name=r"]
    assert main(["run", "compress", "sparse_prune", "--device", "cpu",
                 *(part for setting in sets for part in ("--set", setting))]) == 0
    summary, weights = summary_and_export(tmp_path, "r")
    model = tiny_vit()
    names = [qualified for _, _, qualified in prunable_parameters(model)]
    zeros = sum(int((weights[name] == 0).sum()) for name in names)
    total = sum(weights[name].numel() for name in names)
    assert zeros == round(prune_rate * total)
    assert (summary["sparsity_pct"] > 0) == (prune_rate > 0)


def test_a_model_without_attention_is_refused(tmp_path, capsys):
    sets = [TINY, "model.name=resnet20", "model.options={width: 4}", f"root={tmp_path / 'r'}"]
    assert main(["run", "compress", "sparse_prune", "--device", "cpu",
                 *(part for setting in sets for part in ("--set", setting))]) != 0
    assert "has no timm Attention" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
