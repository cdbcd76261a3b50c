"""Skip-Tuning and SFD, tiny and on CPU.

Skip-Tuning: all rho = 1 is the untouched UNet (same samples, bit for bit), rho != 1 changes
them, the denoiser's own scales come back after sampling (also after an error), and the scales
run linearly from the innermost to the outermost skip.

SFD: the two parts' times (the semantics reach data, t = 1, before the texture leaves noise
behind... and before the texture reaches data), Δ = 0 is synchronous denoising (the loss is
flow matching's on the composite, the sampler plain Euler), the sampler leaves the texture
at its noise in stage I and the semantics at data in stage III, Δ is checked, the semantic
latent is the PCA of a frozen encoder's feature map, and a missing encoder is a clear error.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hundred.config import build_config
from hundred.errors import HundredError
from hundred.tracks.generate.denoisers import build_denoiser
from hundred.tracks.generate.flow import euler_step, flow_loss, uniform_times
from hundred.tracks.generate.method import SampleContext
from hundred.tracks.generate.methods.skip_tuning import (SkipTuning, scaled_skips,
                                                         skip_scales)
from hundred.tracks.generate.sfd import (SemanticLatent, check_offset, dual_velocity,
                                         part_times, sfd_euler, sfd_loss, with_time_map)

UNET = {"block_out_channels": (8, 16), "attention": (False, False), "norm_num_groups": 4}


def tiny_unet(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return build_denoiser("unet", channels, 8, 4, UNET).eval()


def generate_config(*overrides: str):
    return build_config(overrides=["track=generate", "method=skip_tuning", "generate.steps=3",
                                   *overrides])


def sample_ctx(config, shape=(3, 8, 8), seed: int = 0) -> SampleContext:
    return SampleContext(config.generate, shape, 4, torch.device("cpu"),
                         torch.Generator().manual_seed(seed))


# -- Skip-Tuning ----------------------------------------------------------------------------------
def test_skip_scales_run_linearly_from_the_innermost_to_the_outermost_skip():
    assert skip_scales(5, 0.6, 1.0) == pytest.approx([0.6, 0.7, 0.8, 0.9, 1.0])
    assert skip_scales(1, 0.7, 1.0) == [0.7]
    with pytest.raises(HundredError):
        skip_scales(0, 0.7, 1.0)


def test_rho_one_is_the_untouched_unet_and_other_rho_change_the_samples():
    config = generate_config()
    unet = tiny_unet()
    labels = torch.tensor([0, 1, 2, 3])
    from hundred.tracks.generate.diffusion import ddim_sample

    plain = ddim_sample(unet, labels, sample_ctx(config), guidance=1.0)
    untouched = SkipTuning({"rho_inner": 1.0, "rho_outer": 1.0}, config).sample(
        unet, labels, sample_ctx(config))
    assert torch.equal(plain, untouched)
    tuned = SkipTuning({"rho_inner": 0.5}, config).sample(unet, labels, sample_ctx(config))
    assert not torch.allclose(plain, tuned, atol=1e-4)
    assert unet.skip_scales == [1.0] * len(unet.skip_scales)  # restored after sampling


def test_the_scales_act_inside_the_block_and_are_restored_after_an_error():
    unet = tiny_unet()
    x, t, y = torch.randn(2, 3, 8, 8), torch.full((2,), 0.5), torch.tensor([0, 1])
    with torch.no_grad():
        plain = unet(x, t, y)
        with pytest.raises(RuntimeError), scaled_skips(unet, 0.0, 0.0) as scales:
            assert scales == [0.0] * len(unet.skip_scales) and unet.skip_scales == scales
            zeroed = unet(x, t, y)
            raise RuntimeError("boom")
    assert unet.skip_scales == [1.0] * len(unet.skip_scales)
    assert not torch.allclose(plain, zeroed)


def test_skip_tuning_needs_a_unet():
    with pytest.raises(HundredError, match="UNet"):
        SkipTuning({}, generate_config("generate.denoiser=dit"))
    with pytest.raises(HundredError, match="rho_inner"):
        SkipTuning({"rho_inner": 0}, generate_config())


# -- SFD: times -----------------------------------------------------------------------------------
def test_the_semantic_latent_reaches_data_before_the_texture():
    delta = 0.3
    t = torch.linspace(0, 1, 101)
    t_sem, t_tex = part_times(t, delta)
    assert torch.all(t_sem >= t_tex) and t_sem[0] == 0 and t_tex[-1] == 1
    first_sem_done = int(torch.nonzero(t_sem == 1)[0])
    first_tex_done = int(torch.nonzero(t_tex == 1)[0])
    assert first_sem_done < first_tex_done == 100
    # the texture stays at t = 0 (noise) while t (1 + Δ) <= Δ, then lags by exactly Δ
    assert torch.all(t_tex[t * (1 + delta) <= delta] == 0)
    moving = (t_tex > 0) & (t_sem < 1)
    assert torch.allclose(t_sem[moving] - t_tex[moving], torch.tensor(delta))
    same = part_times(t, 0.0)
    assert same[0] is t and same[1] is t


def test_the_offset_is_checked():
    assert check_offset(0.0) == 0.0 and check_offset(0.3) == 0.3
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(HundredError, match="offset"):
            check_offset(bad)


# -- SFD: Δ = 0 is synchronous --------------------------------------------------------------------
def test_with_offset_zero_the_loss_is_flow_matching_on_the_composite():
    unet = tiny_unet(channels=3 + 2 + 1).train()
    x1, labels = torch.randn(4, 5, 8, 8), torch.tensor([0, 1, 2, 4])

    def synchronous(x, t, y):  # the same network, both parts at the same time t
        return dual_velocity(unet, x, t, t, y)

    ours = sfd_loss(unet, x1, labels, 2, 0.0, generator=torch.Generator().manual_seed(3))
    theirs = flow_loss(synchronous, x1, labels, 0.0, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, theirs)
    asynchronous = sfd_loss(unet, x1, labels, 2, 0.3, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(ours, asynchronous)


def test_with_offset_zero_the_sampler_is_plain_euler_on_the_composite():
    unet = tiny_unet(channels=3 + 2 + 1)
    labels = torch.tensor([0, 1, 2, 3])
    x0 = torch.randn(4, 5, 8, 8, generator=torch.Generator().manual_seed(1))

    def velocity(x, t_tex, t_sem):
        return dual_velocity(unet, x, t_tex, t_sem, labels)

    ours = sfd_euler(velocity, x0, 2, 0.0, steps=4)
    grid = [float(t) for t in uniform_times(4)]
    x = x0
    with torch.no_grad():
        for t, t_next in zip(grid[:-1], grid[1:]):
            x = euler_step(lambda x_, t_: velocity(x_, t_, t_), x, t, t_next)
    assert torch.equal(ours, x)


def test_the_sampler_moves_only_the_semantics_first_and_only_the_texture_last():
    texture, semantic, delta, steps = 3, 2, 0.5, 6
    seen: list[tuple[torch.Tensor, float, float]] = []

    def velocity(x, t_tex, t_sem):  # a constant velocity field
        return torch.ones_like(x)

    x0 = torch.zeros(2, texture + semantic, 4, 4)
    end = sfd_euler(velocity, x0, semantic, delta, steps,
                    on_step=lambda x, tex, sem: seen.append((x.clone(), tex, sem)))
    # each part travels exactly its unit of time: x1 = x0 + 1 * v
    assert torch.allclose(end, torch.ones_like(end))
    for x, tex, sem in seen:
        if tex == 0:  # stage I: the texture is still its noise
            assert torch.all(x[:, :texture] == 0)
        if sem == 1:  # stage III: the semantics are data already
            assert torch.allclose(x[:, texture:], torch.ones_like(x[:, texture:]))
    assert seen[1][1] == 0 < seen[1][2]  # t = 1/6: semantics moving, texture resting
    assert seen[-1][2] == 1 > seen[-1][1]  # t = 5/6: semantics done, texture moving


def test_the_texture_loss_can_be_masked_while_the_texture_rests():
    class Probe(nn.Module):  # predicts zero: the loss is the target's energy
        def forward(self, x, t, y):
            return torch.zeros_like(x)

    x1 = torch.zeros(64, 4, 2, 2)
    kept = sfd_loss(Probe(), x1, torch.zeros(64, dtype=torch.long), 1, 0.9,
                    generator=torch.Generator().manual_seed(0))
    masked = sfd_loss(Probe(), x1, torch.zeros(64, dtype=torch.long), 1, 0.9,
                      mask_resting_texture=True, generator=torch.Generator().manual_seed(0))
    assert masked < kept  # about half the samples rest their texture at Δ = 0.9


def test_the_time_map_channel_holds_the_semantic_time():
    x = torch.randn(2, 3, 4, 4)
    mapped = with_time_map(x, torch.tensor([0.25, 0.75]))
    assert mapped.shape == (2, 4, 4, 4) and torch.equal(mapped[:, :3], x)
    assert torch.all(mapped[0, 3] == 0.25) and torch.all(mapped[1, 3] == 0.75)


# -- SFD: the semantic latent ---------------------------------------------------------------------
def test_the_semantic_latent_is_a_whitened_pca_of_the_frozen_encoder_features():
    from hundred.models import create

    torch.manual_seed(0)
    encoder = create("resnet20", 4, img_size=8, width=4)
    latent = SemanticLatent(encoder, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 8)
    images = torch.rand(32, 3, 8, 8) * 2 - 1
    latent.fit([images[:16], images[16:]])
    codes = latent(images, (8, 8))
    assert codes.shape == (32, 3, 8, 8)
    small = latent(images, (2, 2))  # resnet20's last stage is 2x2 at 8 px: no resizing
    assert small.shape == (32, 3, 2, 2)
    per_channel = small.permute(1, 0, 2, 3).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-3)
    assert not any(p.requires_grad for p in latent.encoder.parameters())
    refit = SemanticLatent(encoder, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 8)
    refit.fit([images[:16], images[16:]])
    assert torch.allclose(refit(images, (2, 2)), small, atol=1e-5)  # deterministic signs


def test_sfd_without_an_encoder_is_a_clear_error():
    from hundred.tracks.generate.methods.sfd import SFD

    config = build_config(overrides=["track=generate", "method=sfd"])
    with pytest.raises(HundredError, match="method_params.encoder"):
        SFD({}, config)
    with pytest.raises(HundredError, match="does not exist"):
        SFD({"encoder": "/nonexistent/run"}, config)
    with pytest.raises(HundredError, match="offset"):
        SFD({"offset": 1.0}, config)


# -- end to end through the CLI (tiny: 8 px, 4 classes, one epoch) -------------------------------
TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "data.batch_size=16", "quiet=true", "generate.samples_per_class=2",
            "generate.steps=3", "generate.evaluator_epochs=1",
            "generate.denoiser_options={block_out_channels: [8, 16], attention: [false, false], "
            "norm_num_groups: 4}"]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]


def summary_of(run_dir) -> dict:
    import json

    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An encoder (classify erm, resnet20 width 4, one epoch) and a DDPM-trained UNet."""
    from hundred.cli import main

    root = tmp_path_factory.mktemp("generate")
    assert main(["run", "classify", "erm", "--device", "cpu", "--set", TINY,
                 "--set", "data.batch_size=16", "--set", "model.name=resnet20",
                 "--set", "model.options={width: 4}", "--set", "train.epochs=1",
                 "--set", "quiet=true", "--set", f"root={root}", "--set", "name=encoder"]) == 0
    assert main(["run", "generate", "ddpm", *at(root), "--set", "train.epochs=1",
                 "--set", "name=ddpm"]) == 0
    return root


