"""The method hooks: modules a method builds in ``setup`` (trainable and frozen), their place
in the optimiser and the checkpoint, exact resume with them, and multi-view batches."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from hundred.config import build_config
from hundred.data.loader import BatchLoader
from hundred.engine.method import Method, SetupContext
from hundred.engine.trainer import Trainer
from hundred.models import create
from hundred.registry import METHODS, register
from hundred.tracks.classify import TRACK
from hundred.tracks.classify.method import ClassifyMethod

CLASSES = 4
TINY = ["track=classify", "model.name=convnet_d3", "train.device=cpu",
        f"data.options={{classes: {CLASSES}, train_per_class: 8, val_per_class: 4, res: 16}}",
        "data.batch_size=16", "train.epochs=3", "quiet=true", "optim.lr=0.05"]
STEPS_PER_EPOCH = CLASSES * 8 // 16


class Killed(Exception):
    """Raised by a method to interrupt a run, as a crash would."""


class Projector(ClassifyMethod):
    """Cross-entropy plus a small term pulling a trainable projector of the logits towards a
    frozen teacher's projection of them (the teacher has a BatchNorm: in train mode its
    running statistics would move)."""

    def __init__(self, params=None, config=None):
        super().__init__(params, config)
        self.setup_calls: list[tuple[nn.Module, SetupContext]] = []
        self.initial: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0  # resume state beyond the modules
        self.die_at_epoch: int | None = None

    def setup(self, model, ctx):
        self.setup_calls.append((model, ctx))
        if "projector" not in self.trainable:
            self.add_trainable("projector", nn.Linear(CLASSES, 4))
        if "teacher" not in self.frozen:
            head = nn.Sequential(nn.Linear(CLASSES, 4), nn.BatchNorm1d(4))
            self.add_frozen("teacher", copy.deepcopy(head))
        self.initial = {name: {k: v.detach().clone() for k, v in group[name].state_dict().items()}
                        for group in (self.trainable, self.frozen) for name in group}

    def on_epoch_start(self, epoch):
        if epoch == self.die_at_epoch:
            raise Killed

    def loss(self, model, images, labels):
        self.steps += 1
        logits = model(images)
        extra = F.mse_loss(self.trainable["projector"](logits), self.frozen["teacher"](logits))
        return F.cross_entropy(logits, labels) + 0.1 * extra

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class TwoViews(ClassifyMethod):
    """Records the images it receives; trains on the mean loss over its two views."""

    views = 2

    def __init__(self, params=None, config=None):
        super().__init__(params, config)
        self.received: list = []

    def loss(self, model, images, labels):
        self.received.append((images, labels))
        return sum(F.cross_entropy(model(view), labels) for view in images) / len(images)


class Plain(ClassifyMethod):
    """Builds nothing in setup: plain cross-entropy."""

    def loss(self, model, images, labels):
        return F.cross_entropy(model(images), labels)


NAMES = {"test_projector": Projector, "test_two_views": TwoViews, "test_plain": Plain}


@pytest.fixture(autouse=True)
def registered():
    """Register the test methods under the classify track for one test, then remove them."""
    for name, cls in NAMES.items():
        register("classify", name)(cls)
    yield
    for name in NAMES:
        METHODS.pop(("classify", name), None)


def tiny(tmp_path, method, *extra):
    return build_config(overrides=TINY + [f"method={method}", f"root={tmp_path}", *extra])


def checkpoint_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = run_dir / "checkpoints"
    latest = json.loads((checkpoints / "latest.json").read_text())
    assert list(checkpoints.glob("*.safetensors")) == [checkpoints / latest["weights"]]
    return load_file(checkpoints / latest["weights"])


def test_setup_builds_trainable_and_frozen_modules(tmp_path):
    config = tiny(tmp_path, "test_projector", "name=run")
    method = Projector(config.method_params, config)
    summary = TRACK.run(config, method=method)
    run_dir = Path(summary["run_dir"])
    assert run_dir == tmp_path / "classify" / "test_projector" / "run"

    # (a) setup ran once, with the model and the training phase's shape
    assert len(method.setup_calls) == 1
    model, ctx = method.setup_calls[0]
    assert isinstance(model, nn.Module) and not isinstance(model, Method)
    assert isinstance(ctx, SetupContext)
    assert ctx.device == torch.device("cpu")
    assert ctx.epochs == 3
    assert ctx.steps_per_epoch == STEPS_PER_EPOCH
    assert ctx.config.method == "test_projector"
    assert method.steps == 3 * STEPS_PER_EPOCH

    # (b) the projector trained, the teacher (weights and BatchNorm statistics) did not
    projector = method.trainable["projector"].state_dict()
    assert not any(torch.equal(projector[k], method.initial["projector"][k]) for k in projector)
    teacher = method.frozen["teacher"].state_dict()
    assert teacher.keys() == method.initial["teacher"].keys()
    assert all(torch.equal(teacher[k], method.initial["teacher"][k]) for k in teacher)

    # (c) the checkpoint holds the projector under method.projector.*, nothing of the teacher
    weights = checkpoint_weights(run_dir)
    method_keys = {k for k in weights if k.startswith("method.")}
    assert method_keys == {"method.projector.weight", "method.projector.bias"}
    assert all(torch.equal(weights[f"method.projector.{k}"], v) for k, v in projector.items())
    assert not any("teacher" in k for k in weights)
    assert not any(k.startswith("method.") for k in model.state_dict())

    # (e) the teacher stays in eval mode, without gradients
    teacher_module = method.frozen["teacher"]
    assert not any(m.training for m in teacher_module.modules())
    assert not any(p.requires_grad for p in teacher_module.parameters())
    assert all(p.grad is None for p in teacher_module.parameters())
    assert all(p.requires_grad for p in method.trainable.parameters())


def test_optimiser_holds_the_trainable_modules_not_the_frozen_ones(tmp_path):
    config = tiny(tmp_path, "test_projector")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=32).astype(np.int64)
    loader = BatchLoader((images, labels), batch_size=16, shuffle=True, drop_last=True,
                         augment="crop-flip", device="cpu")
    model = create("convnet_d3", CLASSES, img_size=16)
    method = Projector(config.method_params, config)
    trainer = Trainer(config, model, method, loader, None, torch.device("cpu"), run_dir=None)

    assert len(method.setup_calls) == 1
    assert method.setup_calls[0][0] is model
    assert method.setup_calls[0][1].steps_per_epoch == 2
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    ids = {id(p) for p in optimised}
    assert len(ids) == len(optimised)  # no parameter twice
    assert all(id(p) in ids for p in model.parameters())
    assert all(id(p) in ids for p in method.trainable["projector"].parameters())
    assert not any(id(p) in ids for p in method.frozen["teacher"].parameters())
    assert ids == {id(p) for p in model.parameters()} | \
        {id(p) for p in method.trainable.parameters()}
    # the projector's weight is decayed, its bias is not (the usual grouping)
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert id(method.trainable["projector"].weight) in decayed
    assert id(method.trainable["projector"].bias) not in decayed
    assert not method.frozen["teacher"].training

    trainer.fit()  # trains without a run dir; the frozen teacher never moves
    teacher = method.frozen["teacher"].state_dict()
    assert all(torch.equal(teacher[k], method.initial["teacher"][k]) for k in teacher)
    assert not torch.equal(method.trainable["projector"].weight,
                           method.initial["projector"]["weight"])


def test_interrupted_run_with_method_modules_resumes_bit_identical(tmp_path):
    reference_config = tiny(tmp_path, "test_projector", "name=reference")
    reference_method = Projector(reference_config.method_params, reference_config)
    reference = TRACK.run(reference_config, method=reference_method)

    killed_config = tiny(tmp_path, "test_projector", "name=killed")
    killed = Projector(killed_config.method_params, killed_config)
    killed.die_at_epoch = 2
    with pytest.raises(Killed):
        TRACK.run(killed_config, method=killed)
    killed_dir = tmp_path / "classify" / "test_projector" / "killed"
    assert json.loads((killed_dir / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert not (killed_dir / "summary.json").exists()

    fresh = Projector(killed_config.method_params, killed_config)
    resumed = TRACK.run(killed_config, resume_dir=killed_dir, method=fresh)

    assert len(fresh.setup_calls) == 1
    assert fresh.steps == reference_method.steps == 3 * STEPS_PER_EPOCH  # method state restored
    for key in ("val_top1", "val_top5", "val_loss"):
        assert resumed[key] == reference[key]
    ref_w = checkpoint_weights(Path(reference["run_dir"]))
    res_w = checkpoint_weights(killed_dir)
    assert ref_w.keys() == res_w.keys()
    assert {"method.projector.weight", "method.projector.bias"} <= ref_w.keys()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w), \
        [k for k in ref_w if not torch.equal(ref_w[k], res_w[k])]
    for k, v in reference_method.trainable["projector"].state_dict().items():
        assert torch.equal(fresh.trainable["projector"].state_dict()[k], v)
    lines = (killed_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_multi_view_method_receives_a_list_of_views(tmp_path):
    config = tiny(tmp_path, "test_two_views", "name=views", "train.epochs=2")
    assert config.data.augment == "crop-flip"
    method = TwoViews(config.method_params, config)
    summary = TRACK.run(config, method=method)

    assert len(method.received) == 2 * STEPS_PER_EPOCH
    for images, labels in method.received:
        assert isinstance(images, list) and len(images) == 2
        assert all(isinstance(view, torch.Tensor) for view in images)
        assert all(view.shape == (16, 3, 16, 16) for view in images)
        assert labels.shape == (16,)
        assert not torch.equal(images[0], images[1])  # independently augmented
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    assert 0 <= summary["val_top1"] <= 100


def test_method_without_modules_checkpoints_only_the_model(tmp_path):
    config = tiny(tmp_path, "test_plain", "name=plain", "train.epochs=1")
    method = Plain(config.method_params, config)
    summary = TRACK.run(config, method=method)
    assert len(method.trainable) == 0 and len(method.frozen) == 0
    weights = checkpoint_weights(Path(summary["run_dir"]))
    assert weights and not any(k.startswith("method.") for k in weights)
    model = create("convnet_d3", CLASSES, img_size=16)
    assert weights.keys() == model.state_dict().keys()
    # and it trains exactly as ERM (the same cross-entropy) does
    erm = TRACK.run(tiny(tmp_path, "erm", "name=erm", "train.epochs=1"))
    erm_weights = checkpoint_weights(Path(erm["run_dir"]))
    assert erm_weights.keys() == weights.keys()
    assert all(torch.equal(erm_weights[k], weights[k]) for k in weights)
    assert erm["val_loss"] == summary["val_loss"]


def test_registered_test_methods_are_found_and_removed_afterwards():
    from hundred.registry import get_method

    assert get_method("classify", "test_projector") is Projector
    assert Projector.track == "classify" and Projector.name == "test_projector"


class Tracker(ClassifyMethod):
    """Cross-entropy plus a term pulling a trainable projector of the logits towards a
    *stateful* copy of it (``add_state``) that follows it by an average after every step and
    counts the steps in a buffer, as a momentum encoder and a queue do."""

    def __init__(self, params=None, config=None):
        super().__init__(params, config)
        self.modes: list[bool] = []
        self.die_at_epoch: int | None = None

    def setup(self, model, ctx):
        if "projector" not in self.trainable:
            self.add_trainable("projector", nn.Linear(CLASSES, 4))
            average = copy.deepcopy(self.trainable["projector"])
            average.register_buffer("updates", torch.zeros((), dtype=torch.long))
            self.add_state("average", average)

    def on_epoch_start(self, epoch):
        if epoch == self.die_at_epoch:
            raise Killed

    def loss(self, model, images, labels):
        self.modes.append(self.stateful["average"].training)
        logits = model(images)
        pull = F.mse_loss(self.trainable["projector"](logits), self.stateful["average"](logits))
        return F.cross_entropy(logits, labels) + 0.1 * pull

    @torch.no_grad()
    def after_optimizer_step(self, model):
        average, projector = self.stateful["average"], self.trainable["projector"]
        for mine, theirs in zip(average.parameters(), projector.parameters()):
            mine.mul_(0.5).add_(theirs, alpha=0.5)
        average.updates += 1


NAMES["test_tracker"] = Tracker


def test_state_modules_are_checkpointed_restored_and_not_optimised(tmp_path):
    from hundred.errors import HundredError

    # (a) out of the optimiser, without gradients, in train mode during training
    config = tiny(tmp_path, "test_tracker")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=32).astype(np.int64)
    loader = BatchLoader((images, labels), batch_size=16, shuffle=True, drop_last=True,
                         augment="crop-flip", device="cpu")
    method = Tracker(config.method_params, config)
    trainer = Trainer(config, create("convnet_d3", CLASSES, img_size=16), method, loader, None,
                      torch.device("cpu"), run_dir=None)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    average = method.stateful["average"]
    assert not any(id(p) in optimised for p in average.parameters())
    assert all(id(p) in optimised for p in method.trainable["projector"].parameters())
    assert not any(p.requires_grad for p in average.parameters())
    before = {k: v.clone() for k, v in average.state_dict().items()}
    trainer.fit()
    assert method.modes == [True] * (3 * STEPS_PER_EPOCH)
    assert all(p.grad is None for p in average.parameters())
    assert int(average.updates) == 3 * STEPS_PER_EPOCH
    assert not torch.equal(average.weight, before["weight"])  # updated by the method itself
    with pytest.raises(HundredError, match="already registered"):
        method.add_trainable("average", nn.Linear(1, 1))
    with pytest.raises(HundredError, match="already registered"):
        method.add_state("projector", nn.Linear(1, 1))

    # (b) checkpointed under method.<name>.*, restored on resume: bit-identical to a run
    # that was never interrupted
    reference_config = tiny(tmp_path, "test_tracker", "name=reference")
    reference = Tracker(reference_config.method_params, reference_config)
    TRACK.run(reference_config, method=reference)
    weights = checkpoint_weights(tmp_path / "classify" / "test_tracker" / "reference")
    assert {"method.average.weight", "method.average.bias", "method.average.updates"} <= \
        weights.keys()
    for k, v in reference.stateful["average"].state_dict().items():
        assert torch.equal(weights[f"method.average.{k}"], v)

    killed_config = tiny(tmp_path, "test_tracker", "name=killed")
    killed = Tracker(killed_config.method_params, killed_config)
    killed.die_at_epoch = 2
    with pytest.raises(Killed):
        TRACK.run(killed_config, method=killed)
    killed_dir = tmp_path / "classify" / "test_tracker" / "killed"
    fresh = Tracker(killed_config.method_params, killed_config)
    TRACK.run(killed_config, resume_dir=killed_dir, method=fresh)
    assert int(fresh.stateful["average"].updates) == 3 * STEPS_PER_EPOCH  # not 1 epoch's
    for k, v in reference.stateful["average"].state_dict().items():
        assert torch.equal(fresh.stateful["average"].state_dict()[k], v), k
    resumed = checkpoint_weights(killed_dir)
    assert resumed.keys() == weights.keys()
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)
