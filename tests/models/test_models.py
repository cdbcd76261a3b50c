"""Models: local nets and timm names give (B, D) features and logits of the right size."""

import pytest
import torch

from hundred.errors import HundredError
from hundred.models import CosineHead, create


@pytest.mark.parametrize("name,size,dim", [
    ("resnet20", 32, 64), ("resnet32", 32, 64), ("resnet18_lowres", 32, 512),
    ("convnet_d3", 32, 2048), ("vit_tiny_p4_32", 32, 192), ("resnet18", 64, 512),
])
def test_features_and_logits_shapes(name, size, dim):
    model = create(name, num_classes=7)
    x = torch.randn(2, 3, size, size)
    logits, features = model(x, return_features=True)
    assert features.shape == (2, dim) == (2, model.feature_dim)
    assert logits.shape == (2, 7)


def test_cifar_resnet_depths_have_the_papers_parameter_counts():
    counts = {d: sum(p.numel() for p in create(f"resnet{d}", 10).backbone.parameters())
              for d in (20, 32, 56)}
    # He et al. 2016, Table 6: 0.27M, 0.46M, 0.85M
    assert abs(counts[20] / 1e6 - 0.27) < 0.01
    assert abs(counts[32] / 1e6 - 0.46) < 0.01
    assert abs(counts[56] / 1e6 - 0.85) < 0.01


def test_low_res_stem_keeps_spatial_resolution():
    plain, low = create("resnet18", 10), create("resnet18_lowres", 10)
    assert plain.backbone.model.conv1.stride == (2, 2)
    assert low.backbone.model.conv1.stride == (1, 1) and low.backbone.model.conv1.kernel_size == (3, 3)
    assert isinstance(low.backbone.model.maxpool, torch.nn.Identity)


def test_cosine_head_is_scale_invariant_in_features():
    head = CosineHead(8, 3)
    f = torch.randn(4, 8)
    assert torch.allclose(head(f), head(5 * f), atol=1e-5)
    assert head(f).abs().max() <= head.scale + 1e-5


def test_unknown_model_is_a_clear_error():
    with pytest.raises(HundredError, match="unknown model"):
        create("resnet_does_not_exist", 10)


@pytest.mark.parametrize("name, millions", [("resnet8x4", 1.23), ("resnet32x4", 7.43)])
def test_wide_cifar_resnets_match_the_distillation_benchmark(name, millions):
    """CRD's ResNet-8x4 / 32x4 (Tian et al., ICLR 2020): 1.23M / 7.43M parameters with a
    100-class head, 256-d features, projection (1x1 conv) shortcuts where shapes change."""
    model = create(name, 100)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) / millions < 0.01
    assert model.feature_dim == 256
    shortcuts = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)
                 and m.kernel_size == (1, 1)]
    assert len(shortcuts) == 3  # stem 32 -> 64, then the two strided stages
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
