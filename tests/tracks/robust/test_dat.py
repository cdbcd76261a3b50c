"""DAT (dual adversarial training) at CPU scale: the energy is -logsumexp of the logits; the
generation PGD lowers the energy of its samples step by step; the BCE labels real images 1
and generated ones 0; the curriculum adds a PGD step when the real-vs-generated AUC reaches
its threshold over a full window; stage 2 freezes batch norm; `hundred run robust dat`
writes a sample grid that `hundred report` shows, records clean and robust accuracy, and a
killed run resumes to the same weights, curriculum and samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.models import create
from hundred.registry import get_method
from hundred.tracks.robust import TRACK
from hundred.tracks.robust.attacks import PixelSpaceModel
from hundred.tracks.robust.methods.dat import auc, energy, energy_bce, generate, noise_seeds

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"


class Killed(Exception):
    pass


def make_method(*overrides: str):
    config = build_config(overrides=["track=robust", "method=dat", "train.device=cpu",
                                     "data.batch_size=16", *overrides])
    method = get_method("robust", "dat")(config.method_params, config)
    model = create("resnet20", 4, width=4).train()
    method.setup(model, SetupContext(config, torch.device("cpu"), 4, 2))
    return method, model


def test_the_energy_is_minus_logsumexp_of_the_logits():
    logits = torch.randn(6, 5) * 3
    assert torch.allclose(energy(logits), -torch.logsumexp(logits, dim=1))
    # JEM: E(x, y) - E(x) = -f(x)[y] + logsumexp f(x) = -log p(y | x)
    y = torch.arange(6) % 5
    conditional = -logits.gather(1, y.view(-1, 1)).squeeze(1)
    negative_log_posterior = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(conditional - energy(logits), negative_log_posterior, atol=1e-5)


@pytest.mark.parametrize("conditional", [True, False])
def test_generation_lowers_the_energy_of_its_samples_step_by_step(conditional):
    # The paper's convention (and the authors' code): the PGD that makes the contrastive
    # samples *ascends* f(x)[y] (or logsumexp f(x)), i.e. it lowers E(x, y) (E(x)): the
    # samples become more likely under the model. The issue's "the generated samples' energy
    # rises (worse) along the PGD steps" reads -E (the log-density score, the BCE's logit)
    # for E; it is the BCE that afterwards pushes the samples' energy up. So: E(x_t) falls.
    torch.manual_seed(0)
    model = create("resnet20", 4, width=4).eval()
    pixel_model = PixelSpaceModel(model, [0.5] * 3, [0.25] * 3).eval()
    seeds = noise_seeds(8, (3, 8, 8), "uniform", "cpu")
    labels = torch.arange(8) % 4 if conditional else None
    energies = []
    for steps in range(7):  # generation has no randomness: x_t is a prefix of x_{t+1}'s path
        pixels = generate(pixel_model, seeds, steps, 0.05, labels)
        assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1
        with torch.no_grad():
            logits = pixel_model(pixels)
        target = (-logits.gather(1, labels.view(-1, 1)).squeeze(1) if conditional
                  else energy(logits))
        energies.append(float(target.mean()))
    falls = sum(later < earlier for earlier, later in zip(energies, energies[1:]))
    assert falls >= 5 and energies[-1] < energies[0] - 1e-3, energies
    assert torch.equal(generate(pixel_model, seeds, 0, 0.05, labels), seeds)


def test_the_bce_labels_real_images_one_and_generated_images_zero():
    real, generated = torch.randn(4, 3), torch.randn(5, 3)
    expected = torch.cat([-torch.log(torch.sigmoid(torch.logsumexp(real, 1))),
                          -torch.log(1 - torch.sigmoid(torch.logsumexp(generated, 1)))]).mean()
    assert torch.allclose(energy_bce(real, generated), expected, atol=1e-6)
    low, high = torch.full((4, 3), -6.0), torch.full((4, 3), 6.0)  # E high, E low
    assert energy_bce(high, low) < 0.01 < 5 < energy_bce(low, high)
    # gradient descent on the BCE lowers the real images' energy and raises the generated
    real_logits = real.clone().requires_grad_()
    generated_logits = generated.clone().requires_grad_()
    energy_bce(real_logits, generated_logits).backward()
    assert (real_logits.grad < 0).all() and (generated_logits.grad > 0).all()


def test_the_curriculum_adds_a_step_when_the_windowed_auc_reaches_the_threshold():
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auc(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])) == 0.5
    method, _ = make_method("method_params.auc_window_images=48",  # 3 batches of 16
                            "method_params.max_steps=2")
    separated = (torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]))  # AUC 1
    mixed = (torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]))  # AUC 0.5
    for _ in range(2):
        method._update_curriculum(*separated)
    assert method.generation_steps == 0  # the window is not full yet
    method._update_curriculum(*separated)
    assert method.generation_steps == 1 and len(method.auc_window) == 0  # window restarts
    for _ in range(3):
        method._update_curriculum(*mixed)  # mean 0.5 < 0.8
    assert method.generation_steps == 1
    for _ in range(9):
        method._update_curriculum(*separated)
    assert method.generation_steps == 2  # never beyond max_steps


def test_stage_two_freezes_batch_norm_and_stage_one_does_not():
    method, model = make_method("robust.steps=1", "method_params.stage1_fraction=0.5",
                                "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]")
    images, labels = torch.randn(8, 3, 8, 8).clamp(-2, 2), torch.arange(8) % 4

    def stats() -> list[torch.Tensor]:
        return [v.clone() for k, v in model.state_dict().items() if "running" in k]

    method.on_epoch_start(0)  # stage 1 of 2 epochs
    before = stats()
    method.loss(model, images, labels).backward()
    assert not all(torch.equal(a, b) for a, b in zip(before, stats()))
    method.on_epoch_start(1)
    model.train()
    before = stats()
    loss = method.loss(model, images, labels)
    assert torch.isfinite(loss) and loss.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(before, stats()))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert model.training and not any(m.training for m in norms)
    assert method.last_auc is not None


COMMON = ["--device", "cpu", "--set", TINY, "--set", "model.name=resnet20",
          "--set", "model.options={width: 4}", "--set", "data.batch_size=16",
          "--set", "train.epochs=2", "--set", "quiet=true", "--set", "robust.steps=2",
          "--set", "robust.eval_steps=3", "--set", "method_params.stage1_fraction=0",
          "--set", "method_params.auc_window_images=16"]


def latest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = run_dir / "checkpoints"
    return load_file(checkpoints / json.loads((checkpoints / "latest.json").read_text())["weights"])


def test_run_robust_dat_writes_samples_that_the_report_shows_and_resumes_exactly(
        tmp_path, monkeypatch, capsys):
    assert main(["run", "robust", "dat", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "name=whole"]) == 0
    whole = tmp_path / "robust" / "dat" / "whole"
    summary = json.loads((whole / "summary.json").read_text())
    assert 0 <= summary["robust_top1"] <= summary["val_top1"] <= 100
    assert summary["train_threat"]["steps"] == 2 and summary["samples"] == "samples.png"
    assert summary["sample_steps"] == summary["generation_steps"] >= 1  # the curriculum ran
    assert (whole / "samples.png").is_file()
    stages = [json.loads(line)["dat_stage"] for line in
              (whole / "metrics.jsonl").read_text().splitlines()]
    assert stages == [2, 2]  # stage1_fraction 0: joint from the start (stage 1: above)

    capsys.readouterr()
    assert main(["report", str(tmp_path / "robust"), "--out", str(tmp_path / "report")]) == 0
    [picture] = sorted((tmp_path / "report").glob("samples_*.png"))
    assert picture.read_bytes() == (whole / "samples.png").read_bytes()
    assert picture.name in (tmp_path / "report" / "index.html").read_text()

    method_class = get_method("robust", "dat")
    original = method_class.on_epoch_start

    def die(self, epoch):
        if epoch == 1:  # after one joint epoch: the curriculum's state is in the checkpoint
            raise Killed
        original(self, epoch)

    monkeypatch.setattr(method_class, "on_epoch_start", die)
    with pytest.raises(Killed):
        main(["run", "robust", "dat", *COMMON, "--set", f"root={tmp_path}", "--set",
              "name=cut"])
    monkeypatch.undo()
    cut = tmp_path / "robust" / "dat" / "cut"
    resumed = TRACK.run(build_config([cut / "config.yaml"]), resume_dir=cut)
    for key in ("val_top1", "robust_top1", "generation_steps", "sample_energy"):
        assert resumed[key] == summary[key], key
    reference, weights = latest_weights(whole), latest_weights(cut)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)
    assert (cut / "samples.png").read_bytes() == (whole / "samples.png").read_bytes()
