"""The federated track, tiny: FedLoGe's simplex ETF and its sparse version (SSE-C), the
long-tailed Dirichlet partition, Flower's FedAvg aggregation through the in-process grid,
local heads that stay on their clients, runs end to end, and bad input that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import load_file

from hundred.cli import main
from hundred.errors import HundredError
from hundred.tracks.federated.flower import LocalGrid, server_identity
from hundred.tracks.federated.methods.fedloge import _nearest_angle, simplex_etf, sparse_etf
from hundred.tracks.federated.partition import (dirichlet_split, long_tailed_counts,
                                                make_partition, shot_groups)

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SETTINGS = [TINY, "model.name=resnet20", "model.options={width: 4}", "data.batch_size=8",
            "quiet=true", "federated.clients=2", "federated.rounds=1",
            "federated.local_epochs=1", "federated.imbalance=4", "federated.fraction=1.0",
            "method_params.etf_steps=20"]


def cli(method: str, root: Path, *extra: str, settings: list[str] = SETTINGS) -> int:
    chosen = [*settings, *extra]
    if method == "fedavg":  # FedLoGe's own parameters are not FedAvg's
        chosen = [setting for setting in chosen if not setting.startswith("method_params.")]
    sets = [part for setting in chosen for part in ("--set", setting)]
    return main(["run", "federated", method, "--device", "cpu", "--set", f"root={root}",
                 *sets])


def only_run(root: Path, method: str) -> Path:
    (run_dir,) = (root / "federated" / method).iterdir()
    return run_dir


# -- SSE-C ------------------------------------------------------------------------------------
def test_the_simplex_etf_is_unit_norm_and_equiangular():
    classes = 6
    etf = simplex_etf(16, classes, torch.Generator().manual_seed(0)).double()
    assert torch.allclose(etf.norm(dim=1), torch.ones(classes, dtype=torch.float64), atol=1e-6)
    cosines = etf @ etf.T
    off = cosines[~torch.eye(classes, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (classes - 1)), atol=1e-6)
    with pytest.raises(HundredError, match="at least 6 dimensions"):
        simplex_etf(4, classes, torch.Generator())


def test_the_sparse_etf_keeps_its_zeros_and_is_rebalanced():
    etf = simplex_etf(32, 8, torch.Generator().manual_seed(1))
    masked = sparse_etf(etf, 0.6, 1.0, 0, 1e-2, torch.Generator().manual_seed(2))
    tuned = sparse_etf(etf, 0.6, 1.0, 120, 3e-2, torch.Generator().manual_seed(2))
    zeros = masked == 0
    assert int(zeros.sum()) == round(0.6 * etf.numel())  # exactly the share beta is zero
    assert torch.equal(tuned == 0, zeros)  # the same entries, kept at zero by the optimisation
    assert torch.equal(masked[~zeros], etf[~zeros])  # the others start as the ETF's
    # re-balanced: equal column norms at the target, nearest neighbours pushed further apart
    assert torch.allclose(tuned.norm(dim=1), torch.ones(8), atol=0.05)
    assert masked.norm(dim=1).std() > tuned.norm(dim=1).std()
    assert _nearest_angle(tuned).mean() > _nearest_angle(masked).mean()


# -- partition ------------------------------------------------------------------------------
def test_the_long_tailed_profile_has_the_requested_imbalance_factor():
    counts = long_tailed_counts(500, 100, 100.0)
    assert counts[0] == 500 and counts[-1] == 5 and counts[0] / counts[-1] == 100
    assert np.all(np.diff(counts) <= 0)
    groups = shot_groups(counts)  # CIFAR-100-LT: many > 100, few < 20 (of 500)
    assert counts[groups["many"]].min() > 100 and counts[groups["few"]].max() < 20
    assert sum(len(g) for g in groups.values()) == 100


def test_every_kept_sample_is_on_exactly_one_client_and_the_split_is_seeded():
    labels = np.repeat(np.arange(10), 50)
    val = np.repeat(np.arange(10), 10)
    part = make_partition(labels, val, 10, clients=5, alpha=0.5, imbalance=10.0, seed=3)
    assert part.train_counts[0] / part.train_counts[-1] == 10
    together = np.concatenate(part.clients)
    assert len(together) == len(np.unique(together)) == part.train_counts.sum()
    assert np.array_equal(np.bincount(labels[together], minlength=10), part.train_counts)
    again = make_partition(labels, val, 10, clients=5, alpha=0.5, imbalance=10.0, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(part.clients, again.clients))
    other = make_partition(labels, val, 10, clients=5, alpha=0.5, imbalance=10.0, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(part.clients, other.clients))
    for counts, test in zip(part.client_counts, part.local_tests):  # local test ~ local train
        seen = np.bincount(val[test], minlength=10)
        assert np.all((seen > 0) <= (counts > 0))
        assert seen[np.argmax(counts)] == 10


@pytest.mark.parametrize("call, message", [
    (lambda: dirichlet_split(np.zeros(10, int), np.arange(10), 2, 0.0, 0), "alpha"),
    (lambda: dirichlet_split(np.zeros(10, int), np.arange(10), 11, 0.5, 0), "11 clients"),
    (lambda: long_tailed_counts(10, 3, 0.5), "imbalance"),
])
def test_bad_partitions_are_refused(call, message):
    with pytest.raises(HundredError, match=message):
        call()


# -- Flower aggregation -----------------------------------------------------------------------
def test_flower_fedavg_through_the_grid_is_the_sample_weighted_mean():
    sizes = {0: 3, 1: 1, 2: 6}
    sent = {c: {"w": torch.randn(4, 2), "b": torch.randn(2)} for c in sizes}
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        client = int(context.node_config["partition-id"])
        received = message.content["arrays"].to_torch_state_dict()
        assert set(received) == {"w", "b"}
        return Message(RecordDict({"arrays": ArrayRecord(torch_state_dict=sent[client]),
                                   "metrics": MetricRecord({"num-examples": sizes[client]})}),
                       reply_to=message)

    grid = LocalGrid(app, 3)
    with server_identity():
        result = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3).start(
            grid, ArrayRecord(torch_state_dict={"w": torch.zeros(4, 2), "b": torch.zeros(2)}),
            num_rounds=1, train_config=ConfigRecord())
    averaged = result.arrays.to_torch_state_dict()
    for key in ("w", "b"):
        expected = sum(sizes[c] * sent[c][key] for c in sizes) / sum(sizes.values())
        assert torch.allclose(averaged[key], expected, atol=1e-6)


# -- runs end to end --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fedloge_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fedloge")
    assert cli("fedloge", root) == 0
    return only_run(root, "fedloge")


def test_a_fedloge_run_writes_its_summary(fedloge_run):
    summary = json.loads((fedloge_run / "summary.json").read_text())
    assert summary["track"] == "federated" and summary["method"] == "fedloge"
    for key in ("generic_top1", "personal_top1"):
        assert 0 <= summary[key] <= 100
    assert summary["measured_imbalance"] == 4.0 and len(summary["client_sizes"]) == 2
    assert sum(summary["client_sizes"]) == summary["lt_train_images"]
    assert summary["engine"]["strategy"] == "flwr.serverapp.strategy.FedAvg"
    (record,) = [json.loads(line) for line in (fedloge_run / "metrics.jsonl").open()]
    assert record["round"] == 1 and record["sampled_clients"] == [0, 1]


def test_local_heads_stay_on_their_clients(fedloge_run):
    weights = load_file(next((fedloge_run / "checkpoints").glob("*.safetensors")))
    assert not any(k.startswith("method.") for k in weights)  # nothing else is shared
    first, second = weights["client0.local_head.weight"], weights["client1.local_head.weight"]
    assert not torch.allclose(first, second)  # trained apart, never averaged
    assert not torch.allclose(weights["head.weight"], first)  # the averaged global head


FOUR_CLIENTS = ("federated.clients=4", "federated.fraction=0.5", "federated.rounds=2")


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fedavg")
    assert cli("fedavg", root, *FOUR_CLIENTS) == 0
    return only_run(root, "fedavg")


def test_fedavg_samples_a_fraction_of_the_clients_each_round(fedavg_run):
    records = [json.loads(line) for line in (fedavg_run / "metrics.jsonl").open()]
    assert [len(r["sampled_clients"]) for r in records] == [2, 2]
    summary = json.loads((fedavg_run / "summary.json").read_text())
    assert summary["rounds"] == 2 and 0 <= summary["generic_top1"] <= 100


@pytest.mark.slow  # a second full run
def test_the_sampled_clients_do_not_depend_on_how_often_clients_evaluate(fedavg_run, tmp_path):
    assert cli("fedavg", tmp_path, *FOUR_CLIENTS, "federated.eval_every=2") == 0
    (sparse,) = [json.loads(line) for line in
                 (only_run(tmp_path, "fedavg") / "metrics.jsonl").open()]
    every = [json.loads(line) for line in (fedavg_run / "metrics.jsonl").open()][-1]
    assert sparse["sampled_clients"] == every["sampled_clients"]
    assert sparse["generic_top1"] == every["generic_top1"]


@pytest.mark.parametrize("setting", ["federated.alpha=0", "federated.imbalance=0.5",
                                     "federated.clients=500"])
def test_bad_input_writes_nothing(tmp_path, setting):
    assert cli("fedloge", tmp_path, setting) != 0
    assert not (tmp_path / "federated").exists()


def test_a_backbone_narrower_than_the_classes_is_refused_before_writing(tmp_path):
    six = TINY.replace("classes: 4", "classes: 6")  # 6 classes, 4-d features (width 1)
    assert cli("fedloge", tmp_path, six, "model.options={width: 1}") != 0
    assert not (tmp_path / "federated").exists()


@pytest.mark.slow  # a second full run
def test_a_run_is_a_function_of_its_seed(fedloge_run, tmp_path):
    assert cli("fedloge", tmp_path) == 0
    again = only_run(tmp_path, "fedloge")
    first = load_file(next((fedloge_run / "checkpoints").glob("*.safetensors")))
    second = load_file(next((again / "checkpoints").glob("*.safetensors")))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow  # Flower's Ray simulation starts several processes (~40 s on 2 cores)
def test_flowers_ray_simulation_gives_the_in_process_result(fedloge_run, tmp_path):
    pytest.importorskip("ray")
    assert cli("fedloge", tmp_path, "federated.engine=ray") == 0
    ray_run = json.loads((only_run(tmp_path, "fedloge") / "summary.json").read_text())
    local = json.loads((fedloge_run / "summary.json").read_text())
    assert ray_run["engine"]["runtime"] == "ray"
    for key in ("generic_top1", "personal_top1"):  # every client sampled: the same training
        assert ray_run[key] == pytest.approx(local[key])
