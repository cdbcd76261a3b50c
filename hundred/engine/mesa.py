"""Mesa: memory-saving training of Vision Transformers with 8-bit saved activations.

Pan, Chen, Lin, Zhuang, "Mesa: A Memory-saving Training Framework for Transformers"
(arXiv 2111.11124, 2021). The forward pass is exact; only what autograd *saves* for the
backward pass is replaced by an 8-bit copy, dequantised when the backward pass reads it:

* quantisation (the paper's Sec. 3.2, Eqs. 1-2): ``q = clamp(round((x - beta_g) * (L - 1) /
  alpha_g), 0, L - 1)`` with ``L = 256`` levels, per group ``g``; dequantisation
  ``x_hat = q * alpha_g / (L - 1) + beta_g``. Rounding is stochastic (uniform noise before
  flooring, as the official CUDA kernel does), so the dequantised value is unbiased inside
  the range;
* head-wise grouping (Sec. 3.3): the tensors an attention layer saves (q, k, v, the softmax
  probabilities) are quantised with one (alpha, beta) per head; the inputs of the linear
  layers, GELU and LayerNorm with one per channel group, the channels split into as many
  contiguous groups as the model has heads (the official code's ``convert_by_num_groups``
  with the head count);
* running estimates (Sec. 3.4): ``beta`` (shift) is the group's minimum and ``alpha``
  (clip range) its max - min, each an exponential moving average with decay 0.9 over the
  training steps (the first step takes the batch's values); the current batch is quantised
  with the updated estimates, values outside the range are clamped.

Implementation: no module is rewritten. Every supported module of the model (``nn.Linear``,
``nn.LayerNorm``, GELU, timm's ``Attention``) gets a forward pre-hook that enters a
``torch.autograd.graph.saved_tensors_hooks`` context for that module and a forward hook that
leaves it, so each tensor autograd saves while a module runs is packed by that module's
rule: the layer's input activation (linear, GELU, LayerNorm: a floating tensor whose last
dimension is the layer's feature size; LayerNorm's per-row mean and 1/std stay exact, as in
the official code) or the attention's per-head tensors (the softmax output and the matmul
operands). Anything else -- weights (and their autocast copies), masks, other
tensors -- is passed on unchanged. The hooks act only inside :meth:`Mesa.saving` (the
trainer's training forward) and only with gradients enabled, so evaluation is untouched.
timm's attention runs its explicit softmax path (``fused_attn = False``) on a Mesa model,
in training and evaluation alike: the fused kernel keeps no softmax to quantise.

Saved-tensor hooks nest: only the innermost pair acts. Mesa therefore passes what it stores
(the uint8 tensor and the group's scale and shift) -- and every tensor it leaves alone --
on to the hooks that were active when :meth:`Mesa.saving` was entered, so an outer hook
(:func:`hundred.engine.cost.saved_tensor_bytes`, CPU offloading) sees exactly what Mesa
keeps. A tensor saved twice (the softmax output, kept by the softmax and by ``attn @ v``)
is quantised once and its payload shared.

The running estimates are training state: :meth:`Mesa.state_dict` goes into every
checkpoint (the trainer's state file, key ``mesa``) and is restored on resume, so a resumed
Mesa run continues exactly.

Other methods reuse the machinery with a ``policy`` (``Mesa(model, policy=...)``): a function
of (module, kind) returning, at pack time, the :class:`Treatment` of what that module saves
-- quantised with another bit width (2, 4 or 8 bits; below 8 several codes share a byte), or
pruned (``keep``: only that share of the entries largest in ``|x - row mean| / row std`` is
stored, with int32 positions and the row means; the rest are restored as the row mean, so a
LayerNorm backward sees its normalised input with the others zero), or None (kept exact).
SlimFit (:mod:`hundred.tracks.compress.methods.slimfit`) is such a policy.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from hundred.errors import HundredError

LEVELS = 256  # 8-bit
EMA_DECAY = 0.9  # the official code's lambda
# autograd nodes through which a saved tensor may still be a parameter (a transposed weight,
# its autocast copy): a chain of these ending at AccumulateGrad means "a weight"
_WEIGHT_PATH = {"TBackward0", "ToCopyBackward0", "ViewBackward0", "TransposeBackward0",
                "PermuteBackward0", "ExpandBackward0", "UnsafeViewBackward0",
                "ReshapeAliasBackward0"}


@dataclass(frozen=True)
class Treatment:
    """How a module's saved activations are kept: ``bits``-bit quantisation (2, 4 or 8), or,
    with ``keep`` set, pruning to that share of the entries (largest ``|x - mean| / std`` per
    row, positions counted over the whole tensor)."""

    bits: int = 8
    keep: float | None = None


MESA = Treatment(bits=8)


def mesa_policy(_module: nn.Module, _kind: str) -> Treatment | None:
    """Mesa's own policy: every supported module's saved activations in 8 bits."""
    return MESA


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm's ``Attention`` modules of ``model`` (those Mesa quantises head-wise)."""
    from timm.layers.attention import Attention

    return [module for module in model.modules() if isinstance(module, Attention)]


