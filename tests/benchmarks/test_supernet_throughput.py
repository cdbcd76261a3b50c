"""benchmarks/supernet_throughput.py at toy size on the CPU: the three trainings run and are
reported against the largest child alone."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "supernet_throughput.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("supernet_throughput_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_toy_run_reports_each_training_against_the_largest_child(benchmark, capsys):
    rows = benchmark.main(["--res", "8", "--classes", "2", "--per-class", "8", "--epochs", "1",
                           "--batch", "8", "--widths", "4", "8", "--depths", "1", "1"])
    assert [row["training"] for row in rows] == ["largest child alone", "bignas", "deps"]
    assert rows[0]["ratio"] == pytest.approx(1.0)
    assert all(row["images_per_s"] > 0 for row in rows)
    out = capsys.readouterr().out
    assert "bignas" in out and f"{rows[1]['ratio']:.2f}x" in out
