"""Test-time adaptation in the robust track: the 15 corruptions work on small uint8 images
and are reproducible; `hundred data corrupt` packs the domains (and refuses bad input,
writing nothing); streams are pure functions of the seed; TENT changes only the
normalisation layers' affine parameters; EATA gives high-entropy samples no weight and no
gradient; ReservoirTTA opens a specialist for a new style and routes a recurring style back
to its own; `hundred run robust tent --init` and `hundred check robust --methods
tent,reservoir_tta` run end to end."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hundred.cli import main
from hundred.config import build_config
from hundred.data.augment import build_augment
from hundred.data.pack import pack
from hundred.errors import HundredError
from hundred.models import create
from hundred.registry import get_method
from hundred.tracks.robust.corruptions import (CORRUPTIONS, Domain, corrupt_images,
                                               corrupt_packed)
from hundred.tracks.robust.tta import (TTAContext, configure_norm_adaptation,
                                       domain_sequence, stream_schedule)

RES = 16
OPTIONS = {"classes": 4, "train_per_class": 16, "val_per_class": 8, "res": RES}
MODEL = ["--set", "model.name=resnet20", "--set", "model.options={width: 4}"]
STREAM = ["--set", "robust.tta.corruptions=[gaussian_noise,fog]", "--set",
          "robust.tta.cycles=2", "--set", "robust.tta.batch_size=8"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "synth"
    pack("synth100", out=out, res=RES, workers=1, quiet=True, options=OPTIONS)
    return out


@pytest.fixture(scope="module")
def erm_run(tmp_path_factory, packed) -> Path:
    """A finished robust/erm run on the packed data: the source model."""
    root = tmp_path_factory.mktemp("erm")
    assert main(["run", "robust", "erm", "--device", "cpu", "--set",
                 f"data.source={packed}", *MODEL, "--set", "data.batch_size=16",
                 "--set", "train.epochs=1", "--set", "quiet=true", "--set", f"root={root}",
                 "--set", "name=erm"]) == 0
    return root / "robust" / "erm" / "erm"


def tta_config(method: str, *overrides: str):
    return build_config(overrides=["track=robust", f"method={method}", "train.device=cpu",
                                   *overrides])


# ------------------------------------------------------------------------ corruptions


@pytest.mark.parametrize("size", [16, 32])
def test_all_15_corruptions_run_on_small_uint8_images_reproducibly(size):
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    state = np.random.get_state()
    assert len(CORRUPTIONS) == 15
    for name in CORRUPTIONS:
        domain = Domain(name, 5)
        out = corrupt_images(images, domain, seed=3)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert not np.array_equal(out, images), name
        assert np.array_equal(out, corrupt_images(images, domain, seed=3)), name
    # the package's global random state is restored around every image
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:2], state[1:2]))


def test_the_noise_depends_on_the_seed():
    images = np.full((2, RES, RES, 3), 128, dtype=np.uint8)
    a = corrupt_images(images, Domain("impulse_noise", 3), seed=0)
    b = corrupt_images(images, Domain("impulse_noise", 3), seed=1)
    assert not np.array_equal(a, b)


def test_hundred_data_corrupt_packs_every_domain_deterministically(packed, tmp_path):
    for name in ("a", "b"):
        assert main(["data", "corrupt", str(packed), "--out", str(tmp_path / name),
                     "--corruptions", "fog,snow", "--severities", "1-2", "--seed", "7"]) == 0
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    record = meta["corruption"]
    assert [(d["corruption"], d["severity"]) for d in record["domains"]] == [
        ("fog", 1), ("fog", 2), ("snow", 1), ("snow", 2)]
    n = record["images_per_domain"]
    domains = np.load(tmp_path / "a" / "val_domain.npy")
    assert np.array_equal(domains, np.repeat(np.arange(4), n))
    images = np.load(tmp_path / "a" / "val_images.npy")
    assert np.array_equal(images, np.load(tmp_path / "b" / "val_images.npy"))
    clean = np.load(packed / "val_images.npy")
    assert np.array_equal(images[n:2 * n], corrupt_images(clean, Domain("fog", 2), 7))
    assert np.array_equal(np.load(tmp_path / "a" / "train_images.npy"),
                          np.load(packed / "train_images.npy"))


@pytest.mark.parametrize("flags, message", [
    (["--corruptions", "fogg"], "unknown corruption"),
    (["--severities", "0"], "severities"),
    (["--severities", "6"], "severities"),
    (["--severities", "1-6"], "severities"),
])
def test_bad_corrupt_requests_write_nothing(packed, tmp_path, capsys, flags, message):
    with pytest.raises(HundredError, match=message):
        corrupt_packed(packed, tmp_path / "c", *_parsed(flags))
    assert main(["data", "corrupt", str(packed), "--out", str(tmp_path / "c"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _parsed(flags: list[str]) -> tuple[str, str]:
    values = {"--corruptions": "all", "--severities": "5"}
    values[flags[0]] = flags[1]
    return values["--corruptions"], values["--severities"]


# ----------------------------------------------------------------------------- streams


def test_a_stream_is_a_pure_function_of_its_seed():
    tta = tta_config("tent", "robust.tta.corruptions=[fog,snow]", "robust.tta.cycles=3",
                     "robust.tta.severities=[3,5]").robust.tta
    visits = stream_schedule(tta, 20)
    again = stream_schedule(tta, 20)
    assert [v.domain.name for v in visits[:4]] == ["fog-3", "fog-5", "snow-3", "snow-5"]
    assert len(visits) == 3 * 4
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(visits, again))
    assert all(sorted(v.rows) == list(range(20)) for v in visits)
    other = stream_schedule(tta.model_copy(update={"seed": 1}), 20)
    assert any(not np.array_equal(a.rows, b.rows) for a, b in zip(visits, other))
    default = tta_config("tent").robust.tta
    assert default.corruptions == list(CORRUPTIONS) and default.label() == (
        "corruptions: recurring, 15 types sev 5, 10 cycles")
    gradual = tta.model_copy(update={"schedule": "gradual"})
    assert [d.severity for d in domain_sequence(gradual)] == [1, 2, 3, 4, 5, 4, 3, 2, 1] * 2


# ----------------------------------------------------------------------- the methods


def tiny_context(config, images: np.ndarray) -> TTAContext:
    """A context whose train split is ``images`` (what prepare/calibration read)."""
    split = types.SimpleNamespace(images=images, labels=np.zeros(len(images), np.int64))
    dataset = types.SimpleNamespace(arrays=lambda name: split)
    normalise = build_augment("none", images.shape[1], config.data.mean, config.data.std,
                              train=False)
    return TTAContext(config, torch.device("cpu"), dataset, normalise)


def test_tent_updates_only_the_norm_layers_affine_parameters():
    torch.manual_seed(0)
    config = tta_config("tent", "robust.tta.optimizer=adam", "robust.tta.steps=2")
    model = create("resnet20", 4, img_size=RES, width=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = get_method("robust", "tent")(None, config)
    method.start(model, tiny_context(config, np.zeros((4, RES, RES, 3), np.uint8)))
    method.adapt(torch.randn(8, 3, RES, RES))
    adapted = dict(method.learner.model.named_parameters())
    affine = {n for n, m in method.learner.model.named_modules()
              if isinstance(m, nn.BatchNorm2d) for n in (f"{n}.weight", f"{n}.bias")}
    assert affine and all(not torch.equal(adapted[n], before[n]) for n in affine)
    assert all(torch.equal(adapted[n], before[n]) for n in before if n not in affine)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the source


def test_eata_gives_samples_above_the_entropy_margin_no_weight_and_no_gradient():
    config = tta_config("eata", "robust.tta.optimizer=sgd", "robust.tta.lr=0.1")
    model = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[2.0, -2, 0, 0], [-2, 2, 0, 0], [0, 0, 0, 0]]))
    method = get_method("robust", "eata")(None, config)
    method.fisher, method.anchor = {}, {}
    learner = method.make_learner(model, tiny_context(config, np.zeros((1, 8, 8, 3), np.uint8)))
    # rows 0, 2: confident (entropy < 0.4 ln 3); rows 1, 3: uniform (entropy ln 3)
    images = torch.tensor([[1.0, -1, 0, 0], [0, 0, 1, -1], [-1, 1, 0, 0], [0, 0, -2, 2]],
                          requires_grad=True)
    from hundred.tracks.robust.methods.eata import eata_weights

    weights, selected = eata_weights(model(images), None, 0.4 * np.log(3), 0.05)
    assert selected.tolist() == [True, False, True, False]
    assert weights[1] == 0 and weights[3] == 0 and (weights[[0, 2]] > 1).all()
    learner.step(images)
    assert (images.grad[[1, 3]] == 0).all() and (images.grad[[0, 2]] != 0).any()


def _clean_images(count: int, rng: np.random.Generator) -> np.ndarray:
    """Images of varied colour and texture: the spread the style dimensions are scaled by."""
    base = rng.integers(40, 215, (count, 1, 1, 3))
    noise = rng.normal(0, 1, (count, RES, RES, 3)) * rng.uniform(0, 40, (count, 1, 1, 1))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _style_batch(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Dark noisy images or bright flat ones, 16 per batch."""
    if kind == "dark-noise":
        return rng.integers(0, 90, (16, RES, RES, 3), dtype=np.uint8)
    base = rng.integers(200, 230, (16, 1, 1, 3))
    return np.broadcast_to(base, (16, RES, RES, 3)).astype(np.uint8)


