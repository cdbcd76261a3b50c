"""TESLA: its adjoint gradient is the true gradient of the unrolled MTT loss (images and lr, with
DSA replayed, with FYI, with soft labels), the paper's formula is not (for N > 1), and its
memory stays flat as the unrolled steps grow while MTT's grows."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch.func import functional_call

from hundred.config import build_config
from hundred.engine.run import image_size, load_data
from hundred.models import create
from hundred.tracks.condense import TRACK
from hundred.tracks.condense.dsa import DSA
from hundred.tracks.condense.experts import ExpertSettings, ParamLayout, train_experts
from hundred.tracks.condense.method import CondenseContext
from hundred.tracks.condense.synthetic import RealImages, SyntheticSet
from hundred.tracks.condense.trajectory import (adjoint_gradients, matching_ratio, plan_steps,
                                                unrolled_student)

DATA = "data.options={classes: 4, train_per_class: 6, val_per_class: 2, res: 8}"
WIDTH = "model.options={width: 8}"
BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "tesla_memory.py"


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def base_overrides(method: str, buffer: Path, *extra: str) -> list[str]:
    return ["track=condense", f"method={method}", "data.source=synth100", DATA,
            "model.name=convnet_d3", WIDTH, "condense.ipc=2",
            f"method_params.experts={buffer}", "method_params.max_start_epoch=2",
            "method_params.syn_steps=3", "method_params.batch_syn=5", *extra]


@pytest.fixture(scope="module")
def buffer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tesla") / "experts"
    config = build_config(overrides=["data.source=synth100", DATA, "model.name=convnet_d3",
                                     WIDTH])
    train_experts(config, out, 2, ExpertSettings(epochs=4, batch_size=8, dsa_strategy=None),
                  device=torch.device("cpu"), dsa=None, log=lambda line: None)
    return out


def prepared(method: str, buffer: Path, tmp_path: Path, *extra: str, dsa: bool = True):
    """A prepared method (float64 network) and its context, DSA on."""
    config = build_config(overrides=base_overrides(method, buffer, *extra))
    dataset = load_data(config)
    size = image_size(config, dataset)
    real = RealImages(dataset.arrays("train"), dataset.num_classes, size, torch.device("cpu"),
                      config.data.mean, config.data.std)
    ctx = CondenseContext(config, torch.device("cpu"), dataset, real, size, tmp_path,
                          Console(quiet=True), DSA() if dsa else None)
    instance = TRACK.method_class(method)(config.method_params, config)
    instance.prepare(ctx)
    instance.network.double()
    return instance, ctx


def float64_set(ctx: CondenseContext) -> SyntheticSet:
    torch.manual_seed(3)
    return SyntheticSet.initialise(ctx.real, 2, "real")


# -- the adjoint pass against autograd through the unrolled steps ----------------------------

def unrolled_case(steps: int, seed: int = 0):
    torch.manual_seed(seed)
    network = create("convnet_d3", 4, img_size=8, width=4).double()
    layout = ParamLayout.of(network)
    start = torch.cat([p.detach().reshape(-1) for p in network.parameters()])
    target = start + 0.05 * torch.randn_like(start)
    images = torch.randn(10, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(4).repeat(3)[:10]
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    dsa = DSA()
    plan = plan_steps(10, steps, 4, torch.device("cpu"), dsa)
    final = unrolled_student(network, layout, images, labels, lr, start, plan, dsa)
    loss = matching_ratio(final, start, target)
    grad_images, grad_lr = torch.autograd.grad(loss, (images, lr))
    return (network, layout, images, labels, lr, start, target, plan, dsa), (loss, grad_images,
                                                                             grad_lr)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_adjoint_gradient_is_the_unrolled_gradient(steps):
    args, (loss, grad_images, grad_lr) = unrolled_case(steps)
    for snapshots in ("device", "host"):
        result = adjoint_gradients(*args, snapshots=snapshots)
        assert float(result.loss) == pytest.approx(float(loss.detach()), rel=1e-12)
        assert relative(result.images, grad_images) <= 1e-6
        assert relative(result.lr, grad_lr) <= 1e-6


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_paper_formula_is_exact_for_one_step_only(steps):
    args, (_, grad_images, grad_lr) = unrolled_case(steps)
    paper = adjoint_gradients(*args, paper=True)
    if steps == 1:  # one step has no cross-step terms: the formula is the gradient
        assert relative(paper.images, grad_images) <= 1e-6
        assert relative(paper.lr, grad_lr) <= 1e-6
    else:  # it drops how later steps' gradients depend on earlier batches
        assert relative(paper.images, grad_images) > 1e-3


# -- the method: the same plan as MTT, the gradient MTT's autograd gives ----------------------

@pytest.mark.parametrize("fyi", [False, True])
def test_tesla_fills_the_gradient_mtt_backpropagates(buffer, tmp_path, fyi):
    flag = f"method_params.fyi={str(fyi).lower()}"
    mtt, ctx = prepared("mtt", buffer, tmp_path, flag)
    tesla, _ = prepared("tesla", buffer, tmp_path, flag, "method_params.soft_labels=false")
    synthetic = float64_set(ctx)
    mtt.setup_set(synthetic, ctx)
    synthetic.double()
    state = torch.get_rng_state()
    loss = mtt.matching_loss(synthetic, ctx)
    loss.backward()
    expected = synthetic.images.grad.clone(), synthetic.lr.grad.clone()
    synthetic.images.grad = synthetic.lr.grad = None
    torch.set_rng_state(state)  # the same expert, start epoch, batches and DSA draws
    logs = tesla.compute_gradients(synthetic, ctx)
    assert logs["loss"] == pytest.approx(loss.item(), rel=1e-10)
    assert relative(synthetic.images.grad, expected[0]) <= 1e-6
    assert relative(synthetic.lr.grad, expected[1]) <= 1e-6
    assert torch.equal(torch.get_rng_state(), _state_after(mtt, synthetic, ctx, state))


def _state_after(mtt, synthetic, ctx, state) -> torch.Tensor:
    """The RNG state after one MTT iteration from ``state`` (TESLA must draw the same)."""
    torch.set_rng_state(state)
    mtt.matching_loss(synthetic, ctx)
    return torch.get_rng_state()


@pytest.mark.parametrize("fyi", [False, True])
def test_soft_labels_are_the_target_experts_and_the_gradient_stays_exact(buffer, tmp_path, fyi):
    tesla, ctx = prepared("tesla", buffer, tmp_path, f"method_params.fyi={str(fyi).lower()}",
                          "method_params.label_temperature=2.0")
    synthetic = float64_set(ctx)
    tesla.setup_set(synthetic, ctx)
    synthetic.double()
    assert synthetic.soft_labels is not None and not synthetic.soft_labels.requires_grad
    groups = tesla.optimizer_groups(synthetic, 1000.0, 0.5)
    assert all(p is not synthetic.soft_labels for g in groups for p in g["params"])
    state = torch.get_rng_state()
    tesla.compute_gradients(synthetic, ctx)
    # replay the iteration with autograd through the unrolled steps
    torch.set_rng_state(state)
    _, _, start, target = tesla.draw_segment(ctx, torch.float64)
    images = tesla.matched(synthetic.images)
    with torch.no_grad():
        logits = functional_call(tesla.network, tesla.layout.unflatten(target),
                                 (images,)) / 2.0
    assert torch.allclose(synthetic.soft_labels, logits[:len(synthetic.images)])
    plan = tesla.plan(len(images), ctx)
    final = unrolled_student(tesla.network, tesla.layout, images, logits.softmax(dim=1),
                             synthetic.lr, start, plan, ctx.dsa)
    grad_images, grad_lr = torch.autograd.grad(matching_ratio(final, start, target),
                                               (synthetic.images, synthetic.lr))
    assert relative(synthetic.images.grad, grad_images) <= 1e-6
    assert relative(synthetic.lr.grad, grad_lr) <= 1e-6


def test_tesla_runs_end_to_end_and_is_evaluated_with_its_soft_labels(buffer, tmp_path):
    config = build_config(overrides=base_overrides(
        "tesla", buffer, f"root={tmp_path}", "name=tiny", "quiet=true", "condense.ipc=1",
        "condense.iterations=2", "condense.eval_runs=1", "condense.eval_epochs=2",
        "condense.eval_augment=[none]", "condense.checkpoint_every=1", "train.device=cpu"))
    summary = TRACK.run(config)
    assert summary["eval_labels"] == "soft" and summary["learned_lr"] > 0
    learned = load_file(Path(summary["run_dir"]) / "learned.safetensors")
    assert learned["soft_labels"].shape == (4, 4)


# -- memory: flat in N for TESLA, linear for MTT ------------------------------------------

@pytest.fixture(scope="module")
def tesla_memory():
    spec = importlib.util.spec_from_file_location("tesla_memory_under_test", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_tesla_memory_stays_flat_while_mtt_grows(tesla_memory):
    # each case in its own process (peak RSS); graphs of 64 images at 16 px dominate
    args = argparse.Namespace(device="cpu", res=16, width=32, images=64, classes=4,
                              iterations=1, batch=None)
    cases = [("mtt", 1), ("mtt", 9), ("tesla", 1), ("tesla", 9)]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        rows = list(pool.map(lambda case: tesla_memory.measure(case[0], case[1], "device",
                                                               args), cases))
    peak = {(row["method"], row["steps"]): row["peak_bytes"] / 2**20 for row in rows}
    mtt_growth = peak["mtt", 9] - peak["mtt", 1]
    tesla_growth = peak["tesla", 9] - peak["tesla", 1]
    assert mtt_growth > 50, peak  # 8 more steps' graphs: MTT keeps them all
    assert tesla_growth < 0.25 * mtt_growth, peak
