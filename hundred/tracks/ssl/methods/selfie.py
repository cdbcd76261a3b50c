"""Selfie — Trinh, Luong & Le, "Selfie: Self-supervised Pretraining for Image Embedding"
(arXiv 1906.02940, 2019): masked patch prediction with a contrastive (CPC-style) loss.

Each image is cut into a ``grid`` x ``grid`` grid of patches (Sec. 2.1: 8x8 patches of a
32 px image, i.e. a 4x4 grid; 32 px patches of a 224 px image, a 7x7 grid) and a random subset
of the positions is masked. The *patch network* P — the first stages of the ResNet (the paper:
the first three of ResNet-50's four blocks), run on every patch independently, then global
average pooling — encodes every patch into h_j. The encodings of the *visible* patches only are
summarised by the *attention pooling network* (Sec. 2.2): a learnable vector u_0 is prepended
to them and a few Transformer layers run over the sequence,

    u, h_1^out, ..., h_n^out = TransformerLayers(u_0, h_1, ..., h_n),

of which only u is kept. For each masked position i the query is v_i = u + o_i (o_i the learned
embedding of position i; per position on a 4x4 grid, row + column embeddings on a 7x7 grid),
and the loss is the softmax cross-entropy that picks the true patch of position i among the
encodings of all masked patches of the same image (the others are the distractors), by dot
products:

    L = -(1/M) sum_i log exp(v_i . h_i) / sum_{j masked} exp(v_i . h_j).

All masked positions of an image are predicted at once (the paper's efficient implementation).

What is pre-trained: only the patch network, i.e. the stem and the first ``patch_stages`` stages
of the run model's own backbone (default: all but the last), so that ``hundred run classify erm
--init RUN_DIR`` carries them into fine-tuning. The later stages get no gradient from the
objective and are kept *frozen* at their random initialisation for the whole pre-training (see
"DDP" below); the linear probe and kNN of the ssl track therefore measure features whose last
stage(s) are random. The paper evaluates Selfie by fine-tuning (pre-train -> fine-tune vs the
same ResNet from scratch, with 5 % ... 100 % of the labels), so its README row is fine-tuning at
10 % / 100 % of the labels (``hundred run classify erm --init RUN_DIR --set
data.label_fraction=0.1``), not the probe.

DDP: the patch network runs through the *unwrapped* backbone (it is called on patches, outside
the wrapped model's forward), and the model is also called once through the wrapper on the full
images to give the online probe its (detached) features, so DDP sees one forward pass per step.
DDP's gradient averaging hooks sit on the parameters themselves, so the stem's and first stages'
gradients (which come only from the patch path) are averaged across ranks like any other;
this requires every parameter DDP tracks to receive a gradient each step (the default
``find_unused_parameters=False``). The last stage(s) would receive none (the objective does not
reach them and the probe's features are detached), so :meth:`Selfie.setup` — which runs before
the trainer wraps the model and builds its optimiser — sets ``requires_grad=False`` on every
backbone parameter the patch network does not use: DDP then does not wait for them and the
optimiser leaves them exactly as initialised (single-device runs behave identically). Their
batch-norm running statistics still follow the data through the probe's forward pass. The
method's own modules (attention pooling, position embeddings) are averaged by the trainer.

Batch norm inside the patch network normalises over the patches of the batch, and its running
statistics are updated by both the patch path and the full-image forward; fine-tuning
re-estimates them.

Verified against the paper (through secondary summaries of it): 8x8 patches at 32 px / 32 px
patches at 224 px; P = the first ResNet blocks, patch features pooled to one vector; the
attention pooling network = Transformer layers over (u_0, visible encodings), keeping u;
queries u + position embedding; distractors = the other masked patches of the same image;
per-position embeddings for 16 patches, row + column embeddings for 7x7. Assumed (not
verified): the masked fraction 0.25 (4 of 16 patches, as the public re-implementation of
Chen et al., CVPR 2020, "Adversarial Robustness: From Self-Supervised Pre-Training to
Fine-Tuning", does), the Transformer's depth 3, 4 heads, feed-forward 4x, GELU, post-norm,
dropout 0.1 (BERT-style layers; the width is the patch features' dimension, as in the paper).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models.taps import pool_stage_output, stage_modules, unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.ssl.method import SSLMethod

__all__ = ["AttentionPooling", "PatchPositions", "Selfie", "patch_network", "patchify",
           "sample_masks", "selfie_loss", "unpatchify"]

# the side of the dummy input used to size the patch network in setup (the paper's 32 px)
_PROBE_SIZE = 32


class SelfieParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grid: int = Field(4, ge=2, description="patches per side: the image is cut into grid x grid "
                      "patches (paper: 4 for 32 px images = 8x8 patches, 7 for 224 px)")
    masked_fraction: float = Field(
        0.25, gt=0.0, lt=1.0, description="fraction of the grid*grid positions masked in each "
        "image (rounded; at least 2 masked and 1 visible); 0.25 = 4 of 16 (assumed, see the "
        "module docstring)")
    patch_stages: int | None = Field(
        None, ge=1, description="the patch network: the stem and this many first stages of "
        "the backbone; None = all but the last (paper: 3 of ResNet-50's 4 blocks)")
    depth: int = Field(3, ge=1, description="Transformer layers of the attention pooling")
    heads: int = Field(4, ge=1, description="attention heads (must divide the patch features' "
                       "dimension, which is the Transformer's width)")
    ff_multiplier: float = Field(4.0, gt=0, description="feed-forward width of the Transformer "
                                 "layers, in multiples of its width")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout of the Transformer layers")
    factorized_positions: bool = Field(
        False, description="position embedding = row + column embeddings (the paper's choice "
        "for 7x7 grids) instead of one vector per position (its choice for 4x4)")


# -- patches ---------------------------------------------------------------------------------
def patchify(images: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, grid*grid, C, H/grid, W/grid)``, positions in row-major order."""
    batch, channels, height, width = images.shape
    if height % grid or width % grid:
        raise HundredError(f"selfie: {height}x{width} images do not divide into a {grid}x{grid} "
                           "grid of patches; change method_params.grid")
    ph, pw = height // grid, width // grid
    patches = images.reshape(batch, channels, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, grid * grid, channels, ph, pw)


