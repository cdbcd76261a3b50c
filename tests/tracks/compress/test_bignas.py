"""BigNAS (Yu et al., ECCV 2020), tiny: every step trains the largest and the smallest child
(and N random ones); the children's targets are the largest child's predictions of the same
step, detached; a run refuses a non-elastic model; ``hundred run compress bignas`` then
``hundred search compress RUN --flops 0.5`` writes a finished run under the budget whose
exported child loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hundred.cli import main
from hundred.engine.init import load_finished_run
from hundred.models import create
from hundred.tracks.compress.methods.bignas import BigNAS, soft_cross_entropy
from hundred.tracks.compress.supernet import supernet_of

OPTIONS = {"widths": [8, 16], "depths": [2, 2], "stem_width": 8}
SETTINGS = ["data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}",
            "model.name=elastic_resnet",
            "model.options={widths: [8, 16], depths: [2, 2], stem_width: 8}",
            "data.batch_size=16", "train.epochs=1", "quiet=true", "compress.latency_batch=4",
            "compress.latency_warmup=1", "compress.latency_repeats=2"]


def common(root: Path) -> list[str]:
    return ["--device", "cpu", *(p for s in [*SETTINGS, f"root={root}"] for p in ("--set", s))]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_sandwich_steps_and_inplace_distillation_targets():
    torch.manual_seed(0)
    model = create("elastic_resnet", 4, img_size=8, zero_init_residual=False, **OPTIONS)
    method = BigNAS({"random_children": 2})
    space = supernet_of(model)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    for _ in range(3):
        model.zero_grad()
        loss = method.loss(model, images, labels)
        trace = method.trace
        assert len(trace) == 4
        assert trace[0]["child"] == space.largest() and trace[1]["child"] == space.smallest()
        largest_logits = trace[0]["logits"]
        for entry in trace[1:]:
            # the target is the largest child's output of this very step, without gradient
            assert entry["target"] is not None and not entry["target"].requires_grad
            assert torch.equal(entry["target"], largest_logits.detach())
        loss.backward()
        assert space.active == space.largest()  # the supernet is left at the largest child
    # no gradient reaches the target through the distillation loss
    teacher = torch.randn(5, 4, requires_grad=True)
    student = torch.randn(5, 4, requires_grad=True)
    soft_cross_entropy(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None


def test_bignas_refuses_a_model_that_is_not_the_supernet(tmp_path, capsys):
    assert main(["run", "compress", "bignas", *common(tmp_path), "--set",
                 "model.name=resnet20", "--set", "model.options={}"]) != 0
    assert "elastic_resnet" in capsys.readouterr().err
    assert not (tmp_path / "compress").exists() or not any((tmp_path / "compress").rglob("*.json"))


@pytest.mark.slow
def test_bignas_run_then_search_under_half_the_flops(tmp_path):
    assert main(["run", "compress", "bignas", *common(tmp_path)]) == 0
    (run_dir,) = (tmp_path / "compress" / "bignas").iterdir()
    trained = summary_of(run_dir)
    assert trained["flops_ratio"] == pytest.approx(1.0)  # the largest child: the full network
    assert "child" not in trained["export"]["model"]["options"]
    # bad budget: an error, nothing written
    assert main(["search", "compress", str(run_dir), "--flops", "1.5"]) != 0
    assert len(list((tmp_path / "compress" / "bignas").iterdir())) == 1
    assert main(["search", "compress", str(run_dir), "--flops", "0.5", "--samples", "30",
          "--evaluate", "2", "--calibration-batches", "2", "--device", "cpu"]) == 0
    found = [d for d in (tmp_path / "compress" / "bignas").iterdir() if d != run_dir]
    assert len(found) == 1
    searched = summary_of(found[0])
    assert searched["flops_ratio"] <= 0.5
    assert searched["dense_flops"] == trained["flops"]
    for key in ("val_top1", "params", "flops", "saved_activation_mib", "export"):
        assert searched[key] is not None
    child = searched["search"]["child"]
    assert searched["export"]["model"]["options"]["child"] == child
    # the exported child is a plain model that loads back
    finished = load_finished_run(found[0], "init")
    options = finished.config.model.options
    model = create("elastic_resnet", 4, img_size=8, **options)
    model.load_state_dict(finished.weights)
    assert sum(p.numel() for p in model.parameters()) == searched["params"]


def test_deps_trains_the_full_model_alone_before_the_shrinking_point():
    from hundred.engine.losses import cross_entropy
    from hundred.engine.method import SetupContext
    from hundred.tracks.compress.methods.deps import DepS

    torch.manual_seed(0)
    model = create("elastic_resnet", 4, img_size=8, zero_init_residual=False, **OPTIONS)
    method = DepS({"shrink_start": 0.5, "ramp": 0.25})
    method.setup(model, SetupContext(method.config, torch.device("cpu"), steps_per_epoch=4,
                                     epochs=2))
    space = supernet_of(model)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    betas = []
    for epoch in range(2):
        method.on_epoch_start(epoch)
        for step in range(4):
            model.zero_grad()
            method.loss(model, images, labels).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            trace = method.trace
            if epoch == 0:  # before 50 % of the steps: the full model alone, on the labels
                assert [t["child"] for t in trace] == [space.largest()]
                model.zero_grad()
                cross_entropy(model(images), labels,
                              method.config.train.label_smoothing).backward()
                assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())
            else:  # shrinking: the sandwich with the full model's targets of this step
                assert len(trace) == 4 and trace[1]["child"] == space.smallest()
                assert all(torch.equal(t["target"], trace[0]["logits"].detach())
                           for t in trace[1:])
            betas.append(method.beta(epoch * 4 + step))
    assert betas[:4] == [0.0] * 4
    assert betas[4] == 0.0 and 0 < betas[5] < betas[6] == 1.0 == betas[7]


def test_ofa_shrinks_progressively_and_distils_from_the_frozen_full_network():
    """OFA (Cai et al., ICLR 2020): the full network alone, then children elastic in the
    kernel, then also depth, then also width; the KD target is the full network as the first
    phase left it, which no later step changes."""
    from hundred.engine.method import SetupContext
    from hundred.tracks.compress.methods.ofa import OFA

    torch.manual_seed(0)
    model = create("elastic_resnet", 4, img_size=8, zero_init_residual=False, **OPTIONS)
    method = OFA({"kernel_start": 0.25, "depth_start": 0.5, "width_start": 0.75,
                  "children": 3})
    method.setup(model, SetupContext(method.config, torch.device("cpu"), steps_per_epoch=8,
                                     epochs=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    space = supernet_of(model)
    largest = space.largest()
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    seen: dict[str, set[str]] = {}
    snapshot = None
    for epoch in range(2):
        method.on_epoch_start(epoch)
        for _ in range(8):
            if snapshot is None and method.step == 4:  # the first phase ends here
                snapshot = {k: v.clone() for k, v in model.state_dict().items()}
            optimizer.zero_grad()
            method.loss(model, images, labels).backward()
            optimizer.step()
            phase = method.trace[0]["phase"]
            varied = seen.setdefault(phase, set())
            for entry in method.trace:
                child = entry["child"]
                if child["depth"] != largest["depth"]:
                    varied.add("depth")
                for key, top in (("expand", max(space.expand_choices)),
                                 ("kernel", max(space.kernel_choices))):
                    if any(value != top for stage in child[key] for value in stage):
                        varied.add(key)
            if phase == "full":
                assert len(method.trace) == 1
            else:
                assert len(method.trace) == 3
                assert all(not p.requires_grad for p in method.teacher.parameters())
                teacher = method.teacher.state_dict()
                assert all(torch.equal(teacher[k], snapshot[k]) for k in snapshot)
                with torch.no_grad():
                    expected = method.teacher.eval()(images)
                assert all(torch.equal(e["target"], expected) for e in method.trace)
    assert list(seen) == ["full", "kernel", "depth", "width"]
    assert seen["full"] == set() and seen["kernel"] == {"kernel"}
    assert seen["depth"] <= {"kernel", "depth"} and "depth" in seen["depth"]
    assert "expand" in seen["width"]
    # the model moved on after the teacher was taken
    assert any(not torch.equal(v, snapshot[k]) for k, v in model.state_dict().items()
               if v.is_floating_point())
    assert method.state_dict() == {"teacher_taken": True}


def test_ofa_refuses_phases_out_of_order():
    from hundred.errors import HundredError
    from hundred.tracks.compress.methods.ofa import OFA

    with pytest.raises((HundredError, ValueError), match="in order"):
        OFA({"kernel_start": 0.6, "depth_start": 0.5})
