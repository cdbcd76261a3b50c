"""DDPM training and the DDPM / DDIM samplers with classifier-free guidance.

* Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models" (NeurIPS 2020): the forward
  process ``q(x_k | x_0) = N(sqrt(abar_k) x_0, (1 - abar_k) I)`` (Eq. 4), the simple loss
  ``|| eps - eps_theta(sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps, k) ||^2`` (Eq. 14) with
  ``k`` uniform, and ancestral sampling (Algorithm 2);
* Song, Meng, Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021): the DDIM update over
  a sub-sequence of steps (Eq. 12), deterministic at ``eta = 0``, DDPM-like at ``eta = 1``,
  and its inversion (the same ODE run from data to noise);
* Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022): ``eps~ = eps(x, null) + w
  (eps(x, c) - eps(x, null))`` (Eq. 6 written with w = 1 + their w), one network trained with
  label dropout; ``w = 1`` is the conditional model, ``w = 0`` the unconditional one;
* Nichol & Dhariwal, "Improved DDPM" (ICML 2021): the cosine schedule.

The schedules and the update rules are diffusers' (``DDPMScheduler``, ``DDIMScheduler``,
``DDIMInverseScheduler``); what is written here is the glue: the track's ``t = k / T`` call
convention, guidance, NFE counting and noise from the run's generator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hundred.tracks.generate.method import SampleContext

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def scheduler(kind: str, timesteps: int, schedule: str, clip: bool = True) -> Any:
    """A diffusers scheduler (``ddpm``, ``ddim`` or ``ddim_inverse``) of the run's schedule;
    ``clip``: the prediction of x_0 is clipped to [-1, 1] at every step."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler,
           "ddim_inverse": DDIMInverseScheduler}[kind]
    options: dict[str, Any] = {"num_train_timesteps": timesteps,
                               "beta_schedule": BETA_SCHEDULES[schedule]}
    if kind == "ddpm":
        options.update(variance_type="fixed_small", clip_sample=clip)
    else:
        options.update(clip_sample=clip, set_alpha_to_one=True, timestep_spacing="trailing")
    return cls(**options)


class Schedule:
    """The forward process of a DDPM schedule: ``alphas_cumprod`` on a device."""

    def __init__(self, timesteps: int, kind: str = "linear",
                 device: torch.device | str = "cpu") -> None:
        self.timesteps = timesteps
        self.alphas_cumprod = scheduler("ddpm", timesteps, kind).alphas_cumprod.to(device)

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) noise`` (DDPM Eq. 4)."""
        abar = self.alphas_cumprod[k].view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


_SCHEDULES: dict[tuple, Schedule] = {}


def schedule_of(settings: Any, device: torch.device | str) -> Schedule:
    """The (cached) schedule of ``config.generate``."""
    key = (settings.timesteps, settings.schedule, str(device))
    if key not in _SCHEDULES:
        _SCHEDULES[key] = Schedule(settings.timesteps, settings.schedule, device)
    return _SCHEDULES[key]


def ddpm_loss(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, schedule: Schedule
              ) -> torch.Tensor:
    """DDPM's simple loss (Eq. 14): MSE between the noise and the network's prediction of it
    at a uniform step ``k``; the network sees ``t = k / T``."""
    k = torch.randint(0, schedule.timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_k = schedule.q_sample(x0, k, noise)
    prediction = model(x_k, k.float() / schedule.timesteps, labels)
    return torch.nn.functional.mse_loss(prediction.float(), noise.float())


def guided(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
           guidance: float, ctx: SampleContext) -> torch.Tensor:
    """The classifier-free guided prediction ``p(null) + w (p(c) - p(null))``. ``w = 1`` is
    one conditional call, ``w = 0`` one unconditional call; otherwise both in one doubled
    batch (2 NFE)."""
    if guidance == 1.0:
        return ctx.evaluate(model, x, t, labels)
    null = torch.full_like(labels, ctx.null_label)
    if guidance == 0.0:
        return ctx.evaluate(model, x, t, null)
    both = ctx.evaluate(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]),
                        nfe=2)
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


@torch.no_grad()
def ddpm_sample(model: nn.Module, labels: torch.Tensor, ctx: SampleContext,
                guidance: float | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Algorithm 2) over ``generate.steps`` steps (T when it equals
    T; fewer steps skip timesteps as diffusers' DDPMScheduler does)."""
    settings = ctx.settings
    guidance = settings.guidance if guidance is None else guidance
    sched = scheduler("ddpm", settings.timesteps, settings.schedule, settings.clip_sample)
    sched.set_timesteps(min(settings.steps, settings.timesteps), device=ctx.device)
    x = ctx.noise(labels.shape[0])
    for k in sched.timesteps:
        t = ctx.times(x.shape[0], float(k) / settings.timesteps)
        eps = guided(model, x, t, labels, guidance, ctx)
        x = sched.step(eps, k, x, generator=ctx.generator).prev_sample
    return x


@torch.no_grad()
def ddim_sample(model: nn.Module, labels: torch.Tensor, ctx: SampleContext,
                guidance: float | None = None, eta: float | None = None,
                x: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (Eq. 12) over ``generate.steps`` evenly spaced steps ending at ``k = T - 1``,
    with ``eta`` (``generate.eta``) and guidance ``w``; from ``x`` (noise) when given."""
    settings = ctx.settings
    guidance = settings.guidance if guidance is None else guidance
    eta = settings.eta if eta is None else eta
    sched = scheduler("ddim", settings.timesteps, settings.schedule, settings.clip_sample)
    sched.set_timesteps(min(settings.steps, settings.timesteps), device=ctx.device)
    x = ctx.noise(labels.shape[0]) if x is None else x
    for k in sched.timesteps:
        t = ctx.times(x.shape[0], float(k) / settings.timesteps)
        eps = guided(model, x, t, labels, guidance, ctx)
        x = sched.step(eps, k, x, eta=eta, generator=ctx.generator).prev_sample
    return x


@torch.no_grad()
def ddim_invert(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, ctx: SampleContext,
                guidance: float | None = None) -> torch.Tensor:
    """DDIM inversion: the deterministic (eta = 0) DDIM ODE run from data ``x0`` to noise
    over the same steps, unclipped; :func:`ddim_sample` with ``generate.clip_sample`` off
    maps the result back to ``x0`` up to the discretisation error."""
    settings = ctx.settings
    guidance = settings.guidance if guidance is None else guidance
    sched = scheduler("ddim_inverse", settings.timesteps, settings.schedule, clip=False)
    sched.set_timesteps(min(settings.steps, settings.timesteps), device=ctx.device)
    x = x0
    for k in sched.timesteps:
        t = ctx.times(x.shape[0], float(k) / settings.timesteps)
        eps = guided(model, x, t, labels, guidance, ctx)
        x = sched.step(eps, k, x).prev_sample
    return x
