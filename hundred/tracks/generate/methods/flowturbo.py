"""FlowTurbo: Heun steps early, pseudo-corrector steps, then a lightweight velocity refiner.

Zhao, Shi, Yu, Zhou, Lu, "FlowTurbo: Towards Real-time Flow-Based Image Generation with
Velocity Refiner", NeurIPS 2024 (arXiv 2409.18128). The base network is a flow-matching
velocity predictor ``v_theta(x, t, y)`` (``x_t = t x1 + (1 - t) x0``, noise at 0, data at 1),
trained as for ``flow_euler``. Sampling runs ``N = generate.steps`` evenly spaced steps
``t_0 = 0 < ... < t_N = 1`` in three blocks, in the order the paper found best (Table 4c):

* ``H`` Heun steps (Eq. 4): ``x~ = x_i + dt v(x_i, t_i)``, ``x_{i+1} = x_i + dt/2 (v(x_i, t_i)
  + v(x~, t_{i+1}))`` — 2 network evaluations each;
* ``P`` pseudo-corrector steps (Sec. 3.3, Eq. 8): the same update, but ``v(x_i, t_i)`` is
  replaced by the corrector velocity of the step before, ``v(x~_i, t_i)``, so each step costs
  1 evaluation and keeps Heun's order of convergence (the paper's Theorem; the first step of
  a trajectory, having no previous velocity, evaluates both);
* ``R`` refiner steps (Sec. 3.2, Eq. 6-7): the velocity network is not called at all; a
  lightweight refiner ``r_phi`` predicts the change of velocity, ``v_i = v_{i-1} + r_phi(x_i,
  t_i, v_{i-1})``. As in the official implementation the refiner step has Heun's structure,
  ``d = v + r(x_i, t_i, v)``, ``x~ = x_i + dt d``, ``d' = d + r(x~, t_{i+1}, d)``, ``x_{i+1} = x_i
  + dt/2 (d + d')``, and ``d`` is carried to the next refiner step.

The refiner (:class:`VelocityRefiner`, a three-layer conv net on ``[x, v]`` with a FiLM time
embedding: well under 1% of the base UNet's parameters) is trained after the base network
(:meth:`FlowTurbo.after_training`), against the frozen base network's velocity (Eq. 7):

    L(phi) = || v_T(x_t, t) + r_phi(x', t + dt, v_T(x_t, t)) - v_T(x', t + dt) ||^2,
    x' = x_t + dt v_T(x_t, t),  dt ~ U(0, max_dt)  (the paper: U(0, 0.12)),

with ``v_T`` the guided velocity the sampler uses (``generate.guidance``). Choices where the
paper leaves room (written down here and in the docs):

* the refiner only ever runs on the late steps ``t in [t_R, 1]`` with ``t_R = (H + P) / N``, so
  it is trained there only: ``t + dt ~ U(t_R, 1)`` (the official code draws ``t ~ U(0, 1)``);
* ``max_dt`` defaults to ``max(0.12, 1 / N)``: the paper's 0.12 covers one step of its ~9-step
  schedules, and the refiner must see the step it is used with;
* the refiner takes no label: it refines the guided velocity, which already carries the class
  (the official refiner has a label embedding and its own CFG); so it is trained for one
  guidance scale, and is retrained when a reused run (``generate.init``) had another;
* ``H, P, R`` default to the official sampler's proportions ``2 : 4 : 3`` of ``N`` (its
  default ``N_H=2, N_P=4, N_R=3`` at ``N = 9``); explicit counts must add up to ``N``.

Sample-aware compilation (Sec. 3.4): with ``method_params.compile=true`` the velocity network
(used by the Heun and pseudo-corrector blocks) and the refiner step are each compiled once
with ``torch.compile`` and reused for every step of their block (times are passed as tensors,
so one graph serves every step). Off by default: compiling costs more than it saves at CPU
test scale.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from hundred.errors import HundredError
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.generate.flow import (
    Velocity,
    guided_velocity,
    heun_step,
    interpolate,
    uniform_times,
)
from hundred.tracks.generate.method import GenerateMethod, SampleContext, TrainContext

PAPER_MAX_DT = 0.12  # Sec. 3.2 / official train: dt ~ U(0, 0.12)
# refine_step(x, t [B], t_next [B], v) -> (x_next, d): one refiner step (no network call)
RefineStep = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class FlowTurboParams(BaseModel):
    """FlowTurbo's sampler blocks and its refiner."""

    model_config = ConfigDict(extra="forbid")

    heun_steps: Optional[int] = Field(
        None, ge=0, description="H: Heun steps at the start (2 NFE each). None: round(2N/9) "
        "of N = generate.steps (the official default H=2 of N=9)")
    pseudo_steps: Optional[int] = Field(
        None, ge=0, description="P: pseudo-corrector steps after them (1 NFE each). None: "
        "N - H - R (official default 4 of 9)")
    refiner_steps: Optional[int] = Field(
        None, ge=0, description="R: velocity-refiner steps at the end (no base-network "
        "evaluation). None: round(N/3) (official default 3 of 9)")
    refiner_width: int = Field(32, ge=4, description="channels of the refiner's conv layers "
                               "(the paper: one SiT block; here a tiny conv net)")
    refiner_train_steps: int = Field(
        100, ge=1, description="optimiser steps of refiner training (batches of the training "
        "loader; the paper trains a few hours at ImageNet scale, a small fraction of the base)")
    refiner_lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the refiner "
                              "(official: 5e-5 for a transformer block; a tiny conv net "
                              "takes a larger one)")
    refiner_max_dt: Optional[float] = Field(
        None, gt=0, le=1, description="dt ~ U(0, max_dt) in refiner training (paper: 0.12). "
        "None: max(0.12, 1/N), so the refiner sees the sampler's step")
    compile: bool = Field(False, description="sample-aware torch.compile of the velocity "
                          "network and the refiner step (paper Sec. 3.4); off by default "
                          "(compilation time dominates at CPU scale)")