def _kind(module: nn.Module) -> str | None:
    from timm.layers import GELU as TimmGELU
    from timm.layers.attention import Attention

    if isinstance(module, Attention):
        return "attention"
    if isinstance(module, (nn.Linear, nn.LayerNorm, nn.GELU, TimmGELU)):
        return "channel"
    return None


def _feature_size(module: nn.Module) -> int | None:
    """The last dimension of the activation the layer saves (None: any, for GELU)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return None


def _from_parameter(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a parameter or a view/cast of one (a weight a layer keeps)."""
    node = tensor.grad_fn
    if node is None:
        return tensor.requires_grad  # a leaf that needs a gradient: a parameter
    for _ in range(4):
        if type(node).__name__ == "AccumulateGrad":
            return True
        parents = [parent for parent, _ in node.next_functions if parent is not None]
        if node.name() not in _WEIGHT_PATH or len(parents) != 1:
            return False
        node = parents[0]
    return False


def _is_weight_shaped(tensor: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``tensor`` has the shape of ``module``'s weight (or its transpose)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return False
    return tuple(tensor.shape) in (tuple(weight.shape), tuple(weight.shape)[::-1])


def _identity(value: Any) -> Any:
    return value


class _Quantized:
    """One quantised copy: ``data`` (uint8 codes of shape (rows, groups, per-group), below 8
    bits several codes per byte, flattened), per-group scale ``(L-1)/alpha`` and shift
    ``beta`` (each as the outer hook packed it), the original dtype, the outer hook's unpack,
    the bit width and the code layout."""

    __slots__ = ("data", "scale", "shift", "dtype", "unpack", "bits", "layout")

    def __init__(self, data: Any, scale: Any, shift: Any, dtype: torch.dtype,
                 unpack: Callable[[Any], Any], bits: int = 8,
                 layout: tuple[int, int, int] | None = None) -> None:
        self.data, self.scale, self.shift, self.dtype = data, scale, shift, dtype
        self.unpack, self.bits, self.layout = unpack, bits, layout


class _Pruned:
    """A pruned copy: the kept ``values``, their int32 flat ``positions``, the per-row
    ``means`` the other entries are restored to (each as the outer hook packed it)."""

    __slots__ = ("values", "positions", "means", "shape", "dtype", "unpack")

    def __init__(self, values: Any, positions: Any, means: Any, shape: torch.Size,
                 dtype: torch.dtype, unpack: Callable[[Any], Any]) -> None:
        self.values, self.positions, self.means = values, positions, means
        self.shape, self.dtype, self.unpack = shape, dtype, unpack


class _Saved:
    """What autograd keeps for one saved tensor: a shared :class:`_Quantized` and the shape
    this save needs (a view of the same memory may be saved with another shape)."""

    __slots__ = ("quantized", "shape")

    def __init__(self, quantized: _Quantized | _Pruned, shape: torch.Size) -> None:
        self.quantized, self.shape = quantized, shape


class _Passed:
    """A tensor Mesa does not quantise, as the outer hook (if any) packed it."""

    __slots__ = ("packed", "unpack")

    def __init__(self, packed: Any, unpack: Callable[[Any], Any]) -> None:
        self.packed, self.unpack = packed, unpack


class Mesa:
    """Attach Mesa to ``model`` (a ViT with timm ``Attention`` blocks); quantise the saved
    activations of forward passes run inside :meth:`saving`. ``groups`` is the number of
    channel groups of the non-attention layers (default: the model's head count);
    ``policy(module, kind)`` the :class:`Treatment` of each module's saves, asked at pack
    time (None: kept exact; default: Mesa's 8 bits everywhere)."""

    def __init__(self, model: nn.Module, groups: int | None = None,
                 policy: Callable[[nn.Module, str], Treatment | None] = mesa_policy) -> None:
        attentions = attention_modules(model)
        if not attentions:
            raise HundredError(
                f"train.mesa=true needs a Vision Transformer (timm Attention blocks); "
                f"{type(model).__name__} has none. Mesa quantises attention, linear, GELU and "
                "LayerNorm activations: use a ViT (e.g. model.name=vit_tiny_p4_32) or "
                "train.mesa=false")
        self.groups = int(groups or attentions[0].num_heads)
        self.policy = policy
        self.estimates: dict[str, dict[str, torch.Tensor]] = {}
        self._active = False
        self._update = True
        self._outer: tuple[Callable[..., Any], Callable[..., Any]] | None = None
        self._stack: list[tuple[nn.Module, Any]] = []
        self._cache: dict[tuple[Any, ...], tuple[Any, _Quantized | _Pruned]] = {}
        self._model = weakref.ref(model)
        self._parameter_storages: set[int] = set()
        self._handles = []
        for attention in attentions:
            attention.fused_attn = False  # the explicit softmax path (see the docstring)
        for name, module in model.named_modules():
            kind = _kind(module)
            if kind is None:
                continue
            self._handles.append(module.register_forward_pre_hook(self._enter(name, module,
                                                                                kind)))
            self._handles.append(module.register_forward_hook(self._leave(module),
                                                              always_call=True))

    # -- the context the trainer enters for a training forward ---------------------------
    @contextlib.contextmanager
    def saving(self, update: bool = True) -> Iterator[None]:
        """Quantise what the forward passes inside this block save for backward. With
        ``update=False`` the running estimates are used but not updated (a measurement)."""
        self._outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
        model = self._model()  # frozen weights (no gradient) are recognised by their memory
        self._parameter_storages = set() if model is None else {
            parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
        self._active, self._update = True, update
        try:
            yield
        finally:
            while self._stack:  # a forward that raised: leave its modules' hook contexts
                self._stack.pop()[1].__exit__(None, None, None)
            self._active, self._outer = False, None
            self._cache.clear()

    def remove(self) -> None:
        """Detach Mesa from the model (the attention stays on the explicit path)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _enter(self, name: str, module: nn.Module, kind: str) -> Callable[..., None]:
        def pre_hook(_module: nn.Module, _inputs: Any) -> None:
            if not self._active or not torch.is_grad_enabled():
                return
            slots = iter(range(1 << 30))
            hooks = torch.autograd.graph.saved_tensors_hooks(
                lambda tensor: self._pack(tensor, name, module, kind, slots), self._unpack)
            hooks.__enter__()
            self._stack.append((module, hooks))

        return pre_hook

    def _leave(self, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            if self._stack and self._stack[-1][0] is module:
                self._stack.pop()[1].__exit__(None, None, None)

        return hook

    # -- packing ------------------------------------------------------------------------
    def _pass(self, tensor: torch.Tensor) -> _Passed:
        outer = self._outer
        if outer is None:
            return _Passed(tensor.detach(), _identity)
        return _Passed(outer[0](tensor), outer[1])

    def _grouped_shape(self, tensor: torch.Tensor, module: nn.Module, kind: str
                       ) -> tuple[int, int, int] | None:
        """(rows, groups, per-group) for a tensor this module's rule quantises, else None."""
        if not tensor.is_floating_point() or tensor.dim() < 2 or _from_parameter(tensor):
            return None
        if tensor.grad_fn is None and not tensor.requires_grad and (
                tensor.untyped_storage().data_ptr() in self._parameter_storages
                or _is_weight_shaped(tensor, module)):  # a frozen weight or its autocast copy
            return None
        shape = tensor.shape
        if kind == "attention":
            heads = int(module.num_heads)
            if tensor.dim() == 4 and shape[1] == heads:  # (B, H, N, D), (B, H, N, N)
                return shape[0], heads, tensor.numel() // (shape[0] * heads)
            if tensor.dim() == 3 and shape[0] % heads == 0:  # bmm's (B*H, N, D)
                return shape[0] // heads, heads, shape[1] * shape[2]
            return None
        features = _feature_size(module)
        if features is not None and shape[-1] != features:
            return None  # e.g. LayerNorm's per-row mean and 1/std: kept exact
        channels = shape[-1]
        groups = self.groups if channels % self.groups == 0 else 1
        return tensor.numel() // channels, groups, channels // groups

    def _pack(self, tensor: torch.Tensor, name: str, module: nn.Module, kind: str,
              slots: Iterator[int]) -> Any:
        layout = self._grouped_shape(tensor, module, kind)
        treatment = self.policy(module, kind) if layout is not None else None
        if treatment is None or (treatment.keep is not None and kind == "attention"):
            return self._pass(tensor)
        key = None
        if tensor.is_contiguous():
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), tensor.storage_offset(), tensor.numel(), tensor.dtype,
                   tensor._version, layout, treatment)
            cached = self._cache.get(key)
            if cached is not None and cached[0]() is not None:
                return _Saved(cached[1], tensor.shape)
        if treatment.keep is not None:
            quantized: _Quantized | _Pruned = self._prune(tensor, treatment.keep)
        else:
            quantized = self._quantize(tensor, layout, f"{name}#{next(slots)}",
                                       treatment.bits)
        if key is not None:
            self._cache[key] = (weakref.ref(tensor), quantized)
        return _Saved(quantized, tensor.shape)

    @torch.no_grad()
    def _quantize(self, tensor: torch.Tensor, layout: tuple[int, int, int], slot: str,
                  bits: int = 8) -> _Quantized:
        if bits not in (2, 4, 8):
            raise HundredError(f"saved activations quantise to 2, 4 or 8 bits, not {bits}")
        levels_count = 2 ** bits
        grouped = tensor.detach().reshape(layout).float()
        low = grouped.amin(dim=(0, 2))
        span = grouped.amax(dim=(0, 2)) - low
        shift, clip = self._estimate(slot, low, span)
        scale = (levels_count - 1) / clip.clamp_min(1e-8)
        noise = torch.rand_like(grouped)  # stochastic rounding, as the official kernel
        levels = ((grouped - shift[None, :, None]) * scale[None, :, None] + noise).floor_()
        data = levels.clamp_(0, levels_count - 1).to(torch.uint8)
        if bits < 8:  # 8 // bits codes per byte (the last byte padded with zeros)
            per_byte = 8 // bits
            flat = data.reshape(-1)
            flat = torch.cat([flat, flat.new_zeros(-flat.numel() % per_byte)])
            codes = flat.reshape(-1, per_byte)
            data = codes[:, 0].clone()
            for index in range(1, per_byte):
                data |= codes[:, index] << (bits * index)
        outer = self._outer
        if outer is None:
            return _Quantized(data, scale, shift, tensor.dtype, _identity, bits, layout)
        return _Quantized(outer[0](data), outer[0](scale), outer[0](shift), tensor.dtype,
                          outer[1], bits, layout)

    @torch.no_grad()
    def _prune(self, tensor: torch.Tensor, keep: float) -> _Pruned:
        """Keep the share ``keep`` of the entries largest in ``|x - row mean| / row std``
        (over the whole tensor); the others are restored as their row's mean."""
        values = tensor.detach()
        rows = values.float()
        means = rows.mean(dim=-1, keepdim=True)
        normalised = (rows - means) / rows.var(dim=-1, unbiased=False, keepdim=True
                                               ).add(1e-12).sqrt()
        count = max(1, int(values.numel() * keep))
        positions = normalised.reshape(-1).abs().topk(count, sorted=False).indices
        kept = values.reshape(-1)[positions].clone()
        positions = positions.to(torch.int32)
        means = means.to(tensor.dtype)
        outer = self._outer
        if outer is None:
            return _Pruned(kept, positions, means, tensor.shape, tensor.dtype, _identity)
        return _Pruned(outer[0](kept), outer[0](positions), outer[0](means), tensor.shape,
                       tensor.dtype, outer[1])

    def _estimate(self, slot: str, low: torch.Tensor, span: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The running (shift, clip) of ``slot`` after this batch's min and range (copies:
        the backward pass needs the values of this step)."""
        current = self.estimates.get(slot)
        if current is None or current["shift"].shape != low.shape:
            if not self._update:
                return low.clone(), span.clone()
            current = {"shift": low.clone(), "clip": span.clone(),
                       "updates": torch.ones((), dtype=torch.long)}
            self.estimates[slot] = current
            return low.clone(), span.clone()
        shift = current["shift"].to(low.device)
        clip = current["clip"].to(low.device)
        if self._update:
            shift = shift - (1 - EMA_DECAY) * (shift - low)
            clip = clip - (1 - EMA_DECAY) * (clip - span)
            current.update(shift=shift, clip=clip, updates=current["updates"] + 1)
        return shift.clone(), clip.clone()

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, _Passed):
            return packed.unpack(packed.packed)
        quantized = packed.quantized
        unpack = quantized.unpack
        if isinstance(quantized, _Pruned):
            means = unpack(quantized.means)
            restored = means.expand(quantized.shape).contiguous().reshape(-1)
            restored[unpack(quantized.positions).long()] = unpack(quantized.values)
            return restored.reshape(quantized.shape).reshape(packed.shape)
        data, scale, shift = (unpack(quantized.data), unpack(quantized.scale),
                              unpack(quantized.shift))
        if quantized.bits < 8:
            bits, layout = quantized.bits, quantized.layout
            mask = (1 << bits) - 1
            codes = torch.stack([(data >> (bits * index)) & mask
                                 for index in range(8 // bits)], dim=1)
            data = codes.reshape(-1)[:layout[0] * layout[1] * layout[2]].reshape(layout)
        values = data.float() / scale[None, :, None] + shift[None, :, None]
        return values.to(quantized.dtype).reshape(packed.shape)

    # -- checkpoint ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running estimates, ``<module>#<slot>.{shift,clip,updates}`` (CPU copies)."""
        return {f"{slot}.{key}": value.detach().cpu().clone()
                for slot, entry in self.estimates.items() for key, value in entry.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        estimates: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            slot, _, field = key.rpartition(".")
            estimates.setdefault(slot, {})[field] = value.clone()
        self.estimates = estimates


def check_mesa_config(config: Any) -> None:
    """Refuse ``train.mesa=true`` for a run whose model Mesa cannot serve (no timm attention
    blocks) or with ``model.compile`` (the module hooks Mesa relies on are not traced),
    before anything is written: the model is built on the meta device (nothing allocated)."""
    if not config.train.mesa:
        return
    if config.model.compile:
        raise HundredError("train.mesa=true cannot be combined with model.compile=true: Mesa "
                           "works through module hooks and saved-tensor hooks")
    from hundred.models import create

    size = {"img_size": config.data.image_size} if config.data.image_size else {}
    with torch.device("meta"):
        model = create(config.model.name, 2, head=config.model.head, **size,
                       **config.model.options)
    if not attention_modules(model):
        raise HundredError(
            f"train.mesa=true needs a Vision Transformer (timm Attention blocks); model "
            f"{config.model.name} has none. Use a ViT (e.g. model.name=vit_tiny_p4_32) or "
            "train.mesa=false")
