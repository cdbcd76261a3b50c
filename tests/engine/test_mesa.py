"""Mesa (hundred.engine.mesa) on a tiny ViT: the forward is exact, gradients through 8-bit
saved activations stay close to the exact ones, the saved bytes that the compress track's
counter sees drop to about a quarter (Mesa's payloads are counted, not hidden by the nested
hooks), the running estimates follow the EMA and travel with the checkpoint, and
``train.mesa=true`` trains any method on a ViT and refuses a model without attention."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from hundred.cli import main
from hundred.engine.cost import saved_tensor_bytes
from hundred.engine.mesa import EMA_DECAY, Mesa
from hundred.errors import HundredError
from hundred.models import create

VIT = "model.options={depth: 2, embed_dim: 32, num_heads: 2, mlp_ratio: 2.0}"
TINY = "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}"


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create("vit_tiny_p4_32", 4, img_size=16, depth=2, embed_dim=32, num_heads=2,
                   mlp_ratio=2.0)
    for module in model.modules():  # the explicit attention Mesa trains (exact reference)
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 3, 16, 16, generator=generator), torch.arange(32) % 4


def gradient(model: torch.nn.Module, mesa: Mesa | None = None) -> torch.Tensor:
    images, labels = batch()
    model.zero_grad()
    if mesa is None:
        loss = F.cross_entropy(model(images), labels)
    else:
        with mesa.saving():
            loss = F.cross_entropy(model(images), labels)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_forward_is_exact_and_gradients_stay_close():
    model = tiny_vit()
    images, _ = batch()
    exact_output = model(images)
    exact = gradient(model)
    mesa = Mesa(model)
    with mesa.saving():
        assert torch.equal(model(images), exact_output)
    approximate = gradient(model, mesa)
    assert not torch.equal(approximate, exact)  # the backward did read 8-bit copies
    assert F.cosine_similarity(approximate, exact, dim=0) >= 0.99


def test_saved_bytes_drop_to_about_a_quarter_and_the_payload_is_counted():
    model = tiny_vit()
    images, labels = batch()
    parameters = list(model.parameters())

    def plain() -> torch.Tensor:
        return F.cross_entropy(model(images), labels)

    exact = saved_tensor_bytes(plain, parameters)
    mesa = Mesa(model)

    def quantised() -> torch.Tensor:
        with mesa.saving():
            return F.cross_entropy(model(images), labels)

    saved = saved_tensor_bytes(quantised, parameters)
    ratio = saved.activation_bytes / exact.activation_bytes
    # uint8 copies of float32 activations, plus the input image, LayerNorm statistics and
    # the per-group scales and shifts kept exact; a payload hidden from the outer counter
    # would leave far less than a fifth
    assert 0.2 < ratio < 0.32, ratio
    assert saved.parameter_bytes == exact.parameter_bytes  # weights are not quantised


def test_running_estimates_follow_the_ema_and_round_trip():
    model = tiny_vit()
    mesa = Mesa(model)
    gradient(model, mesa)
    slot = "backbone.model.blocks.0.attn#2"  # the first block's softmax probabilities
    first = {key: value.clone() for key, value in mesa.estimates[slot].items()}
    assert first["shift"].shape == (2,)  # one estimate per head
    images, labels = batch()
    captured = {}
    hook = model.backbone.model.blocks[0].attn.attn_drop.register_forward_hook(
        lambda _m, inputs, _o: captured.update(p=inputs[0].detach()))
    gradient(model, mesa)
    hook.remove()
    probabilities = captured["p"]
    low = probabilities.amin(dim=(0, 2, 3))
    span = probabilities.amax(dim=(0, 2, 3)) - low
    second = mesa.estimates[slot]
    assert torch.allclose(second["shift"], EMA_DECAY * first["shift"] + (1 - EMA_DECAY) * low)
    assert torch.allclose(second["clip"], EMA_DECAY * first["clip"] + (1 - EMA_DECAY) * span)
    restored = Mesa(tiny_vit())
    restored.load_state_dict(mesa.state_dict())
    assert restored.state_dict().keys() == mesa.state_dict().keys()
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in mesa.state_dict().items())


def test_a_model_without_attention_is_refused():
    with pytest.raises(HundredError, match="Vision Transformer"):
        Mesa(create("resnet20", 4, width=4))


def test_train_mesa_runs_a_classify_method_on_a_vit(tmp_path):
    assert main(["run", "classify", "erm", "--device", "cpu", "--set", TINY, "--set",
                 "model.name=vit_tiny_p4_32", "--set", VIT, "--set", "data.batch_size=8",
                 "--set", "train.epochs=1", "--set", "quiet=true", "--set", "train.mesa=true",
                 "--set", f"root={tmp_path}", "--set", "name=m"]) == 0
    run_dir = tmp_path / "classify" / "erm" / "m"
    assert json.loads((run_dir / "summary.json").read_text())["val_top1"] >= 0
    state = torch.load(next((run_dir / "checkpoints").glob("*.state.pt")), weights_only=True)
    assert any(key.endswith(".clip") for key in state["mesa"])  # estimates are checkpointed


def test_train_mesa_on_a_resnet_is_refused_before_anything_is_written(tmp_path, capsys):
    assert main(["run", "classify", "erm", "--device", "cpu", "--set", TINY, "--set",
                 "model.name=resnet20", "--set", "model.options={width: 4}", "--set",
                 "train.mesa=true", "--set", f"root={tmp_path / 'runs'}"]) != 0
    assert "needs a Vision Transformer" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
