"""benchmarks/tesla_memory.py at toy sizes on the CPU: every case runs, the table and the plot
are written."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tesla_memory.py"


@pytest.fixture(scope="module")
def tesla_memory():
    spec = importlib.util.spec_from_file_location("tesla_memory_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_toy_run_reports_mtt_and_tesla(tesla_memory, tmp_path, capsys):
    plot = tmp_path / "memory.png"
    rows = tesla_memory.main(["--device", "cpu", "--steps", "1,2", "--res", "8", "--width",
                              "4", "--images", "8", "--classes", "4", "--iterations", "1",
                              "--no-host", "--plot", str(plot)])
    assert sorted((row["method"], row["steps"]) for row in rows) == [
        ("mtt", 1), ("mtt", 2), ("tesla", 1), ("tesla", 2)]
    assert all(row["peak_bytes"] > 0 and row["seconds"] > 0 for row in rows)
    out = capsys.readouterr().out
    assert "| N | mtt peak MiB" in out and "tesla (device) s/it" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
