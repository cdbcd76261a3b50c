"""PPGN (Nguyen et al., CVPR 2017): without the condition term and noise the chain settles at a
fixed point of the prior R; the condition term is the gradient of log C_c(G(h)) and climbs
it; the condition network is swappable and never trained while sampling; the trained networks
travel with the run; a missing or wrong condition run is refused before anything is written;
and the whole track runs end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hundred.cli import main
from hundred.errors import HundredError
from hundred.tracks.generate.methods.ppgn import PPGN, class_log_prob, ppgn_step
from hundred.tracks.generate.ppgn import (DenoisingPrior, Generator, PixelClassifier,
                                          PPGNNetworks, build_classifier)

CODE, CLASSES, SIZE = 6, 3, 8


class LinearGenerator(nn.Module):
    """A stand-in G whose Jacobian is known: ``x = A h`` reshaped to an image."""

    def __init__(self) -> None:
        super().__init__()
        self.map = nn.Linear(CODE, 3 * SIZE * SIZE, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.map(h).view(len(h), 3, SIZE, SIZE)


def linear_condition(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, CLASSES)).requires_grad_(False)


def contractive_prior() -> DenoisingPrior:
    """An R whose Lipschitz constant is below 1 (every weight matrix scaled to spectral norm
    0.5), so h = R(h) has one fixed point and the prior-only chain must reach it."""
    torch.manual_seed(1)
    prior = DenoisingPrior(CODE, hidden=16)
    with torch.no_grad():
        for layer in prior.net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(0.5 / torch.linalg.matrix_norm(layer.weight, ord=2))
    return prior


def stand_in_networks(generator: nn.Module | None = None) -> PPGNNetworks:
    torch.manual_seed(0)
    encoder = build_classifier({"name": "resnet20", "options": {"width": 4}, "classes": CLASSES,
                                "image_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3})
    networks = PPGNNetworks(encoder, Generator(CODE, 3, SIZE, width=8), contractive_prior(),
                            torch.rand(32, CODE) * 3)
    if generator is not None:
        networks.generator = generator
    return networks.eval()


def test_without_condition_and_noise_the_chain_reaches_a_fixed_point_of_the_prior():
    networks = stand_in_networks()
    h = torch.randn(5, CODE) * 4
    labels = torch.zeros(5, dtype=torch.long)
    gaps, moves = [], []
    for _ in range(300):
        moved = ppgn_step(h, labels, networks, linear_condition(0), eps1=0.5, eps2=0.0,
                          eps3=0.0)
        moves.append(float((moved - h).norm()))
        h = moved
        with torch.no_grad():
            gaps.append(float((networks.prior(h) - h).norm()))
    assert gaps[-1] < 1e-5 * gaps[0] and moves[-1] < 1e-5 * moves[0]
    assert gaps[-1] < 1e-4  # R(h) = h: a fixed point of the prior
    # every chain ends at the same point: the contraction's unique fixed point
    assert torch.allclose(h, h[:1].expand_as(h), atol=1e-4)


def test_the_condition_term_is_the_gradient_of_the_class_log_probability():
    generator = LinearGenerator()
    networks = stand_in_networks(generator)
    condition = linear_condition(0)
    h = torch.randn(4, CODE)
    labels = torch.tensor([0, 1, 2, 1])
    stepped = ppgn_step(h, labels, networks, condition, eps1=0.0, eps2=1.0, eps3=0.0)
    # d log softmax_c(W A h) / dh = A^T W^T (onehot_c - p)
    weight, matrix = condition[1].weight, generator.map.weight
    probs = torch.softmax(condition(generator(h)), dim=1)
    expected = (nn.functional.one_hot(labels, CLASSES) - probs) @ weight @ matrix
    assert torch.allclose(stepped - h, expected, atol=1e-5)


def test_condition_steps_raise_the_class_log_probability_and_leave_c_untouched():
    networks = stand_in_networks()
    condition = linear_condition(0)
    before = {key: value.clone() for key, value in condition.state_dict().items()}
    h = networks.bank[:6].clone()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    start = class_log_prob(h, labels, networks, condition)
    climbed = [start]
    for _ in range(20):  # the stand-in R is arbitrary: the condition term alone here
        h = ppgn_step(h, labels, networks, condition, eps1=0.0, eps2=0.5, eps3=0.0)
        climbed.append(class_log_prob(h, labels, networks, condition))
    assert all((later > earlier).all() for earlier, later in zip(climbed, climbed[1:]))
    assert all(torch.equal(value, before[key]) for key, value in condition.state_dict().items())
    assert all(p.grad is None for p in condition.parameters())
    assert all(p.grad is None for p in networks.parameters())


def sampler(condition: nn.Module, networks: PPGNNetworks, **params) -> PPGN:
    method = PPGN({"condition": "unused", **params})
    method.condition, method.networks = condition, networks
    return method


def draw(method: PPGN, seed: int = 0, steps: int = 10) -> torch.Tensor:
    from types import SimpleNamespace

    from hundred.tracks.generate.method import SampleContext

    settings = SimpleNamespace(steps=steps)
    ctx = SampleContext(settings, (3, SIZE, SIZE), CLASSES, torch.device("cpu"),
                        torch.Generator().manual_seed(seed))
    with torch.no_grad():  # the scenario samples under no_grad: the sampler enables it itself
        images = method.sample(None, torch.tensor([0, 1, 2, 0]), ctx)
    assert ctx.nfe == steps and images.shape == (4, 3, SIZE, SIZE)
    return images


def test_the_condition_network_is_swappable_and_sampling_is_seeded():
    networks = stand_in_networks()
    first = sampler(linear_condition(0), networks, eps3=0.01)
    second = sampler(linear_condition(7), networks, eps3=0.01)
    assert torch.equal(draw(first), draw(first))  # noise comes from the seeded generator
    assert not torch.allclose(draw(first), draw(second))
    noise_start = sampler(linear_condition(0), networks, start="noise")
    assert not torch.allclose(draw(first), draw(noise_start))


def test_the_trained_networks_travel_with_the_run():
    networks = stand_in_networks()
    method = sampler(linear_condition(0), networks)
    state = method.state_for_sampling()
    assert torch.equal(state["ppgn.bank"], networks.bank)
    loaded = PPGN({"condition": "unused"})
    loaded.load_for_sampling(state)
    h = torch.randn(3, CODE)
    with torch.no_grad():
        assert torch.allclose(loaded.networks.generator(h), networks.generator(h))
        assert torch.allclose(loaded.networks.prior(h), networks.prior(h))
        image = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
        assert torch.allclose(loaded.networks.encoder.features(image),
                              networks.encoder.features(image))
    with pytest.raises(HundredError, match="no PPGN networks"):
        loaded.load_for_sampling({"other": torch.zeros(1)})


def test_the_pixel_classifier_normalises_like_the_classify_run():
    model = build_classifier({"name": "resnet20", "options": {"width": 4}, "classes": CLASSES,
                              "image_size": SIZE, "mean": [0.2, 0.3, 0.4],
                              "std": [0.5, 0.6, 0.7]})
    assert isinstance(model, PixelClassifier)
    pixels = torch.rand(2, 3, SIZE, SIZE)
    mean = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    model.eval()
    assert torch.allclose(model(pixels * 2 - 1), model.classifier((pixels - mean) / std),
                          atol=1e-6)


# -- the track end to end (tiny) ----------------------------------------------------------------
TINY = "data.options={classes: 3, train_per_class: 16, val_per_class: 8, res: 8}"
CLASSIFY = ["--device", "cpu", "--set", TINY, "--set", "model.name=resnet20", "--set",
            "model.options={width: 4}", "--set", "data.batch_size=16", "--set",
            "train.epochs=2", "--set", "quiet=true"]
GENERATE = ["--device", "cpu", "--set", TINY, "--set", "data.batch_size=16", "--set",
            "train.epochs=2", "--set", "quiet=true", "--set", "generate.samples_per_class=4",
            "--set", "generate.steps=3", "--set", "generate.grid_per_class=2"]


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("classify")
    runs = []
    for seed in (0, 1):
        assert main(["run", "classify", "erm", *CLASSIFY, "--set", f"root={root}",
                     "--set", f"name=c{seed}", "--set", f"seed={seed}"]) == 0
        runs.append(root / "classify" / "erm" / f"c{seed}")
    return runs[0], runs[1]


@pytest.fixture(scope="module")
def trained(classifiers, tmp_path_factory) -> tuple[Path, list[str]]:
    """A PPGN run trained with the first classifier as its condition (and evaluator)."""
    first, _ = classifiers
    root = tmp_path_factory.mktemp("ppgn")
    common = [*GENERATE, "--set", f"root={root}", "--set", f"generate.evaluator={first}"]
    assert main(["run", "generate", "ppgn", *common, "--set", "name=trained",
                 "--set", f"method_params.condition={first}"]) == 0
    return root / "generate" / "ppgn" / "trained", common


def test_ppgn_runs_end_to_end_and_swaps_its_condition_without_training(classifiers, trained):
    first, second = classifiers
    run_dir, common = trained
    root = run_dir.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nfe"] == 3 and summary["samples"] == 12 and summary["fd"] >= 0
    assert summary["ppgn_pixel_loss"] > 0 and (run_dir / "samples.png").is_file()
    assert main(["run", "generate", "ppgn", *common, "--set", "name=swapped",
                 "--set", f"method_params.condition={second}",
                 "--set", f"generate.init={run_dir}"]) == 0
    swapped = json.loads((root / "swapped/summary.json").read_text())
    assert swapped["train_seconds"] == 0 and swapped["init"] == str(run_dir)
    assert swapped["sample_top1"] != summary["sample_top1"] or swapped["fd"] != summary["fd"]
    # the saved networks sample exactly what the training run sampled (same seed, same C)
    assert main(["run", "generate", "ppgn", *common, "--set", "name=again",
                 "--set", f"method_params.condition={first}",
                 "--set", f"generate.init={run_dir}"]) == 0
    again = json.loads((root / "again/summary.json").read_text())
    assert again["fd"] == pytest.approx(summary["fd"], rel=1e-5)
    assert again["sample_top1"] == summary["sample_top1"]


def test_on_trained_networks_the_default_chain_climbs_the_class_log_probability(
        classifiers, trained):
    from safetensors.torch import load_file

    from hundred.tracks.generate.ppgn import load_condition

    first, _ = classifiers
    networks = PPGNNetworks.from_state(load_file(trained[0] / "sampling.safetensors"))
    condition = load_condition(str(first), 3, "synth100", SIZE, [0.5] * 3, [0.5] * 3)
    defaults = PPGN.Params()
    h = networks.bank[:12].clone()
    labels = torch.arange(3).repeat(4)
    start = class_log_prob(h, labels, networks, condition)
    for _ in range(10):
        h = ppgn_step(h, labels, networks, condition, defaults.eps1, defaults.eps2,
                      defaults.eps3, clip=True)
    assert class_log_prob(h, labels, networks, condition).mean() > start.mean()


@pytest.mark.parametrize("condition", [None, "missing", "unfinished", "other classes"])
def test_a_missing_or_wrong_condition_writes_nothing(condition, classifiers, tmp_path, capsys):
    first, _ = classifiers
    args = ["run", "generate", "ppgn", *GENERATE, "--set", f"root={tmp_path / 'runs'}",
            "--set", f"generate.evaluator={first}"]
    if condition == "missing":
        args += ["--set", f"method_params.condition={tmp_path / 'nowhere'}"]
    elif condition == "unfinished":
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "config.yaml").write_text((first / "config.yaml").read_text())
        args += ["--set", f"method_params.condition={tmp_path / 'half'}"]
    elif condition == "other classes":  # the condition run knows 3 classes, the data has 4
        args += ["--set", TINY.replace("classes: 3", "classes: 4"),
                 "--set", f"method_params.condition={first}"]
    assert main(args) != 0
    error = capsys.readouterr().err
    assert "condition" in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()
