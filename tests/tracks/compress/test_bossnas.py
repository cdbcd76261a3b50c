"""BossNAS (Li et al., ICCV 2021), tiny: the EMA teacher gets no gradient and moves only by the
EMA rule; the ensemble target is the mean of the sampled paths' normalised teacher
projections; a path's stand-alone network computes what the supernet restricted to it does and
``create`` rebuilds it from its options; Kendall/Spearman on hand-made rankings; a tiny search
run exports its chosen path, which a stand-alone run trains and the correlation hook reads;
bad input is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import create
from hundred.models.hytra import block_paths, extract
from hundred.tracks.compress.methods.bossnas import (BossNAS, correlate_runs, ensemble_target,
                                                     rank_correlation)

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "model.name=hytra", "data.batch_size=16", "train.epochs=2", "quiet=true",
            "compress.latency_batch=4", "compress.latency_warmup=1",
            "compress.latency_repeats=2"]
SUPERNET = "model.options={supernet: true, width: 8}"


def cli(*settings: str) -> list[str]:
    return ["--device", "cpu", *(part for s in settings for part in ("--set", s))]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def tiny_method():
    config = build_config(overrides=["track=compress", "method=bossnas", "train.device=cpu",
                                     *SETTINGS, SUPERNET,
                                     "method_params={num_paths: 3, proj_hidden_dim: 16, "
                                     "proj_output_dim: 8}"])
    torch.manual_seed(0)
    model = create("hytra", 4, img_size=8, supernet=True, width=8)
    method = BossNAS(config.method_params, config)
    method.setup(model, SetupContext(config, torch.device("cpu"), steps_per_epoch=2, epochs=2))
    return method, model


def test_the_ema_teacher_gets_no_gradient_and_moves_only_by_the_ema_rule():
    method, model = tiny_method()
    teacher = method.stateful["teacher"]
    before = [p.detach().clone() for p in teacher.parameters()]
    views = [torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)]
    loss = method.loss(model, views, torch.randint(0, 4, (8,)))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    # the student did learn something in block 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.backbone.layers[0].parameters())
    params = [*model.parameters(), *method.trainable.parameters()]
    torch.optim.SGD(params, lr=0.5).step()
    tau = method.params.tau_base  # step 0 of the cosine schedule
    student = [*model.backbone.parameters(), *method.trainable["projectors"][0].parameters()]
    old = [*before[:len(list(model.backbone.parameters()))],
           *[p.detach().clone() for p in teacher["projectors"][0].parameters()]]
    method.after_optimizer_step(model)
    updated = [*teacher["backbone"].parameters(), *teacher["projectors"][0].parameters()]
    for new, prev, online in zip(updated, old, student):
        assert torch.allclose(new, tau * prev + (1 - tau) * online.detach(), atol=1e-6)
    assert any(not torch.equal(new, prev) for new, prev in zip(updated, old))
    assert method.step == 1


def test_the_ensemble_target_is_the_mean_of_the_paths_normalised_teacher_projections():
    method, model = tiny_method()
    teacher = method.stateful["teacher"]
    backbone, projector = teacher["backbone"], teacher["projectors"][0]
    backbone.eval(), projector.eval()
    x = torch.randn(5, 3, 8, 8)
    paths = [list(p) for p in block_paths(2)[:3]]
    target = ensemble_target(backbone, projector, 0, paths, backbone.stem(x))
    direct = []
    for path in paths:  # through each path's stand-alone network (different modules, code)
        net = extract(backbone, [*path, "conv_down", "conv"]).eval()
        h = net.layers[1](net.layers[0](net.stem(x))).mean(dim=(2, 3))
        direct.append(F.normalize(projector(h), dim=1))
    assert torch.allclose(target, torch.stack(direct).mean(0), atol=1e-6)
    assert not target.requires_grad


def test_rating_a_block_covers_every_path_and_leaves_the_networks_as_they_were():
    method, model = tiny_method()
    views = [torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)]
    method.loss(model, views, torch.randint(0, 4, (8,)))  # caches the view pair
    modules = [model, method.trainable, method.stateful]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    modes = [m.training for top in modules for m in top.modules()]
    ratings = method.rate_block(model.backbone, 0)
    assert set(ratings) == {",".join(p) for p in block_paths(2)}
    assert all(0.0 <= r <= 8.0 for r in ratings.values())  # two BYOL terms, each in [0, 4]
    for m, state in zip(modules, before):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert modes == [m.training for top in modules for m in top.modules()]
    method.search_block(model.backbone)
    assert method.best[0] == min(ratings, key=ratings.get).split(",") and method.block == 1


def test_the_search_state_survives_a_checkpoint_round_trip(tmp_path):
    method, model = tiny_method()
    method.loss(model, [torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)],
                torch.randint(0, 4, (8,)))
    method.search_block(model.backbone)
    torch.save(method.state_dict(), tmp_path / "state.pt")
    fresh, other = tiny_method()
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert (fresh.block, fresh.best, fresh.ratings) == (method.block, method.best,
                                                         method.ratings)
    assert other.backbone.active == model.backbone.active  # found block 0 + default block 1
    assert fresh.sample_paths(other.backbone) == method.sample_paths(model.backbone)


def test_a_path_is_the_supernet_restricted_to_it_and_create_rebuilds_it():
    torch.manual_seed(0)
    model = create("hytra", 4, img_size=8, supernet=True, width=8).eval()
    x = torch.randn(4, 3, 8, 8)
    for path in (["att", "conv_down", "att_down", "conv"], ["conv_down", "att", "att", "att_down"]):
        child = extract(model.backbone, path).eval()
        assert (child.forward_features(x) - model.backbone.forward_features(x, path)
                ).abs().max() <= 1e-5
        rebuilt = create("hytra", 4, img_size=8, width=8, path=path)
        rebuilt.backbone.load_state_dict(child.state_dict())  # same keys and shapes
        assert torch.allclose(rebuilt.backbone.eval().forward_features(x),
                              child.forward_features(x), atol=1e-6)
    with pytest.raises(HundredError, match="exactly once"):
        create("hytra", 4, path=["conv", "conv", "att_down", "conv_down"])
    with pytest.raises(HundredError, match="unknown layer tokens"):
        create("hytra", 4, path=["mlp", "conv_down", "conv", "conv_down"])


def test_kendall_and_spearman_on_hand_made_rankings():
    perfect = rank_correlation([0.1, 0.2, 0.3, 0.4], [90.0, 80.0, 70.0, 60.0])
    assert perfect["kendall_tau"] == pytest.approx(1.0)
    assert perfect["spearman_rho"] == pytest.approx(1.0)
    reversed_ = rank_correlation([0.1, 0.2, 0.3, 0.4], [60.0, 70.0, 80.0, 90.0])
    assert reversed_["kendall_tau"] == pytest.approx(-1.0)
    # one adjacent swap at each end of 5: 2 of 10 pairs discordant, sum d^2 = 4
    swapped = rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], lower_is_better=False)
    assert swapped["kendall_tau"] == pytest.approx(0.6)
    assert swapped["spearman_rho"] == pytest.approx(1 - 6 * 4 / (5 * 24))
    with pytest.raises(HundredError):
        rank_correlation([1.0], [2.0])


@pytest.mark.slow  # seconds on an idle CPU, minutes on the shared one
def test_a_tiny_search_exports_its_path_and_stand_alone_runs_correlate(tmp_path):
    root = tmp_path / "runs"
    assert main(["run", "compress", "bossnas", *cli(*SETTINGS, SUPERNET, f"root={root}",
                                                    "name=search")]) == 0
    search = root / "compress" / "bossnas" / "search"
    record = summary_of(search)["bossnas"]
    path = record["chosen_path"]
    assert path == [t for part in record["block_paths"] for t in part]
    for block, ratings in zip(record["block_paths"], record["block_ratings"]):
        assert len(ratings) == len(block_paths(2))
        assert ",".join(block) == min(ratings, key=ratings.get)
    exported = summary_of(search)["export"]["model"]
    assert exported["name"] == "hytra" and exported["options"]["path"] == path
    # the exported architecture: --init loads it; stand-alone runs feed the correlation hook
    options = f"model.options={{width: 8, path: {json.dumps(path)}}}"
    assert main(["run", "compress", "dense", *cli(*SETTINGS, options, "train.epochs=1",
                                                  f"root={root}", "name=init"),
                 "--init", str(search)]) == 0
    other = ["conv_down", "conv", "conv_down", "conv"]
    other_options = f"model.options={{width: 8, path: {json.dumps(other)}}}"
    assert main(["run", "compress", "dense", *cli(*SETTINGS, other_options, "train.epochs=1",
                                                  f"root={root}", "name=other")]) == 0
    runs = [root / "compress" / "dense" / "init", root / "compress" / "dense" / "other"]
    result = correlate_runs(search, runs)
    assert result["n"] == 2 and result["paths"] == [path, other]
    assert -1.0 <= result["kendall_tau"] <= 1.0


@pytest.mark.parametrize("bad, match", [
    (["model.options={width: 8}"], "supernet=true"),
    (["model.name=resnet20", "model.options={}"], "model.name=hytra"),
    ([SUPERNET, "train.epochs=1"], "train.epochs"),
    ([SUPERNET, "method_params={augment: nope}"], "nope"),
    (["model.options={supernet: true, blocks: 0}"], "blocks"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, bad, match, capsys):
    assert main(["run", "compress", "bossnas", *cli(*SETTINGS, *bad, f"root={tmp_path}")]) == 2
    assert match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