def unpatchify(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, grid*grid, C, p, q)`` -> ``(B, C, grid*p,
    grid*q)``."""
    batch, count, channels, ph, pw = patches.shape
    if count != grid * grid:
        raise ValueError(f"{count} patches do not make a {grid}x{grid} grid")
    images = patches.reshape(batch, grid, grid, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return images.reshape(batch, channels, grid * ph, grid * pw)


def sample_masks(batch: int, positions: int, masked: int, device: torch.device | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent random mask per image: ``(masked (B, M), visible (B, positions - M))``
    position indices, disjoint and together a permutation of ``range(positions)``."""
    order = torch.rand(batch, positions, generator=generator).argsort(dim=1).to(device)
    return order[:, :masked], order[:, masked:]


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[b, index[b, k]]`` for ``rows`` (B, P, D) and ``index`` (B, K) -> (B, K, D)."""
    return rows.gather(1, index.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))


# -- the patch network: the backbone's own first stages ---------------------------------------
def patch_network(model: nn.Module, stages: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stem and the first ``stages`` stages of ``model``'s backbone (a Classifier, its
    backbone, or either wrapped), as a function ``(N, 3, p, p) -> (N, D)`` that ends with global
    average pooling. It calls the *unwrapped* modules (see the module docstring on DDP).
    Knows the local CIFAR ResNets, ConvNet-D and timm ResNets; anything else (a ViT) is a
    HundredError: Selfie's patch network is convolutional."""
    from hundred.models import TimmBackbone
    from hundred.models.backbones import CifarResNet, ConvNet

    module = unwrap(model)
    backbone = getattr(module, "backbone", module)
    found = stage_modules(backbone)
    if not 1 <= stages <= len(found):
        raise HundredError(f"selfie: patch_stages={stages}, but the backbone has {len(found)} "
                           "stages")
    first = found[:stages]

    if isinstance(backbone, CifarResNet):
        def forward(x: torch.Tensor) -> torch.Tensor:
            x = backbone.act(backbone.bn1(backbone.conv1(x)))
            for stage in first:
                x = stage(x)
            return pool_stage_output(x)
        return forward
    if isinstance(backbone, ConvNet):  # the stages end at the average pools of its layers
        last = first[-1]

        def forward(x: torch.Tensor) -> torch.Tensor:
            for layer in backbone.layers:
                x = layer(x)
                if layer is last:
                    break
            return pool_stage_output(x)
        return forward
    inner = backbone.model if isinstance(backbone, TimmBackbone) else None
    if inner is not None and all(hasattr(inner, n) for n in ("conv1", "bn1", "act1", "maxpool")):
        def forward(x: torch.Tensor) -> torch.Tensor:
            x = inner.maxpool(inner.act1(inner.bn1(inner.conv1(x))))
            for stage in first:
                x = stage(x)
            return pool_stage_output(x)
        return forward
    raise HundredError(f"selfie: no patch network for {type(inner or backbone).__name__}; it "
                       "knows the local CIFAR ResNets, ConvNet-D and timm ResNets")