@pytest.mark.parametrize("base", ["tent", "eata"])
def test_reservoir_spawns_for_a_new_style_and_reuses_it_when_the_domain_recurs(base):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = tta_config("reservoir_tta")
    model = create("resnet20", 4, img_size=RES, width=4).eval()
    method = get_method("robust", "reservoir_tta")(
        {"base": base, "calibration_images": 32,
         "base_params": {"fisher_size": 16} if base == "eata" else {}}, config)
    ctx = tiny_context(config, _clean_images(32, rng))
    method.start(model, ctx)
    kinds = ["dark-noise", "bright-flat"] * 3
    for kind in kinds:
        method.adapt(ctx.normalise(torch.from_numpy(_style_batch(kind, rng))))
    assert len(method.learners) == 2  # no new specialist after the first cycle
    assert method.routes == [0, 1, 0, 1, 0, 1]
    assert method.record()["specialists"] == 2


def test_a_full_reservoir_routes_new_styles_to_the_nearest_specialist():
    rng = np.random.default_rng(1)
    config = tta_config("reservoir_tta")
    model = create("resnet20", 4, img_size=RES, width=4).eval()
    method = get_method("robust", "reservoir_tta")({"base": "tent", "max_models": 1,
                                                    "calibration_images": 16}, config)
    ctx = tiny_context(config, _clean_images(16, rng))
    method.start(model, ctx)
    for kind in ["dark-noise", "bright-flat", "dark-noise"]:
        method.adapt(ctx.normalise(torch.from_numpy(_style_batch(kind, rng))))
    assert len(method.learners) == 1 and method.routes == [0, 0, 0]


