"""Flow matching and FlowTurbo, tiny: the straight path's target velocity, the order of Euler,
Heun and the pseudo corrector on a linear ODE, FlowTurbo's blocks (H only = Heun; NFE per
block), its refiner trained on the late steps only and exactly against the base velocity's
change (zero for a base whose trajectories are straight), and the track end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from hundred.cli import main
from hundred.config import build_config
from hundred.errors import HundredError
from hundred.tracks.generate import flow
from hundred.tracks.generate.method import SampleContext, TrainContext
from hundred.tracks.generate.methods import flowturbo as ft
from hundred.tracks.generate.methods.flow_euler import FlowEuler
from hundred.tracks.generate.methods.flow_heun import FlowHeun
from hundred.tracks.generate.methods.flowturbo import FlowTurbo

CLASSES, SHAPE = 3, (2, 4, 4)


class TinyVelocity(nn.Module):
    """A class-conditional stand-in for the denoiser: ``model(x, t, labels)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(SHAPE[0], SHAPE[0], 3, padding=1)
        self.embed = nn.Embedding(CLASSES + 1, SHAPE[0])
        self.num_classes = self.null_label = CLASSES

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * (1 + t.view(-1, 1, 1, 1)) + self.embed(labels)[:, :, None, None]


class PointMass(nn.Module):
    """The exact flow-matching velocity of a one-point data set ``x1*``: ``(x1* - x) / (1 - t)``.
    Its trajectories are straight lines, so the velocity never changes along them."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target)
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so its size can be counted
        self.num_classes = self.null_label = CLASSES

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.target - x) / (1 - t.view(-1, 1, 1, 1))


def config_for(method: str, **generate) -> object:
    overrides = ["track=generate", f"method={method}"]
    overrides += [f"generate.{key}={value}" for key, value in generate.items()]
    return build_config(overrides=overrides)


def sample_ctx(config) -> SampleContext:
    return SampleContext(config.generate, SHAPE, CLASSES, torch.device("cpu"),
                         torch.Generator().manual_seed(0))


# -- flow matching ------------------------------------------------------------------------------
def test_the_straight_path_runs_from_noise_to_data_with_velocity_x1_minus_x0():
    x0, x1 = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    t = torch.tensor([0.3, 0.7])
    assert torch.equal(flow.interpolate(x0, x1, torch.zeros(2)), x0)
    assert torch.equal(flow.interpolate(x0, x1, torch.ones(2)), x1)
    h = 1e-3
    slope = (flow.interpolate(x0, x1, t + h) - flow.interpolate(x0, x1, t - h)) / (2 * h)
    assert torch.allclose(slope, flow.target_velocity(x0, x1), atol=1e-3)


def test_the_flow_loss_regresses_x1_minus_x0_at_the_interpolated_point():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x, t, labels):
            seen.update(x=x, t=t, labels=labels)
            return torch.zeros_like(x)

    x1, labels = torch.randn(5, *SHAPE), torch.arange(5) % CLASSES
    loss = flow.flow_loss(Spy(), x1, labels, generator=torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)  # the same draws: t, then x0
    t = torch.rand(5, generator=replay)
    x0 = torch.randn(x1.shape, generator=replay)
    assert torch.allclose(seen["t"], t) and torch.equal(seen["labels"], labels)
    assert torch.allclose(seen["x"], t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0)
    assert loss.item() == pytest.approx(torch.mean((x1 - x0) ** 2).item(), rel=1e-5)
    dropped = flow.flow_loss(Spy(), x1, labels, label_dropout=1.0, null_label=CLASSES)
    assert dropped.item() > 0 and torch.all(seen["labels"] == CLASSES)
    logit = flow.sample_times(1000, "cpu", torch.Generator().manual_seed(0), "logit_normal")
    assert 0 < logit.min() and logit.max() < 1 and abs(logit.mean().item() - 0.5) < 0.03


def linear_ode_errors(solve, steps=(8, 16, 32)) -> list[float]:
    """|x_N - e^lambda| of dx/dt = lambda x, x(0) = 1, integrated over [0, 1]."""
    lam = -1.5
    exact = math.exp(lam)
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    return [abs(solve(lambda x, t: lam * x, x0, n).item() - exact) for n in steps]


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2), ("pseudo", 2)])
def test_heun_and_the_pseudo_corrector_are_second_order_euler_first(solver, order):
    def solve(velocity, x0, n):
        if solver == "pseudo":  # FlowTurbo's pseudo corrector only: H = 0, P = n, R = 0
            return ft.flowturbo_sample(velocity, None, x0, 0, n, 0)
        return flow.integrate(velocity, x0, flow.uniform_times(n).double(), solver)

    errors = linear_ode_errors(solve)
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(r == pytest.approx(2 ** order, rel=0.15) for r in ratios), ratios


def test_flowturbo_without_pseudo_or_refiner_steps_is_plain_heun():
    model, labels = TinyVelocity(), torch.tensor([0, 1, 2])
    velocity = flow.guided_velocity(model, labels, 1.5, CLASSES)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        heun = flow.integrate(velocity, x, flow.uniform_times(5), "heun")
        turbo = ft.flowturbo_sample(velocity, None, x, 5, 0, 0)
    assert torch.equal(turbo, heun)


def test_guidance_one_is_conditional_and_zero_unconditional():
    model, labels = TinyVelocity(), torch.tensor([0, 2])
    x, t = torch.randn(2, *SHAPE), torch.full((2,), 0.4)
    with torch.no_grad():
        conditional = model(x, t, labels)
        unconditional = model(x, t, torch.full_like(labels, CLASSES))
        for w, expected in ((1.0, conditional), (0.0, unconditional),
                            (2.0, 2 * conditional - unconditional)):
            got = flow.guided_velocity(model, labels, w, CLASSES)(x, t)
            assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_nfe_per_sample_of_euler_heun_and_flowturbo(guidance):
    model, labels = TinyVelocity(), torch.tensor([0, 1, 2, 0])
    factor = 1 if guidance == 1.0 else 2
    for cls, expected in ((FlowEuler, 6), (FlowHeun, 12)):
        config = config_for(cls.name, steps=6, guidance=guidance)
        ctx = sample_ctx(config)
        with torch.no_grad():
            out = cls(config=config).sample(model, labels, ctx)
        assert out.shape == (4, *SHAPE) and ctx.nfe == expected * factor
    for plan, expected in (((2, 4, 3), 8), ((0, 6, 0), 7), ((0, 0, 3), 1), ((3, 0, 0), 6)):
        config = config_for("flowturbo", steps=sum(plan), guidance=guidance)
        method = FlowTurbo(dict(zip(("heun_steps", "pseudo_steps", "refiner_steps"), plan)),
                           config)
        method.refiner = ft.VelocityRefiner(SHAPE[0], 8)
        ctx = sample_ctx(config)
        with torch.no_grad():
            out = method.sample(model, labels, ctx)
        assert torch.isfinite(out).all()
        assert ctx.nfe == expected * factor == ft.flowturbo_nfe(*plan, guided=factor == 2)


def test_the_default_split_follows_the_official_2_4_3_and_bad_counts_are_errors():
    assert ft.split_steps(9) == (2, 4, 3)
    assert sum(ft.split_steps(20)) == 20 and ft.split_steps(1) == (1, 0, 0)
    assert ft.split_steps(9, heun=9, refine=0) == (9, 0, 0)
    method = FlowTurbo({"heun_steps": 2, "pseudo_steps": 2, "refiner_steps": 2},
                       config_for("flowturbo", steps=9))
    with pytest.raises(HundredError, match="generate.steps"):
        method.prepare(CLASSES, "synth", 8)
    with pytest.raises(HundredError, match="refiner_steps"):
        FlowTurbo({"refiner_steps": -1}, config_for("flowturbo"))


# -- the velocity refiner -----------------------------------------------------------------------
def test_the_refiner_is_trained_at_its_late_steps_only():
    model, x1 = TinyVelocity(), torch.randn(64, *SHAPE)
    velocity = flow.guided_velocity(model, torch.zeros(64, dtype=torch.long), 1.0, CLASSES)
    refiner = ft.VelocityRefiner(SHAPE[0], 8)
    loss, times = ft.refiner_loss(refiner, velocity, x1, 2 / 3, 0.12,
                                  torch.Generator().manual_seed(0))
    assert loss.item() > 0 and times.min() >= 2 / 3 and times.max() <= 1


def test_with_an_exact_base_velocity_the_best_refiner_output_is_zero(monkeypatch):
    """Straight trajectories: v_T(x_t + dt v_T, t + dt) = v_T(x_t, t), so the refiner's target
    residual is zero, and training pulls a perturbed refiner's output towards zero."""
    target = torch.randn(1, *SHAPE, dtype=torch.float64)
    velocity = flow.guided_velocity(PointMass(target), torch.zeros(16, dtype=torch.long), 1.0,
                                    CLASSES)
    zero = ft.VelocityRefiner(SHAPE[0], 8).double()
    loss, _ = ft.refiner_loss(zero, velocity, target.expand(16, *SHAPE), 0.5, 0.12,
                              torch.Generator().manual_seed(1))
    assert loss.item() < 1e-12  # the residual the refiner regresses vanishes

    seen_times: list[torch.Tensor] = []
    forward, init = ft.VelocityRefiner.forward, ft.VelocityRefiner.__init__

    def recording_forward(self, x, t, v):
        seen_times.append(t.detach().clone())
        return forward(self, x, t, v)

    def perturbed_init(self, *args, **kwargs):  # a refiner whose output starts far from zero
        init(self, *args, **kwargs)
        nn.init.normal_(self.out.weight, std=0.3)
        nn.init.normal_(self.out.bias, std=0.3)

    monkeypatch.setattr(ft.VelocityRefiner, "forward", recording_forward)
    monkeypatch.setattr(ft.VelocityRefiner, "__init__", perturbed_init)
    base = PointMass(target.float())
    data = (target.float().expand(16, *SHAPE) + 1) / 2  # to_model_space below maps it back
    config = config_for("flowturbo", steps=6)  # H, P, R = 1, 3, 2: the refiner from t = 4/6
    ctx = TrainContext(config, torch.device("cpu"),
                       lambda: [(data, torch.zeros(16, dtype=torch.long))],
                       None, None, lambda images: images * 2 - 1, SHAPE, CLASSES)
    method = FlowTurbo({"refiner_width": 8, "refiner_train_steps": 150, "refiner_lr": 3e-3},
                       config)
    torch.manual_seed(config.seed)
    untrained = ft.VelocityRefiner(SHAPE[0], 8)  # the same start after_training draws
    entries = method.after_training(base, ctx)
    assert method.plan() == (1, 3, 2) and entries["refiner_t_range"] == [4 / 6, 1.0]
    assert torch.cat(seen_times).min() >= 4 / 6 - 1e-6  # trained on the late steps only
    assert entries["refiner_train_steps"] == 150 and entries["refiner_params_ratio"] > 0
    x, t = torch.randn(16, *SHAPE), torch.full((16,), 0.8)
    with torch.no_grad():
        v = base(x, t, t.long())
        before, after = untrained(x, t, v).abs().mean(), method.refiner(x, t, v).abs().mean()
    assert after < 0.2 * before