def split_steps(total: int, heun: int | None = None, pseudo: int | None = None,
                refine: int | None = None) -> tuple[int, int, int]:
    """``(H, P, R)`` for ``total`` steps: given counts kept, the missing ones from the official
    2 : 4 : 3 proportions (``R = round(N/3)``, ``H = max(1, round(2N/9))``, ``P`` the rest);
    HundredError when they cannot add up to ``total``."""
    if total <= 0:
        raise HundredError(f"flowturbo needs generate.steps > 0, got {total}")
    default_r = round(total / 3)
    default_h = min(max(1, round(2 * total / 9)), total - default_r)
    h, p, r = heun, pseudo, refine
    if p is None:
        h = default_h if h is None else h
        r = default_r if r is None else r
        p = total - h - r
    elif r is None:
        h = default_h if h is None else h
        r = total - h - p
    elif h is None:
        h = total - p - r
    if h + p + r != total or min(h, p, r) < 0:
        raise HundredError(
            f"flowturbo: heun_steps {heun}, pseudo_steps {pseudo}, refiner_steps {refine} "
            f"cannot add up to generate.steps = {total} (H + P + R = N; set --steps or the "
            "three counts)")
    return h, p, r


def flowturbo_nfe(heun: int, pseudo: int, refine: int, guided: bool = False) -> int:
    """Base-network evaluations per sample of an ``H P R`` schedule: 2 per Heun step, 1 per
    pseudo-corrector step (plus 1 when the trajectory starts with one), none per refiner step
    (1 when the trajectory starts with one: it needs a first velocity); doubled by CFG."""
    count = 2 * heun + pseudo
    if heun == 0 and (pseudo > 0 or refine > 0):
        count += 1
    return count * (2 if guided else 1)