def test_norm_adaptation_needs_affine_norm_layers():
    with pytest.raises(HundredError, match="normalisation"):
        configure_norm_adaptation(nn.Sequential(nn.Linear(2, 2)))


# -------------------------------------------------------------------------- end to end


def _run(method: str, root: Path, packed: Path, erm_run: Path, *extra: str) -> int:
    return main(["run", "robust", method, "--device", "cpu", "--set", f"data.source={packed}",
                 *MODEL, "--init", str(erm_run), *STREAM, "--set", "quiet=true",
                 "--set", f"root={root}", "--set", f"name={method}", *extra])


def test_run_robust_tent_writes_the_stream_summary(tmp_path, packed, erm_run):
    assert _run("tent", tmp_path, packed, erm_run, "--set", "robust.tta.optimizer=adam") == 0
    run_dir = tmp_path / "robust" / "tent" / "tent"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= summary["robust_top1"] <= 100 and 0 <= summary["val_top1"] <= 100
    assert summary["threat_model"] == "corruptions: recurring, 2 types sev 5, 2 cycles"
    assert summary["eval_attack"] == "tent"
    assert summary["tta_domains"] == ["gaussian_noise-5", "fog-5"]
    assert np.asarray(summary["tta_domain_top1"]).shape == (2, 2)
    assert summary["robust_top1"] == pytest.approx(np.mean(summary["tta_cycle_top1"]), abs=1e-3)
    assert (run_dir / "tta_stream.png").is_file()