def test_the_refiner_is_saved_for_sampling_and_reused(tmp_path):
    model, labels = TinyVelocity(), torch.tensor([0, 1, 2])
    data = torch.rand(12, 3, 4, 4)[:, :SHAPE[0]]
    loader = [(data, torch.arange(12) % CLASSES)]
    config = config_for("flowturbo", steps=5)
    method = FlowTurbo({"refiner_width": 8, "refiner_train_steps": 3}, config)
    ctx = TrainContext(config, torch.device("cpu"), lambda: loader, None, None,
                       lambda images: images * 2 - 1, SHAPE, CLASSES)
    trained = method.after_training(model, ctx)
    assert trained["refiner_reused"] is False and trained["refiner_train_steps"] == 3
    again = FlowTurbo({"refiner_width": 8, "refiner_train_steps": 3}, config)
    again.load_for_sampling(method.state_for_sampling())
    assert again.after_training(model, ctx)["refiner_reused"] is True
    with torch.no_grad():
        first = method.sample(model, labels, sample_ctx(config))
        second = again.sample(model, labels, sample_ctx(config))
    assert torch.equal(first, second)
    other = FlowTurbo({"refiner_width": 8, "refiner_train_steps": 3},
                      config_for("flowturbo", steps=5, guidance=2.0))
    other.load_for_sampling(method.state_for_sampling())  # trained for another guidance
    assert other.after_training(model, ctx)["refiner_reused"] is False
    empty = FlowTurbo({}, config)
    empty.load_for_sampling({})
    with pytest.raises(HundredError, match="refiner"):
        empty.sample(model, labels, sample_ctx(config))


