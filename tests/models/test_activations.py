"""Activations: CRReLU (Sun et al., EAFO) and the ``activation`` option of every model."""

import pytest
import torch
from torch import nn

from hundred.errors import HundredError
from hundred.models import create
from hundred.models.activations import CRReLU, activation_layer


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_crrelu_with_zero_eps_is_relu_exactly():
    x = torch.randn(1000) * 3
    assert torch.equal(CRReLU(init=0.0)(x), torch.relu(x))


def test_crrelu_defaults_to_the_papers_init_and_formula():
    act = CRReLU()
    assert act.eps.item() == pytest.approx(0.01) and act.eps.requires_grad
    x = torch.linspace(-4, 4, 101)
    assert torch.allclose(act(x), torch.relu(x) + 0.01 * x * torch.exp(-x**2 / 2))


def test_crrelu_eps_gradient_is_x_gaussian_summed():
    act = CRReLU(init=0.3)
    x = torch.randn(64, 5, requires_grad=True)
    act(x).sum().backward()
    expected = (x * torch.exp(-x**2 / 2)).sum()
    assert torch.allclose(act.eps.grad, expected.detach(), atol=1e-5)
    torch.autograd.gradcheck(CRReLU(0.3).double(), (torch.randn(7, dtype=torch.double,
                                                                requires_grad=True),))


def test_vit_with_crrelu_has_trainable_eps_per_layer():
    model = create("vit_tiny_p4_32", 10, activation="crrelu")
    acts = [m for m in model.modules() if isinstance(m, CRReLU)]
    assert len(acts) == 9  # one per MLP block (depth 9), replacing GELU
    assert not any(isinstance(m, nn.GELU) for m in model.modules())
    assert all(a.eps.requires_grad for a in acts)
    logits = model(torch.randn(2, 3, 32, 32))
    logits.sum().backward()
    assert all(a.eps.grad is not None and a.eps.grad.abs() > 0 for a in acts)
    # the default ViT keeps GELU and differs only by the eps scalars
    assert _count(model) == _count(create("vit_tiny_p4_32", 10)) + 9


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_vit_relu_and_gelu(activation):
    model = create("vit_tiny_p4_32", 10, activation=activation)
    assert any(isinstance(m, activation_layer(activation)) for m in model.modules())


def test_resnet20_default_is_unchanged_and_gelu_swaps_modules():
    default = create("resnet20", 10)
    assert _count(default) == 269722  # as before the option existed
    assert _count(create("resnet20", 10, activation="relu")) == 269722
    assert not any(isinstance(m, (nn.GELU, CRReLU)) for m in default.modules())
    gelu = create("resnet20", 10, activation="gelu")
    assert _count(gelu) == 269722
    assert sum(isinstance(m, nn.GELU) for m in gelu.modules()) == 19  # stem + 2 per block
    assert not any(isinstance(m, nn.ReLU) for m in gelu.modules())
    assert gelu(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # state dicts of the default model keep today's keys (old checkpoints load)
    assert not any("act" in key for key in default.state_dict())


def test_convnet_with_crrelu():
    model = create("convnet_d3", 4, img_size=32, activation="crrelu")
    assert sum(isinstance(m, CRReLU) for m in model.modules()) == 3
    assert _count(model) == _count(create("convnet_d3", 4, img_size=32)) + 3


def test_timm_resnet_takes_activation_as_act_layer():
    model = create("resnet18", 10, activation="crrelu")
    assert sum(isinstance(m, CRReLU) for m in model.modules()) > 0
    assert not any(type(m) is nn.ReLU for m in model.modules())
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(HundredError, match="unknown activation"):
        create("resnet20", 10, activation="swishy")


def test_timm_model_without_act_layer_is_a_clear_error(monkeypatch):
    import timm

    def refuses(name, **kwargs):
        if "act_layer" in kwargs:
            raise TypeError("__init__() got an unexpected keyword argument 'act_layer'")
        return nn.Identity()

    monkeypatch.setattr(timm, "create_model", refuses)
    with pytest.raises(HundredError, match="does not take timm's act_layer"):
        create("resnet18", 10, activation="gelu")


def test_timm_model_ignoring_act_layer_is_a_clear_error(monkeypatch):
    import timm

    class Ignores(nn.Module):
        num_features = 4

        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

    monkeypatch.setattr(timm, "create_model", lambda name, **kwargs: Ignores())
    with pytest.raises(HundredError, match="does not take timm's act_layer"):
        create("resnet18", 10, activation="crrelu")
