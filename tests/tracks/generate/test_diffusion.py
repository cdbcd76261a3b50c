"""DDPM / DDIM / classifier-free guidance, tiny: the forward process has the schedule's mean
and variance; DDIM with eta = 0 is deterministic and its inversion returns the noise that
generated a sample; CFG with w = 1 is conditional sampling and with w = 0 unconditional;
skip scales of 1 leave the UNet untouched."""

from __future__ import annotations

import pytest
import torch

from hundred.config import build_config
from hundred.tracks.generate.denoisers import build_denoiser
from hundred.tracks.generate.diffusion import Schedule, ddim_invert, ddim_sample, guided
from hundred.tracks.generate.method import SampleContext


def context(steps: int = 10, **settings) -> SampleContext:
    config = build_config(overrides=["track=generate", "method=ddim",
                                     f"generate.steps={steps}",
                                     *(f"generate.{k}={v}" for k, v in settings.items())])
    return SampleContext(config.generate, (3, 8, 8), 4, torch.device("cpu"),
                         torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_denoiser("unet", 3, 8, 4, {"block_out_channels": [8, 16],
                                            "attention": [False, False]}).eval()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_forward_process_has_the_schedules_mean_and_variance(kind):
    schedule = Schedule(1000, kind)
    abar = schedule.alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]) and 0 < abar[-1] < 0.01 and abar[0] > 0.99
    x0 = torch.full((20000, 1), 0.7)
    for k in (0, 250, 999):
        steps = torch.full((x0.shape[0],), k)
        x = schedule.q_sample(x0, steps, torch.randn_like(x0))
        assert x.mean().item() == pytest.approx(abar[k].sqrt().item() * 0.7, abs=0.03)
        assert x.var().item() == pytest.approx(1 - abar[k].item(), abs=0.03)


def test_ddim_eta0_is_deterministic_and_inverts_to_its_noise(unet):
    labels = torch.tensor([0, 1, 2, 3])
    # the exact ODE: x_0 predictions unclipped (clipping is a sampling heuristic)
    first, second = context(50, clip_sample="false"), context(50, clip_sample="false")
    noise = first.noise(4)
    a = ddim_sample(unet, labels, first, guidance=1.0, eta=0.0, x=noise.clone())
    second.generator.manual_seed(123)  # eta = 0 draws no noise: the generator does not matter
    b = ddim_sample(unet, labels, second, guidance=1.0, eta=0.0, x=noise.clone())
    assert torch.equal(a, b)
    recovered = ddim_invert(unet, a, labels, context(50), guidance=1.0)
    error = (recovered - noise).abs().mean() / noise.abs().mean()
    assert error < 0.05
    # with eta = 1 the generator's noise enters: different seeds give different samples
    c, d = context(10), context(10)
    d.generator.manual_seed(1)
    start = c.noise(4)
    assert not torch.allclose(ddim_sample(unet, labels, c, 1.0, 1.0, start.clone()),
                              ddim_sample(unet, labels, d, 1.0, 1.0, start.clone()))


def test_guidance_w1_is_conditional_w0_unconditional_and_counts_nfe(unet):
    x, t = torch.randn(4, 3, 8, 8), torch.full((4,), 0.5)
    labels = torch.tensor([0, 1, 2, 3])
    ctx = context()
    with torch.no_grad():
        conditional = unet(x, t, labels)
        unconditional = unet(x, t, torch.full_like(labels, 4))
        assert torch.allclose(guided(unet, x, t, labels, 1.0, ctx), conditional, atol=1e-6)
        assert ctx.nfe == 1
        assert torch.allclose(guided(unet, x, t, labels, 0.0, ctx), unconditional, atol=1e-6)
        w = 3.0
        both = guided(unet, x, t, labels, w, ctx)
        assert ctx.nfe == 4  # the doubled batch counts 2
        assert torch.allclose(both, unconditional + w * (conditional - unconditional),
                              atol=1e-5)
    # whole sampler: w = 0 equals sampling with the null label
    a = context(5)
    noise = a.noise(4)
    null = torch.full_like(labels, 4)
    assert torch.allclose(ddim_sample(unet, labels, a, guidance=0.0, x=noise.clone()),
                          ddim_sample(unet, null, context(5), guidance=1.0, x=noise.clone()),
                          atol=1e-6)


def test_unit_skip_scales_leave_the_unet_untouched(unet):
    x, t, labels = torch.randn(2, 3, 8, 8), torch.full((2,), 0.3), torch.tensor([0, 1])
    with torch.no_grad():
        plain = unet(x, t, labels)
        unet.skip_scales = [1.0] * len(unet.skip_scales)
        assert torch.equal(unet(x, t, labels), plain)
        unet.skip_scales = [0.5] + [1.0] * (len(unet.skip_scales) - 1)
        changed = unet(x, t, labels)
        unet.skip_scales = [1.0] * len(unet.skip_scales)
    assert not torch.allclose(changed, plain)


def test_dit_denoiser_takes_the_null_label_and_does_not_drop_labels_itself():
    torch.manual_seed(0)
    dit = build_denoiser("dit", 3, 8, 4, {"num_layers": 1, "attention_head_dim": 8,
                                          "num_attention_heads": 2}).train()
    x, t, labels = torch.randn(3, 3, 8, 8), torch.full((3,), 0.2), torch.tensor([0, 3, 4])
    out = dit(x, t, labels)
    assert out.shape == x.shape
    torch.manual_seed(5)
    assert torch.equal(dit(x, t, labels), out)  # no random label dropout in train mode


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_with_the_exact_noise_predictor_the_samplers_draw_the_data_distribution(sampler):
    """Data N(mu, s^2): the optimal eps(x_k) = sqrt(1 - abar) (x - sqrt(abar) mu) /
    (abar s^2 + 1 - abar); DDIM and DDPM with it sample N(mu, s^2) up to discretisation."""
    from hundred.tracks.generate.diffusion import ddpm_sample

    mu, s = 0.3, 0.5
    schedule = Schedule(1000, "linear")

    class Oracle(torch.nn.Module):
        def forward(self, x, t, labels):
            abar = schedule.alphas_cumprod[(t * 1000).round().long()].view(-1, 1, 1, 1)
            return (1 - abar).sqrt() * (x - abar.sqrt() * mu) / (abar * s * s + 1 - abar)

    ctx = context(100, clip_sample="false")
    draw = ddim_sample if sampler == "ddim" else ddpm_sample
    x = draw(Oracle(), torch.zeros(256, dtype=torch.long), ctx, guidance=1.0)
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std().item() == pytest.approx(s, rel=0.12)