def test_the_source_baseline_is_the_same_every_cycle_and_a_pack_gives_the_same_stream(
        tmp_path, packed, erm_run):
    corrupted = tmp_path / "corrupted"
    assert main(["data", "corrupt", str(packed), "--out", str(corrupted), "--corruptions",
                 "gaussian_noise,fog", "--seed", "0"]) == 0
    assert _run("tta_source", tmp_path / "fly", packed, erm_run) == 0
    assert _run("tta_source", tmp_path / "pack", packed, erm_run, "--set",
                f"robust.tta.pack={corrupted}") == 0
    fly, from_pack = (json.loads((tmp_path / where / "robust/tta_source/tta_source"
                                  / "summary.json").read_text()) for where in ("fly", "pack"))
    first, second = fly["tta_domain_top1"]
    assert first == second
    assert fly["tta_domain_top1"] == from_pack["tta_domain_top1"]


def test_tta_refuses_bad_input_and_writes_nothing(tmp_path, packed, erm_run, capsys):
    assert main(["run", "robust", "tent", "--device", "cpu", "--set",
                 f"data.source={packed}", *MODEL, "--set", f"root={tmp_path}"]) == 2
    assert "--init" in capsys.readouterr().err
    for bad in ("robust.tta.severities=[6]", "robust.tta.severities=[0]",
                "robust.tta.corruptions=[fogg]"):
        assert _run("tent", tmp_path, packed, erm_run, "--set", bad) == 2
    assert _run("tent", tmp_path, packed, erm_run, "--set",
                f"robust.tta.pack={packed}") == 2
    assert "not a corrupted pack" in capsys.readouterr().err
    assert not (tmp_path / "robust").exists()


@pytest.mark.slow
def test_check_robust_runs_tent_and_reservoir_tta_from_a_trained_source(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("train.epochs: null\ndata.batch_size: null\noptim.lr: [0.05]\n")
    out = tmp_path / "check"
    assert main(["check", "robust", "--methods", "tent,reservoir_tta", "--trials", "1",
                 "--seeds", "1", "--tune-data", "synth100[0-3]", "--eval-data",
                 "synth100[4-7]", "--space", str(space), "--out", str(out), "--device", "cpu",
                 "--set", "data.options={classes: 8, train_per_class: 16, val_per_class: 4, "
                 f"res: {RES}}}", *MODEL, "--set", "train.epochs=1",
                 "--set", "data.batch_size=16", *STREAM]) == 0
    inits = sorted((out / "init/robust/erm").glob("init-*/summary.json"))
    assert len(inits) == 2
    for method in ("tent", "reservoir_tta"):
        evaluated = json.loads(next((out / f"robust/{method}").glob("eval-*/summary.json"))
                               .read_text())
        assert evaluated["init"] in {str(p.parent) for p in inits}
        assert 0 <= evaluated["robust_top1"] <= 100


def test_tuning_a_tta_method_searches_its_online_optimiser_not_the_training_grid():
    from hundred.protocol.space import space_for
    from hundred.registry import get_method

    tent = space_for(get_method("robust", "tent"))
    assert "robust.tta.lr" in tent and "optim.lr" not in tent and "train.epochs" not in tent
    assert "method_params.threshold" in space_for(get_method("robust", "reservoir_tta"))
    assert "optim.lr" in space_for(get_method("robust", "at"))  # training methods keep it
