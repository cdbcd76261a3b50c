"""EEEA-Net (compress/eeea), tiny: the early-exit initialisation never trains an architecture
at or above beta, the reported front is non-dominated, a genome builds the network whose
parameter count the search recorded, and an exported architecture rebuilds and loads as a
plain model; a run writes its summary, records and plot; bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hundred.cli import main
from hundred.config import build_config
from hundred.engine.cost import count_parameters
from hundred.engine.run import load_data
from hundred.errors import HundredError
from hundred.models import create
from hundred.models.cells import genome_bounds, random_genome
from hundred.tracks.compress.methods.eeea import EEEA, build

TINY = "data.options={classes: 4, train_per_class: 16, val_per_class: 8, res: 8}"
SPACE = {"channels": 4, "layers": 3, "nodes": 2, "population": 4, "generations": 2,
         "proxy_steps": 1, "proxy_batch": 16}
SETTINGS = [TINY, "data.batch_size=16", "train.epochs=1", "quiet=true",
            "compress.latency_batch=4", "compress.latency_warmup=1",
            "compress.latency_repeats=2",
            *(f"method_params.{key}={value}" for key, value in SPACE.items())]
COMMON = ["--device", "cpu", *(part for setting in SETTINGS for part in ("--set", setting))]


def median_params(method: EEEA, config, dataset) -> float:
    """A beta (millions) that about half of the random architectures reach."""
    method._classes, method._size, method._head = dataset.num_classes, 8, "linear"
    rng = np.random.default_rng(1)
    return float(np.median([method.param_millions(random_genome(2, rng)) for _ in range(20)]))


def searched(tmp_path: Path, **params) -> EEEA:
    config = build_config(overrides=["track=compress", "method=eeea", "train.device=cpu",
                                     f"root={tmp_path}", *SETTINGS])
    dataset = load_data(config)
    probe = EEEA(config.method_params, config)
    beta = median_params(probe, config, dataset)
    method = EEEA({**config.method_params, "beta": beta, **params}, config)
    method.run_search(config, dataset, 8)
    return method


@pytest.fixture(scope="module")
def search_init(tmp_path_factory) -> EEEA:
    return searched(tmp_path_factory.mktemp("s"))


def test_early_exit_never_trains_an_initial_architecture_at_or_above_beta(search_init):
    beta = search_init.params.beta * 1e6
    initial = [r for r in search_init.records if r["generation"] == 0]
    assert any(r["exited"] for r in initial)  # beta at the median: some were redrawn
    for record in initial:
        if record["params"] >= beta:
            assert record["exited"] and not record["trained"] and record["error"] is None
        else:
            assert record["trained"] and record["error"] is not None
    assert sum(r["trained"] for r in initial) == search_init.params.population


def test_with_scope_all_no_candidate_at_or_above_beta_is_ever_trained(tmp_path):
    method = searched(tmp_path, early_exit_scope="all", generations=3)
    beta = method.params.beta * 1e6
    trained = [r for r in method.records if r["trained"]]
    assert trained and all(r["params"] < beta for r in trained)
    assert all(not r["trained"] for r in method.records if r["params"] >= beta)


def test_without_early_exit_nothing_is_redrawn(tmp_path):
    method = searched(tmp_path, early_exit=False)
    assert not any(r["exited"] for r in method.records)
    assert all(r["trained"] for r in method.records)


def test_the_reported_front_is_non_dominated_and_made_of_evaluated_candidates(search_init):
    front = search_init.search["front"]
    assert front
    for a in front:
        for b in front:
            dominates = (b["error"] <= a["error"] and b["params"] <= a["params"]
                         and (b["error"] < a["error"] or b["params"] < a["params"]))
            assert not dominates
        assert any(r["genome"] == a["genome"] and r["error"] == a["error"]
                   and r["params"] == a["params"] for r in search_init.records)
    chosen = search_init.search["chosen"]
    assert chosen["error"] == min(e["error"] for e in front)


def test_a_genome_builds_the_network_whose_parameters_the_search_recorded(search_init):
    params = search_init.params
    for record in search_init.records:
        model = build(record["genome"], params, 4, 8)
        assert count_parameters(model) == record["params"]
    low, high = genome_bounds(params.nodes)
    bad = list(high + 1)
    with pytest.raises(HundredError, match="outside their bounds"):
        build(bad, params, 4, 8)


def test_a_tiny_run_searches_trains_and_exports_the_chosen_architecture(tmp_path):
    assert main(["run", "compress", "eeea", *COMMON, "--set", f"root={tmp_path}",
                 "--set", "name=e"]) == 0
    run_dir = tmp_path / "compress" / "eeea" / "e"
    summary = json.loads((run_dir / "summary.json").read_text())
    search = summary["search"]
    assert search["chosen_params_match"] and summary["params"] == search["chosen"]["params"]
    assert search["trained"] + search["exited"] == search["drawn"] > 0
    records = [json.loads(line) for line in
               (run_dir / "eeea_candidates.jsonl").read_text().splitlines()]
    assert len(records) == search["drawn"]
    assert (run_dir / "eeea_pareto.png").stat().st_size > 0
    exported = summary["export"]["model"]
    assert exported["name"] == "cellnet"
    assert exported["options"]["genome"] == search["chosen"]["genome"]
    model = create(exported["name"], 4, img_size=8, **exported["options"])
    model.load_state_dict(load_file(run_dir / "model.safetensors"))
    assert count_parameters(model) == summary["params"]
    again = create(exported["name"], 4, img_size=8, **exported["options"])
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 8, 8))).all()


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    for bad in ("method_params.population=1", "method_params.beta=0",
                "method_params.early_exit_scope=some", "method_params.beta=1e-9"):
        assert main(["run", "compress", "eeea", *COMMON, "--set", f"root={tmp_path}",
                     "--set", bad, "--set", "method_params.max_draws=3"]) == 2
    assert not any(tmp_path.iterdir())
    with pytest.raises(HundredError, match="genome"):
        create("cellnet", 4, img_size=8)
