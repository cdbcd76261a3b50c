"""Flow matching / rectified flow: the training objective and the ODE steps its samplers use.

Convention (FlowTurbo's, Zhao et al., NeurIPS 2024, arXiv 2409.18128, Sec. 3.1; the same as
rectified flow, Liu et al., ICLR 2023, and flow matching, Lipman et al., ICLR 2023, up to the
direction of time): noise ``x0 ~ N(0, I)`` at ``t = 0``, data ``x1`` at ``t = 1``, the straight
path ``x_t = t x1 + (1 - t) x0`` and its velocity ``dx_t/dt = x1 - x0``. The network ``v(x, t, y)``
regresses that velocity,

    L = E_{t, x0, x1} || v(x_t, t, y) - (x1 - x0) ||^2,

and sampling integrates ``dx/dt = v(x, t, y)`` from ``t = 0`` (noise) to ``t = 1`` (data).

The steps are written by hand on a generic velocity function ``velocity(x, t) -> v`` (``t`` a
float tensor ``[B]``): FlowTurbo interleaves Heun steps, pseudo-corrector steps (a Heun step that
reuses the corrector velocity of the step before) and velocity-refiner steps within one
trajectory, and needs the velocities each step computed; diffusers' FlowMatch schedulers
(``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``) run one fixed rule per
trajectory and keep those velocities internal, so they cannot express it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Literal

import torch
from torch import Tensor, nn

from hundred.errors import HundredError

if TYPE_CHECKING:
    from hundred.tracks.generate.method import SampleContext

# velocity(x, t) -> v: x [B, C, H, W], t float [B] in [0, 1].
Velocity = Callable[[Tensor, Tensor], Tensor]
# evaluate(model, x, t, labels, nfe) -> output; SampleContext.evaluate counts NFE this way.
Evaluate = Callable[..., Tensor]
TimeSampling = Literal["uniform", "logit_normal"]
Solver = Literal["euler", "heun"]


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """``t`` of shape ``[B]`` broadcast against ``like`` ``[B, ...]``."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def sample_times(n: int, device: torch.device | str, generator: torch.Generator | None = None,
                 kind: TimeSampling = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0) -> Tensor:
    """``n`` training times in ``(0, 1)``: uniform (rectified flow, FlowTurbo/SiT), or
    logit-normal ``sigmoid(N(logit_mean, logit_std^2))`` (Esser et al., "Scaling Rectified Flow
    Transformers", ICML 2024), which puts more weight on the middle of the path."""
    if kind == "uniform":
        return torch.rand(n, device=device, generator=generator)
    if kind == "logit_normal":
        normal = torch.randn(n, device=device, generator=generator)
        return torch.sigmoid(logit_mean + logit_std * normal)
    raise HundredError(f"unknown flow time sampling {kind!r}; use uniform or logit_normal")


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """The straight path ``x_t = t x1 + (1 - t) x0`` (``t`` ``[B]``)."""
    t = _expand(t, x1)
    return t * x1 + (1 - t) * x0


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """The velocity of the straight path, ``d x_t / dt = x1 - x0`` (constant in ``t``)."""
    return x1 - x0


