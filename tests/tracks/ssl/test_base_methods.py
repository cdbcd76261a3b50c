"""The base self-supervised methods at tiny scale: MoCo v2's momentum key encoder and FIFO
queue (exact across resume), BYOL's scheduled target network and symmetric 2 - 2cos loss,
SimSiam's stop-gradient, and a tiny end-to-end run of each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.engine.trainer import build_optimizer
from hundred.models import create
from hundred.registry import get_method, get_track
from hundred.tracks.ssl.methods.byol import BYOL, byol_loss
from hundred.tracks.ssl.methods.moco import KeyQueue, MoCo
from hundred.tracks.ssl.methods.simsiam import SimSiam, simsiam_loss

BATCH = 4
SMALL_MOCO = {"queue_size": 6, "proj_hidden_dim": 16, "proj_output_dim": 8, "momentum": 0.9}
SMALL_BYOL = {"proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 16,
              "tau_base": 0.9}
SMALL_SIMSIAM = {"proj_hidden_dim": 16, "proj_output_dim": 8, "pred_hidden_dim": 4}


def build(cls, params, steps_per_epoch: int = 2, epochs: int = 2):
    """A method set up on a tiny model, and an SGD optimiser over the model and its modules."""
    torch.manual_seed(0)
    config = build_config(overrides=["track=ssl", f"method={cls.name}", "optim.lr=0.5"])
    method = cls(params, config)
    model = create("resnet20", 4, img_size=8, width=4)
    method.setup(model, SetupContext(config, torch.device("cpu"), steps_per_epoch, epochs))
    optimizer = build_optimizer([model, method.trainable], config.optim)
    return method, model, optimizer


def views(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, 3, 8, 8, generator=generator) for _ in range(2)]


def step(method, model, optimizer, seed: int) -> torch.Tensor:
    """One training step as the trainer takes it: loss, backward, step, the hook."""
    loss = method.loss(model, views(seed), torch.arange(BATCH) % 4)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.after_optimizer_step(model)
    return loss.detach()


def parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# -- MoCo --------------------------------------------------------------------------------------
def test_moco_key_encoder_is_the_momentum_average_of_the_query_encoder():
    method, model, optimizer = build(MoCo, SMALL_MOCO)
    key_encoder = method.stateful["key_encoder"]
    assert parameters(key_encoder).keys() == parameters(method.query_encoder(model)).keys()
    assert all(torch.equal(a, b) for a, b in zip(parameters(key_encoder).values(),
                                                  parameters(method.query_encoder(model)).values()))
    m = method.params.momentum
    for seed in range(3):
        before = parameters(key_encoder)
        step(method, model, optimizer, seed)
        query = parameters(method.query_encoder(model))
        after = parameters(key_encoder)
        for name, value in after.items():
            torch.testing.assert_close(value, m * before[name] + (1 - m) * query[name])
        assert any(not torch.equal(after[k], query[k]) for k in after)  # it lags the query
        assert all(p.grad is None and not p.requires_grad for p in key_encoder.parameters())
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in key_encoder.parameters())
    assert not any(id(b) in optimised for b in method.stateful["queue"].buffers())


def test_moco_queue_is_first_in_first_out_and_feeds_the_next_steps_negatives():
    method, model, optimizer = build(MoCo, SMALL_MOCO)  # K = 6, batches of 4
    seen: list[torch.Tensor] = []
    logits_of = method.contrastive_logits

    def recording(queries, keys, negatives):
        seen.append(negatives.clone())
        return logits_of(queries, keys, negatives)

    method.contrastive_logits = recording
    queue = method.stateful["queue"]
    initial = queue.keys.clone()
    batches = []
    for seed in range(2):
        # the keys of this step: the key encoder as the previous step's update left it
        with torch.no_grad():
            expected = F.normalize(method.stateful["key_encoder"](views(seed)[1]), dim=1)
        step(method, model, optimizer, seed)
        batches.append(expected)
    torch.testing.assert_close(seen[0], initial)
    # step 1 wrote slots 0..3, step 2 slots 4, 5, 0, 1: the oldest keys were overwritten
    assert int(queue.pointer) == (2 * BATCH) % 6 == 2
    torch.testing.assert_close(seen[1][:4], batches[0])
    torch.testing.assert_close(queue.keys[[4, 5, 0, 1]], batches[1])
    torch.testing.assert_close(queue.keys[[2, 3]], batches[0][2:])


def test_key_queue_order():
    queue = KeyQueue(5, 2)
    first, second = torch.arange(6.0).view(3, 2), 10 + torch.arange(6.0).view(3, 2)
    queue.push(first)
    assert int(queue.pointer) == 3
    queue.push(second)
    assert int(queue.pointer) == 1  # the slot of the oldest key, the next overwritten
    torch.testing.assert_close(queue.keys, torch.stack(
        [second[2], first[1], first[2], second[0], second[1]]))
    queue.push(torch.arange(14.0).view(7, 2))  # more than K: the newest K survive, in order
    assert int(queue.pointer) == 3
    torch.testing.assert_close(queue.keys[[3, 4, 0, 1, 2]], torch.arange(4.0, 14.0).view(5, 2))


def test_moco_loss_is_info_nce_over_the_positive_and_the_queue():
    method = MoCo({"temperature": 0.5})
    torch.manual_seed(1)
    q, k = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(3, 4), dim=1)
    negatives = F.normalize(torch.randn(5, 4), dim=1)
    expected = sum(
        -math.log(math.exp(float(q[i] @ k[i]) / 0.5)
                  / (math.exp(float(q[i] @ k[i]) / 0.5)
                     + sum(math.exp(float(q[i] @ n) / 0.5) for n in negatives)))
        for i in range(3)) / 3
    assert float(method.info_nce(q, k, negatives)) == pytest.approx(expected, rel=1e-5)
    assert method.contrastive_logits(q, k, negatives).shape == (3, 6)


def test_symmetric_moco_averages_both_view_orders_and_enqueues_both_keys():
    method, model, _ = build(MoCo, {**SMALL_MOCO, "queue_size": 16, "symmetric": True})
    first, second = views(0)
    loss, _ = method.ssl_loss(model, [first, second])
    assert method._pending_keys.shape == (2 * BATCH, 8)
    with torch.no_grad():
        encoder, key_encoder = method.query_encoder(model), method.stateful["key_encoder"]
        negatives = method.stateful["queue"].keys
        q = [F.normalize(encoder(v), dim=1) for v in (first, second)]
        k = [F.normalize(key_encoder(v), dim=1) for v in (second, first)]
        expected = (method.info_nce(q[0], k[0], negatives)
                    + method.info_nce(q[1], k[1], negatives)) / 2
    torch.testing.assert_close(loss.detach(), expected)


# -- BYOL --------------------------------------------------------------------------------------
def test_byol_target_is_the_ema_with_the_cosine_scheduled_momentum():
    method, model, optimizer = build(BYOL, SMALL_BYOL, steps_per_epoch=2, epochs=2)  # K = 4
    target = method.stateful["target"]
    taus = []
    for k in range(4):
        tau = 1 - (1 - 0.9) * (math.cos(math.pi * k / 4) + 1) / 2
        assert method.momentum() == pytest.approx(tau)
        taus.append(tau)
        before = parameters(target)
        step(method, model, optimizer, k)
        online = parameters(method.online_encoder(model))
        for name, value in parameters(target).items():
            torch.testing.assert_close(value, tau * before[name] + (1 - tau) * online[name])
        assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert taus[0] == pytest.approx(0.9) and taus[2] == pytest.approx(0.95)
    assert method.momentum() == pytest.approx(1.0)  # K steps taken: the schedule's end
    # the schedule position is resume state
    fresh, _, _ = build(BYOL, SMALL_BYOL, steps_per_epoch=2, epochs=2)
    fresh.load_state_dict(method.state_dict())
    assert fresh.step == 4 and fresh.momentum() == method.momentum()


def test_byol_loss_is_two_minus_two_cos_in_each_direction():
    torch.manual_seed(2)
    p, z = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    expected = (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(1)).mean()
    loss = byol_loss(p, z)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert z.grad is None and p.grad is not None

    method, model, _ = build(BYOL, SMALL_BYOL)
    first, second = views(3)
    loss, features = method.ssl_loss(model, [first, second])
    with torch.no_grad():
        online, target = method.online_encoder(model), method.stateful["target"]
        predictor = method.trainable["predictor"]
        p1, p2 = predictor(online(first)), predictor(online(second))
        z1, z2 = target(first), target(second)
        cos = lambda a, b: (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1)  # noqa: E731
        expected = (2 - 2 * cos(p1, z2)).mean() + (2 - 2 * cos(p2, z1)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    assert features.shape == (BATCH, model.feature_dim)
    loss.backward()
    assert all(p.grad is None for p in method.stateful["target"].parameters())
    assert all(p.grad is not None for p in method.trainable.parameters())


# -- SimSiam -----------------------------------------------------------------------------------
def test_simsiam_target_branch_gets_no_gradient():
    torch.manual_seed(3)
    p1, p2, z1, z2 = (torch.randn(5, 8, requires_grad=True) for _ in range(4))
    loss = simsiam_loss([p1, p2], [z1, z2])
    cos = F.cosine_similarity
    torch.testing.assert_close(loss, -(cos(p1, z2).mean() + cos(p2, z1).mean()) / 2)
    loss.backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_simsiam_projection_gets_gradient_only_through_its_own_predictor():
    """With a fixed linear predictor W, dL/dz1 must be the gradient of 1/2 D(W z1, z2) in z1
    alone: a missing stop-gradient adds the target term, a misplaced one changes it."""
    method, model, _ = build(SimSiam, SMALL_SIMSIAM)
    predictor = nn.Linear(8, 8, bias=False).requires_grad_(False)
    method.trainable["predictor"] = predictor
    projections: list[torch.Tensor] = []

    def keep(module, inputs, output):
        output.retain_grad()
        projections.append(output)

    method.trainable["projector"].register_forward_hook(keep)
    loss, _ = method.ssl_loss(model, views(4))
    loss.backward()
    z1, z2 = projections
    for mine, other in ((z1, z2), (z2, z1)):
        a = mine.detach().clone().requires_grad_(True)
        (-F.cosine_similarity(predictor(a), other.detach()).mean() / 2).backward()
        torch.testing.assert_close(mine.grad, a.grad)


# -- end to end --------------------------------------------------------------------------------
def tiny(root: Path, method: str, params: str, *extra: str):
    return build_config(overrides=[
        "track=ssl", f"method={method}", f"method_params={params}", "model.name=resnet20",
        "model.options={width: 4}", "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 16}",
        "data.batch_size=16", "train.epochs=1", "ssl.probe_epochs=2",
        "ssl.augment=simclr-small", f"root={root}", *extra])


def latest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(sorted((run_dir / "checkpoints").glob("*.safetensors"))[-1])


@pytest.mark.parametrize("method, params, state", [
    ("moco", "{queue_size: 32, proj_hidden_dim: 32, proj_output_dim: 16}",
     ("method.key_encoder.", "method.queue.keys", "method.queue.pointer")),
    ("byol", "{proj_hidden_dim: 32, proj_output_dim: 16, pred_hidden_dim: 32}",
     ("method.target.", "method.predictor.")),
    ("simsiam", "{proj_hidden_dim: 32, proj_output_dim: 16, pred_hidden_dim: 8}",
     ("method.predictor.",)),
])
def test_each_method_runs_end_to_end(tmp_path, method, params, state):
    assert get_method("ssl", method).views == 2
    summary = get_track("ssl").run(tiny(tmp_path, method, params, "name=e2e"))
    assert 0 <= summary["linear_top1"] <= 100 and 0 <= summary["knn20_top1"] <= 100
    weights = latest_weights(Path(summary["run_dir"]))
    for prefix in state:
        assert any(k.startswith(prefix) for k in weights), prefix


class Killed(Exception):
    """Raised to interrupt a run, as a crash would."""


class KillableMoCo(MoCo):
    """MoCo that dies before a given epoch, as a crashed run would."""

    die_at_epoch: int | None = None

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.die_at_epoch:
            raise Killed


def test_moco_queue_and_key_encoder_survive_resume(tmp_path):
    params = "{queue_size: 40, proj_hidden_dim: 32, proj_output_dim: 16}"  # 40: not a multiple
    reference_config = tiny(tmp_path, "moco", params, "name=reference", "train.epochs=2",
                            "ssl.offline_eval=false")
    reference = KillableMoCo(reference_config.method_params, reference_config)
    get_track("ssl").run(reference_config, method=reference)

    config = tiny(tmp_path, "moco", params, "name=killed", "train.epochs=2",
                  "ssl.offline_eval=false")
    killed = KillableMoCo(config.method_params, config)
    killed.die_at_epoch = 1
    with pytest.raises(Killed):
        get_track("ssl").run(config, method=killed)
    run_dir = tmp_path / "ssl" / "moco" / "killed"
    fresh = KillableMoCo(config.method_params, config)
    get_track("ssl").run(config, resume_dir=run_dir, method=fresh)

    steps = 2 * (4 * 16 // 16)
    assert int(fresh.stateful["queue"].pointer) == (steps * 16) % 40
    for name in ("queue", "key_encoder"):
        mine, theirs = fresh.stateful[name].state_dict(), reference.stateful[name].state_dict()
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], msg=f"{name}.{key}")
    ref_w, res_w = latest_weights(tmp_path / "ssl" / "moco" / "reference"), latest_weights(run_dir)
    assert ref_w.keys() == res_w.keys()
    for key in ref_w:
        torch.testing.assert_close(res_w[key], ref_w[key], msg=key)