def at(root) -> list[str]:
    """The common settings under ``root``; the encoder run measures the samples too (no
    evaluator is trained)."""
    return [*COMMON, "--set", f"root={root}",
            "--set", f"generate.evaluator={root / 'classify' / 'erm' / 'encoder'}"]


def test_skip_tuning_samples_a_trained_unet_and_rho_one_reproduces_ddim(root):
    from hundred.cli import main

    ddpm = root / "generate" / "ddpm" / "ddpm"
    runs = {}
    for name, method, extra in (("ddim", "ddim", []),
                                ("rho1", "skip_tuning", ["--set", "method_params.rho_inner=1"]),
                                ("rho05", "skip_tuning",
                                 ["--set", "method_params.rho_inner=0.5"])):
        assert main(["run", "generate", method, *at(root),
                     "--set", f"generate.init={ddpm}", "--set", f"name={name}", *extra]) == 0
        runs[name] = summary_of(root / "generate" / method / name)
    assert runs["rho1"]["fd"] == runs["ddim"]["fd"]  # the same samples
    assert runs["rho05"]["fd"] != runs["ddim"]["fd"]
    assert runs["rho05"]["nfe"] == runs["ddim"]["nfe"] == 3  # training-free, no extra NFE


def test_sfd_trains_samples_and_is_reused_only_with_its_offset(root, tmp_path):
    from hundred.cli import main

    encoder = root / "classify" / "erm" / "encoder"
    args = ["run", "generate", "sfd", *at(root)]
    assert main([*args, "--set", "train.epochs=1", "--set", "name=sfd",
                 "--set", f"method_params.encoder={encoder}"]) == 0
    trained = root / "generate" / "sfd" / "sfd"
    summary = summary_of(trained)
    assert summary["sfd_offset"] == 0.3 and summary["semantic_channels"] == 4
    assert summary["nfe"] == 3 and summary["objective"] == "sfd"
    assert 0 < summary["semantic_explained_variance"] <= 1
    assert main([*args, "--set", f"generate.init={trained}", "--set", "name=again"]) == 0
    assert summary_of(root / "generate" / "sfd" / "again")["fd"] == summary["fd"]
    # bad input writes nothing: another offset, a DDPM denoiser, no encoder
    empty = ["--set", f"root={tmp_path}", "--set", f"generate.evaluator={encoder}"]
    for bad in (["--set", f"generate.init={trained}", "--set", "method_params.offset=0.1"],
                ["--set", f"generate.init={root / 'generate' / 'ddpm' / 'ddpm'}"],
                [], ["--set", "method_params.offset=1.5",
                     "--set", f"method_params.encoder={encoder}"]):
        assert main(["run", "generate", "sfd", *COMMON, *empty, *bad]) == 2
    assert not any(tmp_path.iterdir())


def test_sfd_samples_the_texture_and_counts_two_evaluations_a_guided_step(tmp_path):
    import json

    from safetensors.torch import save_file

    from hundred.tracks.generate.methods.sfd import SFD

    run = tmp_path / "sfd-run"  # what an SFD run leaves for generate.init
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"fd": 1.0}))
    save_file({"sfd_offset": torch.tensor([0.3], dtype=torch.float64)},
              run / "sampling.safetensors")
    config = build_config(overrides=["track=generate", "method=sfd", "generate.steps=4",
                                     f"generate.init={run}", "generate.guidance=2"])
    method = SFD({"semantic_channels": 2}, config)
    assert method.denoiser_shape((3, 8, 8)) == (6, 8, 8)
    unet = tiny_unet(channels=6)
    ctx = sample_ctx(config, shape=(6, 8, 8))
    samples = method.sample(unet, torch.tensor([0, 1, 2]), ctx)
    assert samples.shape == (3, 3, 8, 8) and ctx.nfe == 2 * 4
    with pytest.raises(HundredError, match="offset 0.3"):
        SFD({"offset": 0.2}, config)
