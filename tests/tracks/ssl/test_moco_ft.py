"""MoCo with Feature Transformation (Zhu et al., ICCV 2021) at tiny scale: the identity at
lambda = 1, harder positives under extrapolation, interpolated negatives, the per-epoch score
histograms in metrics.jsonl and the report's figure of them, and exact resume."""

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
from hundred.registry import get_track
from hundred.tracks.ssl.methods.moco import MoCo
from hundred.tracks.ssl.methods.moco_ft import (MoCoFT, extrapolate_positives,
                                                interpolate_negatives)

PARAMS = "{queue_size: 32, proj_hidden_dim: 32, proj_output_dim: 16}"
IMAGES, BATCH, QUEUE = 4 * 8, 16, 32  # tiny(): 4 classes x 8 train images, batch 16


def unit(rows: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)),
                       dim=1)


def tiny(root: Path, method: str, *extra: str):
    return build_config(overrides=[
        "track=ssl", f"method={method}", f"method_params={PARAMS}", "model.name=resnet20",
        "model.options={width: 4}", "train.device=cpu", "quiet=true",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 8}",
        f"data.batch_size={BATCH}", "train.epochs=2", "ssl.probe_epochs=2",
        "ssl.augment=simclr-small", f"root={root}", *extra])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- the transformation ------------------------------------------------------------------------
def test_lambda_one_leaves_positives_and_negatives_unchanged():
    queries, keys, negatives = unit(8, seed=0), unit(8, seed=1), unit(QUEUE, seed=2)
    q, k = extrapolate_positives(queries, keys, 1.0)
    torch.testing.assert_close(q, queries)
    torch.testing.assert_close(k, keys)
    n = interpolate_negatives(negatives, torch.ones(QUEUE, 1), torch.randperm(QUEUE))
    torch.testing.assert_close(n, negatives)


@pytest.mark.parametrize("lam", [1.1, 1.5, 2.0])
def test_extrapolation_makes_harder_positives(lam):
    queries, keys = unit(64, seed=0), unit(64, seed=1)
    before = (queries * keys).sum(1)
    q, k = extrapolate_positives(queries, keys, lam)
    after = (q * k).sum(1)
    assert (after < before).all()  # the dot product that enters the logits...
    cosine = F.cosine_similarity(q, k, dim=1)
    assert (cosine < before).all()  # ...and the angle: re-normalising keeps them harder
    # the closed form of the module docstring: s + 2 lam (1 - lam) (1 - s)
    torch.testing.assert_close(after, before + 2 * lam * (1 - lam) * (1 - before))


def test_interpolated_negatives_are_mixtures_on_the_unit_sphere_after_normalisation():
    negatives = unit(QUEUE, seed=3)
    permutation = torch.randperm(QUEUE, generator=torch.Generator().manual_seed(0))
    lam = torch.full((QUEUE, 1), 0.3)
    mixed = interpolate_negatives(negatives, lam, permutation)
    torch.testing.assert_close(mixed, 0.3 * negatives + 0.7 * negatives[permutation])
    assert (mixed.norm(dim=1) <= 1 + 1e-6).all()  # a chord: inside the sphere until
    config = build_config(overrides=["track=ssl", "method=moco_ft"])
    method = MoCoFT({"renormalize": "all", "positive_extrapolation": False}, config)
    _, _, transformed = method.transform(unit(4), unit(4, seed=1), negatives)
    torch.testing.assert_close(transformed.norm(dim=1), torch.ones(QUEUE))  # ...normalised


def built(params: dict, cls=MoCoFT):
    torch.manual_seed(0)
    config = build_config(overrides=["track=ssl", f"method={cls.name}"])
    method = cls({"queue_size": QUEUE, "proj_hidden_dim": 16, "proj_output_dim": 16, **params},
                 config)
    model = create("resnet20", 4, img_size=8, width=4)
    method.setup(model, SetupContext(config, torch.device("cpu"), 2, 2))
    return method


def test_switched_off_it_is_moco_and_switched_on_the_draws_follow_the_global_rng():
    queries, keys, negatives = unit(8, seed=0), unit(8, seed=1), unit(QUEUE, seed=2)
    moco = built({}, MoCo).contrastive_logits(queries, keys, negatives)
    off = built({"positive_extrapolation": False, "negative_interpolation": False})
    torch.testing.assert_close(off.contrastive_logits(queries, keys, negatives), moco)
    method = built({})
    torch.manual_seed(1)
    first = method.contrastive_logits(queries, keys, negatives)
    torch.manual_seed(1)
    again = method.contrastive_logits(queries, keys, negatives)
    torch.manual_seed(2)
    other = method.contrastive_logits(queries, keys, negatives)
    torch.testing.assert_close(first, again)  # the trainer's checkpoint restores this RNG
    assert not torch.allclose(first, other)
    assert (first[:, 0] < moco[:, 0]).all()  # harder positives in the loss