# -- the track end to end (tiny) ----------------------------------------------------------------
TINY = ["--device", "cpu", "--quick", "--set",
        "data.options={classes: 3, train_per_class: 16, val_per_class: 8, res: 8}",
        "--set", "data.batch_size=16", "--set", "train.epochs=1", "--set", "quiet=true",
        "--set", "generate.denoiser_options={block_out_channels: [8, 16], "
        "attention: [false, false]}", "--set", "generate.samples_per_class=2",
        "--set", "generate.steps=3", "--set", "generate.grid_per_class=2",
        "--set", "generate.evaluator_epochs=1"]


@pytest.mark.slow  # two tiny runs and the cached evaluator's training (~20 s of CPU)
def test_flowturbo_runs_end_to_end_on_a_flow_euler_run(tmp_path):
    common = [*TINY, "--set", f"root={tmp_path}"]
    assert main(["run", "generate", "flow_euler", *common, "--set", "name=euler"]) == 0
    euler = tmp_path / "generate" / "flow_euler" / "euler"
    assert json.loads((euler / "summary.json").read_text())["nfe"] == 3
    # a flow_euler run has no refiner: reusing its network, flowturbo trains one
    assert main(["run", "generate", "flowturbo", *common, "--set", "name=turbo",
                 "--set", f"generate.init={euler}",
                 "--set", "method_params.refiner_train_steps=4"]) == 0
    run = tmp_path / "generate" / "flowturbo" / "turbo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["flowturbo_steps"] == {"heun": 1, "pseudo": 1, "refiner": 1}
    assert summary["nfe"] == 3 == summary["flowturbo_nfe"] and summary["fd"] >= 0
    assert summary["refiner_reused"] is False
    assert summary["refiner_params_ratio"] == pytest.approx(
        summary["refiner_params"] / summary["params"])
    assert (run / "sampling.safetensors").is_file() and (run / "samples.png").is_file()


def test_an_impossible_flowturbo_split_writes_nothing(tmp_path, capsys):
    assert main(["run", "generate", "flowturbo", *TINY, "--set", f"root={tmp_path / 'r'}",
                 "--set", "method_params.heun_steps=3", "--set",
                 "method_params.refiner_steps=3"]) != 0
    assert "generate.steps" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