# -- the attention pooling network and the position embeddings -------------------------------
class AttentionPooling(nn.Module):
    """Sec. 2.2: Transformer layers over ``(u_0, h_1, ..., h_n)``; the output at u_0's place
    is the pooled vector u. ``dim`` is the patch features' dimension."""

    def __init__(self, dim: int, depth: int = 3, heads: int = 4, ff_multiplier: float = 4.0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise HundredError(f"selfie: {heads} attention heads do not divide the patch "
                               f"features' dimension {dim}; change method_params.heads")
        self.query = nn.Parameter(torch.zeros(1, 1, dim))  # u_0
        nn.init.normal_(self.query, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, max(1, round(ff_multiplier * dim)),
                                           dropout, activation="gelu", batch_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)

    def forward(self, visible: torch.Tensor) -> torch.Tensor:
        """``visible`` (B, n, D): the encodings of the visible patches -> u (B, D)."""
        tokens = torch.cat([self.query.expand(visible.shape[0], -1, -1), visible], dim=1)
        return self.layers(tokens)[:, 0]


class PatchPositions(nn.Module):
    """Learned embeddings o_i of the grid positions (row-major index): one vector per position,
    or the sum of a row and a column embedding (``factorized``)."""

    def __init__(self, grid: int, dim: int, factorized: bool = False) -> None:
        super().__init__()
        self.grid, self.factorized = grid, factorized
        if factorized:
            self.rows = nn.Parameter(torch.randn(grid, dim) * 0.02)
            self.columns = nn.Parameter(torch.randn(grid, dim) * 0.02)
        else:
            self.table = nn.Parameter(torch.randn(grid * grid, dim) * 0.02)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if self.factorized:
            return self.rows[index // self.grid] + self.columns[index % self.grid]
        return self.table[index]


def selfie_loss(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The Selfie loss: ``queries`` v_i and ``targets`` h_i, both (B, M, D), row i of each
    image being masked position i; each query must pick its own target among the image's M
    targets by dot product (softmax cross-entropy), averaged over the B*M queries."""
    logits = torch.einsum("bid,bjd->bij", queries.float(), targets.float())
    labels = torch.arange(queries.shape[1], device=queries.device).expand(queries.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


@register("ssl", "selfie")
class Selfie(SSLMethod):
    """Masked patch prediction: pick each masked position's patch among the image's masked
    patches, from the attention-pooled visible patches (one view per image)."""

    Params = SelfieParams
    views = 1
    search_space = {"method_params.masked_fraction": Choice((0.25, 0.5, 0.75)),
                    "method_params.depth": Choice((1, 3))}

    @property
    def positions(self) -> int:
        return self.params.grid ** 2

    @property
    def masked(self) -> int:
        """M, the masked positions per image."""
        return round(self.params.masked_fraction * self.positions)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if not 2 <= self.masked <= self.positions - 1:
            raise HundredError(f"selfie: masked_fraction={self.params.masked_fraction} of "
                               f"{self.positions} patches masks {self.masked}; it needs at least "
                               "2 masked (a true patch and a distractor) and 1 visible")
        stages = self.params.patch_stages or max(1, len(stage_modules(model)) - 1)
        self._patch_network = patch_network(model, stages)
        dim = self._freeze_outside_patch_network(unwrap(model).backbone)
        if "pooling" not in self.trainable:
            p = self.params
            self.add_trainable("pooling", AttentionPooling(dim, p.depth, p.heads,
                                                           p.ff_multiplier, p.dropout))
            self.add_trainable("positions", PatchPositions(p.grid, dim, p.factorized_positions))

    def _freeze_outside_patch_network(self, backbone: nn.Module) -> int:
        """Set ``requires_grad=False`` on the backbone parameters the patch network does not
        use (found by one dummy forward/backward in eval mode); returns its output dimension."""
        parameters = [p for p in backbone.parameters() if p.requires_grad]
        device = next(backbone.parameters()).device
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.enable_grad():
                out = self._patch_network(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE,
                                                      device=device))
                grads = torch.autograd.grad(out.sum(), parameters, allow_unused=True)
        finally:
            backbone.train(was_training)
        for parameter, grad in zip(parameters, grads):
            if grad is None:
                parameter.requires_grad_(False)
        return int(out.shape[1])

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        objective, features = self.ssl_loss(model, [images])
        return objective + self.probe_loss(model, features, labels)

    def ssl_loss(self, model: nn.Module, views: Sequence[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        images = views[0]
        features = self.encode(model, images)  # the wrapped forward: DDP sees it (the probe)
        masked, visible = sample_masks(images.shape[0], self.positions, self.masked,
                                       images.device)
        queries, targets = self.predict(images, masked, visible)
        return selfie_loss(queries, targets), features

    def predict(self, images: torch.Tensor, masked: torch.Tensor, visible: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries v_i = u + o_i and the true patches' encodings h_i, both (B, M, D), for
        the ``masked`` (B, M) and ``visible`` (B, V) position indices. Only the visible
        patches' encodings enter the attention pooling."""
        batch = images.shape[0]
        patches = patchify(images, self.params.grid)
        encodings = self._patch_network(patches.flatten(0, 1)).view(batch, self.positions, -1)
        pooled = self.trainable["pooling"](_gather(encodings, visible))
        queries = pooled.unsqueeze(1) + self.trainable["positions"](masked)
        return queries, _gather(encodings, masked)
