"""Online distillation (DML, BD-KD): a peer network trained from scratch with the student, in
the optimiser and the checkpoint (``method.peer.*``) but not in the run's model; DML's loss is
CE + KL(other || self) for both networks; BD-KD's per-sample balance favours the reverse KL
where the student is less confident than the teacher and the forward KL where it is more."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.engine.trainer import Trainer
from hundred.errors import HundredError
from hundred.models import create
from hundred.registry import get_method
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.losses import (balanced_divergence, balanced_divergence_weights,
                                            reverse_kd_loss)

CLASSES = 4


def tiny(root: Path, method: str, *extra: str):
    return build_config(overrides=[
        "track=classify", f"method={method}", "model.name=convnet_d3", "train.device=cpu",
        "quiet=true",
        f"data.options={{classes: {CLASSES}, train_per_class: 8, val_per_class: 4, res: 8}}",
        "data.batch_size=16", "train.epochs=1", "optim.lr=0.05", f"root={root}", *extra])


def prepared(method_name: str, config=None, **params):
    """A method whose data is 'prepared' (4 classes, 8 px) without loading any data."""
    method = get_method("classify", method_name)(params, config)
    method.prepare(method.config, SimpleNamespace(num_classes=CLASSES, name="fake"), 8)
    return method


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _kl(p_logits, q_logits):
    """Per-row KL(softmax(p) || softmax(q)), written out."""
    p = F.softmax(p_logits, 1)
    return (p * (F.log_softmax(p_logits, 1) - F.log_softmax(q_logits, 1))).sum(1)


def _entropy(logits):
    p = F.softmax(logits, 1)
    return -(p * F.log_softmax(logits, 1)).sum(1)


# ------------------------------------------------------------------- BD-KD's balance weights


def test_the_balance_moves_to_the_reverse_kl_when_the_student_is_less_confident():
    teacher = torch.tensor([[3.0, 0.0, 0.0, 0.0]]).repeat(3, 1)
    student = torch.tensor([[0.5, 0.0, 0.0, 0.0],     # flatter than the teacher: H_s > H_t
                            [8.0, 0.0, 0.0, 0.0],     # sharper: H_s < H_t
                            [3.0, 0.0, 0.0, 0.0]])    # the same: H_s = H_t
    w_forward, w_reverse = balanced_divergence_weights(student, teacher, multiplier=2.0)
    assert w_reverse.tolist() == [2.0, 1.0, 1.0]
    assert w_forward.tolist() == [1.0, 2.0, 1.0]


def test_the_balance_follows_the_entropy_gap_back_and_forth():
    """Sharpen a student step by step past the teacher's entropy and soften it back: the share
    of the reverse KL is high exactly while H(student) > H(teacher), low while it is below."""
    base, teacher = _logits(1, 6, seed=3), _logits(1, 6, seed=4) * 2.0
    scales = list(np.linspace(0.05, 6.0, 30)) + list(np.linspace(6.0, 0.05, 30))
    shares, above = [], []
    for scale in scales:
        student = base * float(scale)
        w_forward, w_reverse = balanced_divergence_weights(student, teacher, multiplier=3.0)
        shares.append((w_reverse / (w_forward + w_reverse)).item())
        above.append(bool(_entropy(student) > _entropy(teacher)))
    assert any(above) and not all(above)  # the sweep crosses the teacher's entropy both ways
    assert all(s == pytest.approx(0.75 if a else 0.25) for s, a in zip(shares, above))


def test_balanced_divergence_is_the_weighted_sum_of_both_kls():
    sharpness = torch.tensor([0.3, 3.0] * 4).unsqueeze(1)  # flat and peaked teacher rows
    student, teacher = _logits(8, 5), _logits(8, 5, seed=1) * sharpness
    for multiplier, t in ((2.0, 1.0), (3.0, 2.0)):
        h_s, h_t = _entropy(student / t), _entropy(teacher / t)
        w_r = torch.where(h_s > h_t, multiplier, 1.0)
        w_f = torch.where(h_t > h_s, multiplier, 1.0)
        assert (h_s > h_t).any() and (h_s < h_t).any()  # both cases in the batch
        expected = t * t * (w_f * _kl(teacher / t, student / t)
                            + w_r * _kl(student / t, teacher / t)).mean()
        got = balanced_divergence(student, teacher, multiplier, t)
        assert torch.allclose(got, expected, atol=1e-6)
    jeffreys = (_kl(teacher, student) + _kl(student, teacher)).mean()
    assert torch.allclose(balanced_divergence(student, teacher, 1.0), jeffreys, atol=1e-6)
    assert balanced_divergence(student, student.clone()).abs().item() < 1e-6


def test_balanced_divergence_trains_the_student_only():
    student = _logits(4, 5).requires_grad_()
    teacher = _logits(4, 5, seed=1).requires_grad_()
    balanced_divergence(student.bfloat16(), teacher.bfloat16()).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_reverse_kd_loss_is_the_learners_kl_to_the_detached_target():
    learner = _logits(5, 6).requires_grad_()
    target = _logits(5, 6, seed=1).requires_grad_()
    loss = reverse_kd_loss(learner, target, 2.0)
    assert torch.allclose(loss, 4.0 * _kl(learner / 2, target / 2).mean(), atol=1e-6)
    loss.backward()
    assert learner.grad.abs().sum() > 0 and target.grad is None


# -------------------------------------------------------------------------- the method losses


def _networks(method):
    torch.manual_seed(0)
    student = create("convnet_d3", CLASSES, img_size=8)
    method.setup(student, SimpleNamespace(device=torch.device("cpu")))
    images, labels = torch.randn(6, 3, 8, 8), torch.randint(0, CLASSES, (6,))
    return student, method.trainable["peer"], images, labels


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def test_dml_loss_is_ce_plus_kl_of_the_other_for_both_networks():
    method = prepared("dml")
    student, peer, x, y = _networks(method)
    assert type(peer) is type(student) and peer is not student  # default: same architecture
    loss = method.loss(student, x, y)
    s, p = student(x), peer(x)
    loss_student = F.cross_entropy(s, y) + _kl(p, s).mean()    # L_1 = L_C1 + KL(p2 || p1)
    loss_peer = F.cross_entropy(p, y) + _kl(s, p).mean()       # L_2 = L_C2 + KL(p1 || p2)
    assert torch.allclose(loss, loss_student + loss_peer, atol=1e-5)

    # one backward gives each network the gradient of its own loss, the other's target fixed
    loss.backward()
    got_student, got_peer = _grads(student), _grads(peer)
    student.zero_grad(), peer.zero_grad()
    s, p = student(x), peer(x)
    (F.cross_entropy(s, y) + _kl(p.detach(), s).mean()).backward()
    (F.cross_entropy(p, y) + _kl(s.detach(), p).mean()).backward()
    for got, want in zip(got_student + got_peer, _grads(student) + _grads(peer)):
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("teacher_divergence", ["reverse", "forward"])
def test_bdkd_loss_is_balanced_student_term_plus_the_teachers_kl(teacher_divergence):
    method = prepared("bdkd", multiplier=3.0, temperature=2.0,
                      teacher_divergence=teacher_divergence)
    student, teacher, x, y = _networks(method)
    loss = method.loss(student, x, y)
    s, t = student(x), teacher(x)
    h_s, h_t = _entropy(s / 2), _entropy(t / 2)
    w_r, w_f = torch.where(h_s > h_t, 3.0, 1.0), torch.where(h_t > h_s, 3.0, 1.0)
    student_kd = 4.0 * (w_f * _kl(t / 2, s / 2) + w_r * _kl(s / 2, t / 2)).mean()
    teacher_kd = 4.0 * (_kl(t / 2, s / 2) if teacher_divergence == "reverse"
                        else _kl(s / 2, t / 2)).mean()
    expected = F.cross_entropy(s, y) + student_kd + F.cross_entropy(t, y) + teacher_kd
    assert torch.allclose(loss, expected, atol=1e-5)


def test_a_different_peer_architecture_and_bad_params():
    method = prepared("dml", peer="resnet20")
    student, peer, x, y = _networks(method)
    assert sum(p.numel() for p in peer.parameters()) != sum(p.numel()
                                                              for p in student.parameters())
    assert peer(x).shape == (6, CLASSES)
    for params in ({"multiplier": 0.5}, {"temperature": 0}, {"teacher_divergence": "js"},
                   {"teacher": "x"}):
        with pytest.raises(HundredError, match="method_params"):
            get_method("classify", "bdkd")(params)


# ------------------------------------------------------------- optimiser, checkpoint, runs


def test_the_peer_is_optimised_with_the_student():
    config = build_config(overrides=["track=classify", "method=dml", "model.name=convnet_d3",
                                     "train.device=cpu", "optim.lr=0.05", "train.epochs=1"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=32).astype(np.int64)
    loader = BatchLoader((images, labels), batch_size=16, shuffle=True, drop_last=True,
                         augment="none", device="cpu")
    model = create("convnet_d3", CLASSES, img_size=8)
    method = prepared("dml", config)
    trainer = Trainer(config, model, method, loader, None, torch.device("cpu"), run_dir=None)
    peer = method.trainable["peer"]
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.parameters()} | {id(p) for p in peer.parameters()}
    before = {k: v.clone() for k, v in peer.state_dict().items()}
    trainer.fit()
    assert any(not torch.equal(before[k], v) for k, v in peer.state_dict().items())


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    return load_file(run_dir / "checkpoints" / latest["weights"])


@pytest.mark.parametrize("method_name", ["dml", "bdkd"])
def test_a_run_saves_the_plain_student_and_the_peer_under_method_keys(tmp_path, method_name):
    config = tiny(tmp_path, method_name, "method_params.peer=resnet20")
    method = get_method("classify", method_name)(config.method_params, config)
    summary = TRACK.run(config, method=method)
    assert summary["method"] == method_name and 0 <= summary["val_top1"] <= 100
    weights = _weights(Path(summary["run_dir"]))
    student_keys = set(create("convnet_d3", CLASSES, img_size=8).state_dict())
    assert {k for k in weights if not k.startswith("method.")} == student_keys
    peer = method.trainable["peer"].state_dict()
    assert {k for k in weights if k.startswith("method.")} == {f"method.peer.{k}" for k in peer}
    assert all(torch.equal(weights[f"method.peer.{k}"], v) for k, v in peer.items())


def test_a_pretrained_teacher_is_refused_and_nothing_is_written(tmp_path):
    config = tiny(tmp_path / "runs", "dml", "classify.teacher=/some/run")
    with pytest.raises(HundredError, match="peer"):
        TRACK.run(config)
    assert not (tmp_path / "runs").exists()


class Killed(Exception):
    pass


def test_an_interrupted_bdkd_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from hundred.tracks.classify.methods.bdkd import BDKD

    reference = TRACK.run(tiny(tmp_path, "bdkd", "name=whole", "train.epochs=2"))

    def die_at_epoch_1(self, epoch):
        if epoch == 1:
            raise Killed

    monkeypatch.setattr(BDKD, "on_epoch_start", die_at_epoch_1)
    with pytest.raises(Killed):
        TRACK.run(tiny(tmp_path, "bdkd", "name=cut", "train.epochs=2"))
    monkeypatch.undo()
    cut = tmp_path / "classify" / "bdkd" / "cut"
    assert json.loads((cut / "checkpoints" / "latest.json").read_text())["epoch"] == 0
    resumed = TRACK.run(tiny(tmp_path, "bdkd", "name=cut", "train.epochs=2"), resume_dir=cut)

    for key in ("val_top1", "val_top5", "val_loss", "val_ece"):
        assert np.allclose(resumed[key], reference[key]), key
    whole, again = _weights(Path(reference["run_dir"])), _weights(cut)
    assert whole.keys() == again.keys() and any(k.startswith("method.peer.") for k in whole)
    assert all(torch.allclose(whole[k], again[k]) for k in whole)