class VelocityRefiner(nn.Module):
    """``r_phi(x, t, v)``: the velocity change, from ``[x, v]`` and a FiLM embedding of ``t``.

    Three 3x3 convolutions; the output layer starts at zero, so an untrained refiner carries
    the previous velocity unchanged (``v_i = v_{i-1}``)."""

    def __init__(self, channels: int, width: int = 32, frequencies: int = 8) -> None:
        super().__init__()
        self.channels, self.width, self.frequencies = channels, width, frequencies
        self.inp = nn.Conv2d(2 * channels, width, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(2 * frequencies, width), nn.SiLU(),
                                  nn.Linear(width, 2 * width))
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, t: Tensor) -> Tensor:
        dtype = self.time[0].weight.dtype
        scales = math.pi * 2.0 ** torch.arange(self.frequencies, device=t.device, dtype=dtype)
        angles = t.to(dtype)[:, None] * scales[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: Tensor, t: Tensor, v: Tensor) -> Tensor:
        h = F.silu(self.inp(torch.cat([x, v], dim=1)))
        scale, shift = self.time(self.embed(t)).chunk(2, dim=1)
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.out(F.silu(self.mid(h)))


def refiner_step(refiner: nn.Module, x: Tensor, t: Tensor, t_next: Tensor, v: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """One refiner step (Heun-structured, no base-network call): ``d = v + r(x, t, v)``,
    ``d' = d + r(x + dt d, t_next, d)``, ``x' = x + dt/2 (d + d')``; returns ``(x', d)``."""
    dt = (t_next - t).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    d = v + refiner(x, t, v)
    d_next = d + refiner(x + dt * d, t_next, d)
    return x + 0.5 * dt * (d + d_next), d


def flowturbo_sample(velocity: Velocity, refine_step: RefineStep | None, x: Tensor, heun: int,
                     pseudo: int, refine: int) -> Tensor:
    """Integrate ``x`` (noise at ``t = 0``) to ``t = 1`` over ``H + P + R`` even steps: ``H``
    Heun, ``P`` pseudo-corrector, ``R`` refiner steps (see the module docstring)."""
    total = heun + pseudo + refine
    times = [float(t) for t in uniform_times(total)]
    v: Tensor | None = None  # the velocity the next pseudo-corrector / refiner step reuses

    def batch_time(value: float) -> Tensor:
        return torch.full((x.shape[0],), value, device=x.device, dtype=x.dtype)

    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        if i < heun:
            x, v = heun_step(velocity, x, t, t_next)
        elif i < heun + pseudo:
            x, v = heun_step(velocity, x, t, t_next, v=v)
        else:
            if refine_step is None:
                raise HundredError("flowturbo: refiner steps need a trained velocity refiner")
            if v is None:  # a trajectory that starts with refiner steps needs one velocity
                v = velocity(x, batch_time(t))
            x, v = refine_step(x, batch_time(t), batch_time(t_next), v)
    return x


def refiner_loss(refiner: nn.Module, velocity: Velocity, x1: Tensor, t_min: float,
                 max_dt: float, generator: torch.Generator | None = None,
                 with_baseline: bool = False) -> tuple[Tensor, ...]:
    """FlowTurbo's refiner objective (Eq. 7) on data ``x1``, restricted to the refiner's range.

    The refiner is evaluated at ``s = t + dt`` with ``s ~ U(t_min, 1)`` and ``dt ~ U(0,
    max_dt)`` (``t = max(s - dt, 0)``); ``x_t`` on the straight path from fresh noise;
    ``v_T = velocity(x_t, t)`` and the target ``velocity(x_t + dt v_T, s)`` come from the frozen
    base network. Returns the loss and the times ``s`` the refiner was trained at (and, with
    ``with_baseline``, the loss of a zero refiner: how much the velocity changes).
    """
    n, device = x1.shape[0], x1.device
    s = t_min + (1 - t_min) * torch.rand(n, device=device, generator=generator)
    dt = max_dt * torch.rand(n, device=device, generator=generator)
    t = (s - dt).clamp_min(0.0)
    dt = (s - t).reshape(-1, *([1] * (x1.dim() - 1)))
    x0 = torch.randn(x1.shape, device=device, generator=generator, dtype=x1.dtype)
    with torch.no_grad():
        x_t = interpolate(x0, x1, t)
        v_t = velocity(x_t, t)
        x_next = x_t + dt * v_t
        target = velocity(x_next, s)
    prediction = v_t + refiner(x_next, s, v_t)
    loss = torch.mean((prediction - target) ** 2)
    if with_baseline:  # the loss of no refiner (the velocity carried over unchanged)
        return loss, s, torch.mean((v_t - target) ** 2)
    return loss, s


@register("generate", "flowturbo")
class FlowTurbo(GenerateMethod):
    """Heun + pseudo corrector + velocity refiner sampling of a flow-matching network."""

    objective = "flow"
    Params = FlowTurboParams
    search_space = {"generate.guidance": Choice((1.0, 1.5, 2.0, 3.0)),
                    "method_params.refiner_steps": Choice((0, 2, 3, 4))}

    def __init__(self, params: dict[str, Any] | None = None, config: Any = None) -> None:
        super().__init__(params, config)
        self.refiner: VelocityRefiner | None = None
        self.refiner_meta: dict[str, float] = {}
        self._compiled: dict[int, Any] = {}

    # -- the schedule ----------------------------------------------------------------------------
    def plan(self, steps: int | None = None) -> tuple[int, int, int]:
        """``(H, P, R)`` for ``generate.steps`` (or ``steps``)."""
        p = self.params
        total = self.config.generate.steps if steps is None else steps
        return split_steps(total, p.heun_steps, p.pseudo_steps, p.refiner_steps)

    def refiner_range(self, plan: tuple[int, int, int]) -> float:
        """``t_R``: where the refiner steps start."""
        heun, pseudo, refine = plan
        return (heun + pseudo) / (heun + pseudo + refine)

    def max_dt(self, plan: tuple[int, int, int]) -> float:
        given = self.params.refiner_max_dt
        return given if given is not None else max(PAPER_MAX_DT, 1.0 / sum(plan))

    def prepare(self, num_classes: int, data_name: str, image_size: int) -> None:
        self.plan()  # an impossible H / P / R split fails before the run directory exists

    # -- the refiner -----------------------------------------------------------------------------
    def _refiner_fits(self, channels: int, t_min: float, guidance: float) -> bool:
        meta = self.refiner_meta
        return (self.refiner is not None and meta.get("channels") == channels
                and meta.get("width") == self.params.refiner_width
                and abs(meta.get("t_min", -1) - t_min) < 1e-6
                and abs(meta.get("guidance", -1) - guidance) < 1e-6)

    def after_training(self, model: nn.Module, ctx: TrainContext) -> dict[str, Any]:
        """Train the velocity refiner against the frozen base network (Eq. 7), on the late
        steps only; reuse a loaded one (``generate.init``) trained for the same schedule and
        guidance. Returns its cost next to the base network's."""
        plan = self.plan()
        heun, pseudo, refine = plan
        entries: dict[str, Any] = {"flowturbo_steps": {"heun": heun, "pseudo": pseudo,
                                                       "refiner": refine},
                                   "flowturbo_nfe": flowturbo_nfe(
                                       *plan, guided=self.guidance() not in (0.0, 1.0))}
        if refine == 0:
            return entries
        t_min, guidance, channels = self.refiner_range(plan), self.guidance(), ctx.shape[0]
        base_params = sum(p.numel() for p in model.parameters())
        if self._refiner_fits(channels, t_min, guidance):
            entries.update(refiner_reused=True, refiner_params=self._refiner_params(),
                           refiner_params_ratio=self._refiner_params() / base_params)
            return entries
        seed = self.config.seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            refiner = VelocityRefiner(channels, self.params.refiner_width)
        refiner.to(ctx.device).train()
        model.eval()
        generator = torch.Generator(device=ctx.device).manual_seed(seed + 1)
        optimizer = torch.optim.AdamW(refiner.parameters(), lr=self.params.refiner_lr,
                                      weight_decay=0.0)
        max_dt = self.max_dt(plan)
        # a few hundred steps against a frozen teacher, after the base training: a plain loop
        # (the engine's Trainer optimises the run's model with the method's loss per epoch)
        losses: list[float] = []
        baselines: list[float] = []
        start = time.perf_counter()
        while len(losses) < self.params.refiner_train_steps:
            for images, labels in ctx.loader:
                with torch.no_grad():
                    x1 = ctx.to_model_space(images).float()
                velocity = guided_velocity(model, labels, guidance, ctx.num_classes)
                loss, _, baseline = refiner_loss(refiner, velocity, x1, t_min, max_dt,
                                                 generator, with_baseline=True)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                baselines.append(baseline.item())
                if len(losses) >= self.params.refiner_train_steps:
                    break
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - start
        self.refiner = refiner.eval().requires_grad_(False)
        self.refiner_meta = {"channels": channels, "width": self.params.refiner_width,
                             "t_min": t_min, "guidance": guidance}
        self._compiled.clear()
        last = max(1, len(losses) // 10)  # the losses of the last tenth of the steps
        tail, tail_baseline = losses[-last:], baselines[-last:]
        entries.update(refiner_reused=False, refiner_params=self._refiner_params(),
                       refiner_params_ratio=self._refiner_params() / base_params,
                       refiner_train_seconds=round(seconds, 2),
                       refiner_train_steps=len(losses), refiner_t_range=[t_min, 1.0],
                       refiner_max_dt=max_dt, refiner_loss=sum(tail) / len(tail),
                       refiner_loss_without=sum(tail_baseline) / len(tail_baseline))
        return entries

    def _refiner_params(self) -> int:
        return sum(p.numel() for p in self.refiner.parameters()) if self.refiner else 0

    def state_for_sampling(self) -> dict[str, Tensor]:
        if self.refiner is None:
            return {}
        state = {f"refiner.{k}": v for k, v in self.refiner.state_dict().items()}
        state.update({f"refiner_meta.{k}": torch.tensor(float(v))
                      for k, v in self.refiner_meta.items()})
        return state

    def load_for_sampling(self, state: dict[str, Tensor]) -> None:
        meta = {k.split(".", 1)[1]: float(v) for k, v in state.items()
                if k.startswith("refiner_meta.")}
        weights = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("refiner.")}
        if not weights:  # a run of another flow sampler: after_training trains a refiner
            return
        channels, width = int(meta["channels"]), int(meta["width"])
        refiner = VelocityRefiner(channels, width)
        refiner.load_state_dict(weights)
        device = next(iter(weights.values())).device
        self.refiner = refiner.to(device).eval().requires_grad_(False)
        self.refiner_meta = {**meta, "channels": channels, "width": width}
        self._compiled.clear()

    # -- sampling --------------------------------------------------------------------------------
    def _maybe_compiled(self, module: nn.Module) -> Any:
        if not self.params.compile:
            return module
        key = id(module)
        if key not in self._compiled:
            self._compiled[key] = torch.compile(module, dynamic=False)
        return self._compiled[key]

    def sample(self, model: nn.Module, labels: torch.Tensor, ctx: SampleContext
               ) -> torch.Tensor:
        heun, pseudo, refine = self.plan(ctx.settings.steps)
        step: RefineStep | None = None
        if refine > 0:
            if self.refiner is None:
                raise HundredError("flowturbo: no velocity refiner (it is trained after the "
                                   "base network, or loaded from a flowturbo generate.init run)")
            refiner = self.refiner.to(ctx.device)
            step = partial(refiner_step, refiner)
            if self.params.compile:
                key = -id(refiner)  # the whole refiner step, compiled once
                if key not in self._compiled:
                    self._compiled[key] = torch.compile(step, dynamic=False)
                step = self._compiled[key]
        velocity = guided_velocity(self._maybe_compiled(model), labels, self.guidance(),
                                   ctx.null_label, ctx.evaluate)
        return flowturbo_sample(velocity, step, ctx.noise(labels.shape[0]), heun, pseudo, refine)