def drop_labels(labels: Tensor, label_dropout: float, null_label: int,
                generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``label_dropout`` (classifier-free
    guidance training, Ho & Salimans 2022)."""
    if label_dropout <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < label_dropout
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def flow_loss(model: nn.Module, x1: Tensor, labels: Tensor, label_dropout: float = 0.0,
              null_label: int | None = None, generator: torch.Generator | None = None,
              time_sampling: TimeSampling = "uniform", logit_mean: float = 0.0,
              logit_std: float = 1.0) -> Tensor:
    """The flow-matching loss of one batch: ``mean || v(x_t, t, y) - (x1 - x0) ||^2``.

    ``x1``: data in the denoiser's space (pixels in [-1, 1] or latents); ``labels`` are dropped
    to ``null_label`` with probability ``label_dropout`` (0 by default: the track's
    :meth:`GenerateMethod.loss` drops them before the call); ``t`` from :func:`sample_times`;
    ``x0`` standard normal. All randomness from ``generator`` (global RNG when ``None``).
    """
    t = sample_times(x1.shape[0], x1.device, generator, time_sampling, logit_mean, logit_std)
    x0 = torch.randn(x1.shape, device=x1.device, generator=generator, dtype=x1.dtype)
    x_t = interpolate(x0, x1, t)
    if label_dropout > 0:
        if null_label is None:
            raise HundredError("flow_loss: label_dropout > 0 needs the null label")
        labels = drop_labels(labels, label_dropout, null_label, generator)
    prediction = model(x_t, t.to(x1.dtype), labels)
    return torch.mean((prediction.float() - target_velocity(x0, x1).float()) ** 2)


def guided_velocity(model: nn.Module, labels: Tensor, guidance: float, null_label: int,
                    evaluate: Evaluate | None = None) -> Velocity:
    """The classifier-free-guided velocity ``v = v(x, t, null) + w (v(x, t, y) - v(x, t, null))``.

    ``w = 1`` is the conditional velocity (one evaluation), ``w = 0`` the unconditional one
    (one evaluation); otherwise both in one call on a doubled batch (2 NFE). ``evaluate`` is
    :meth:`SampleContext.evaluate` (which counts NFE per sample); plain ``model(x, t, y)`` when
    ``None``.
    """

    def call(x: Tensor, t: Tensor, y: Tensor, nfe: int) -> Tensor:
        if evaluate is None:
            return model(x, t, y)
        return evaluate(model, x, t, y, nfe=nfe)

    null = torch.full_like(labels, null_label)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        if guidance == 1:
            return call(x, t, labels, 1)
        if guidance == 0:
            return call(x, t, null, 1)
        both = call(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]), 2)
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    return velocity


def uniform_times(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """``steps + 1`` evenly spaced times from 0 (noise) to 1 (data), FlowTurbo's grid."""
    if steps <= 0:
        raise HundredError(f"the number of flow sampling steps must be > 0, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device)


def _batch_time(x: Tensor, t: float | Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)


def euler_step(velocity: Velocity, x: Tensor, t: float | Tensor, t_next: float | Tensor,
               v: Tensor | None = None) -> Tensor:
    """One explicit Euler step ``x + (t_next - t) v(x, t)`` (first order; 1 evaluation, none
    when the velocity ``v`` at ``(x, t)`` is given)."""
    if v is None:
        v = velocity(x, _batch_time(x, t))
    return x + (float(t_next) - float(t)) * v


def heun_step(velocity: Velocity, x: Tensor, t: float | Tensor, t_next: float | Tensor,
              v: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One Heun step (explicit trapezoidal rule, second order; FlowTurbo Eq. 4):

        x~ = x + dt v(x, t);   x' = x + dt/2 (v(x, t) + v(x~, t + dt)).

    Returns ``(x', v(x~, t + dt))``: the corrector velocity, which the pseudo corrector
    (FlowTurbo Sec. 3.3) reuses as the next step's ``v``. Two evaluations, or one when ``v``
    (the velocity at ``(x, t)``, e.g. the previous corrector velocity) is given.
    """
    dt = float(t_next) - float(t)
    if v is None:
        v = velocity(x, _batch_time(x, t))
    predicted = x + dt * v
    v_next = velocity(predicted, _batch_time(x, t_next))
    return x + 0.5 * dt * (v + v_next), v_next


def integrate(velocity: Velocity, x0: Tensor, times: Tensor | list[float],
              method: Solver = "euler") -> Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from ``times[0]`` to ``times[-1]`` with one Euler or
    Heun step per interval (``len(times) - 1`` or ``2 (len(times) - 1)`` evaluations)."""
    times = [float(t) for t in times]
    if len(times) < 2:
        raise HundredError("integrate needs at least two times")
    if method not in ("euler", "heun"):
        raise HundredError(f"unknown flow solver {method!r}; use euler or heun")
    x = x0
    for t, t_next in zip(times[:-1], times[1:]):
        if method == "euler":
            x = euler_step(velocity, x, t, t_next)
        else:
            x, _ = heun_step(velocity, x, t, t_next)
    return x


def sample_flow(model: nn.Module, labels: Tensor, ctx: "SampleContext", solver: Solver,
                guidance: float) -> Tensor:
    """Samples of ``labels``: noise from ``ctx`` at ``t = 0`` integrated to ``t = 1`` with
    ``ctx.settings.steps`` Euler or Heun steps of the guided velocity (NFE counted by ``ctx``:
    ``steps`` or ``2 steps``, twice that with guidance w not in {0, 1})."""
    velocity = guided_velocity(model, labels, guidance, ctx.null_label, ctx.evaluate)
    x0 = ctx.noise(labels.shape[0])
    return integrate(velocity, x0, uniform_times(ctx.settings.steps, ctx.device), solver)