@pytest.mark.parametrize("lambda_per, shapes", [("iteration", [(), ()]),
                                                ("sample", [(8, 1), (QUEUE, 1)]),
                                                ("dimension", [(8, 16), (QUEUE, 16)])])
def test_lambda_per_iteration_sample_or_dimension(lambda_per, shapes):
    method = built({"lambda_per": lambda_per})
    drawn = [method.draw_lambda(2.0, unit(8)), method.draw_lambda(1.6, unit(QUEUE))]
    assert [tuple(lam.shape) for lam in drawn] == shapes
    assert all(((lam > 0) & (lam < 1)).all() for lam in drawn)


# -- end to end: histograms, the report's figure, resume ---------------------------------------
@pytest.fixture(scope="module")
def ft_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moco_ft")
    summary = get_track("ssl").run(tiny(root, "moco_ft", "name=e2e"))
    return Path(summary["run_dir"])


def test_the_run_logs_score_histograms_that_count_every_score(ft_run):
    logged = records(ft_run)
    assert [r["epoch"] for r in logged] == [1, 2]
    for record in logged:  # reset every epoch: each epoch counts its own scores once
        for key, bins in (("score_hist", 50), ("score_hist_transformed", 100)):
            counts = record[key]["counts"]
            assert len(counts["positive"]) == len(counts["negative"]) == bins
            assert sum(counts["positive"]) == IMAGES  # one positive per query
            assert sum(counts["negative"]) == IMAGES * QUEUE  # K negatives per query
        assert record["score_hist"]["range"] == [-1.0, 1.0]


def test_plain_moco_logs_the_scores_too(tmp_path):
    summary = get_track("ssl").run(tiny(tmp_path, "moco", "name=plain", "train.epochs=1",
                                        "ssl.offline_eval=false"))
    (record,) = records(Path(summary["run_dir"]))
    assert sum(record["score_hist"]["counts"]["negative"]) == IMAGES * QUEUE
    assert "score_hist_transformed" not in record


def test_the_report_embeds_the_histogram_figures(ft_run, tmp_path, capsys):
    out = tmp_path / "report"
    main(["report", str(ft_run), "--out", str(out)])
    html = (out / "index.html").read_text()
    markdown = (out / "report.md").read_text()
    for stem in ("scores_", "scores_transformed_"):
        figures = [p.name for p in out.glob(f"{stem}*.png")
                   if stem != "scores_" or "transformed" not in p.name]
        assert len(figures) == 1, stem
        assert f'src="{figures[0]}"' in html and f"]({figures[0]})" in markdown
    assert "epochs 1, 2" in html


class Killed(Exception):
    """Raised to interrupt a run, as a crash would."""


class KillableMoCoFT(MoCoFT):
    die_at_epoch: int | None = None

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.die_at_epoch:
            raise Killed


def latest_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(sorted((run_dir / "checkpoints").glob("*.safetensors"))[-1])


def test_resume_draws_the_same_lambdas_as_an_uninterrupted_run(tmp_path):
    def run(name: str, die_at: int | None = None, resume: bool = False) -> KillableMoCoFT:
        config = tiny(tmp_path, "moco_ft", f"name={name}", "ssl.offline_eval=false")
        method = KillableMoCoFT(config.method_params, config)
        method.die_at_epoch = die_at
        get_track("ssl").run(config, method=method,
                             resume_dir=tmp_path / "ssl" / "moco_ft" / name if resume else None)
        return method

    reference = run("reference")
    with pytest.raises(Killed):
        run("killed", die_at=1)
    resumed = run("killed", resume=True)
    for name in ("queue", "key_encoder"):
        mine, theirs = resumed.stateful[name].state_dict(), reference.stateful[name].state_dict()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], msg=f"{name}.{key}")
    ref_w = latest_weights(tmp_path / "ssl" / "moco_ft" / "reference")
    res_w = latest_weights(tmp_path / "ssl" / "moco_ft" / "killed")
    assert ref_w.keys() == res_w.keys()
    for key in ref_w:
        torch.testing.assert_close(res_w[key], ref_w[key], msg=key)
    # the resumed epoch logged the same histograms as the uninterrupted one
    assert records(tmp_path / "ssl" / "moco_ft" / "killed")[1]["score_hist"] == records(
        tmp_path / "ssl" / "moco_ft" / "reference")[1]["score_hist"]
