"""benchmarks/ssl_views.py at toy sizes on the CPU: both two-view loops run and are reported."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ssl_views.py"


@pytest.fixture(scope="module")
def ssl_views():
    spec = importlib.util.spec_from_file_location("ssl_views_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_toy_run_reports_both_loops(ssl_views, capsys):
    # no DataLoader worker processes inside the test suite (a dying worker hangs the suite)
    rows = ssl_views.main(["--device", "cpu", "--steps", "2", "--warmup", "1", "--batch", "8",
                           "--cases", "resnet20@16", "--workers", "0"])
    assert [(row["model"], row["res"]) for row in rows] == [("resnet20", 16)]
    row = rows[0]
    assert row["reference"] > 0 and row["hundred"] > 0
    assert row["ratio"] == pytest.approx(row["hundred"] / row["reference"])
    out = capsys.readouterr().out
    assert "resnet20 @ 16" in out and f"{row['ratio']:.2f}x" in out


def test_reference_views_are_two_independent_simclr_views(ssl_views):
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8).numpy()
    dataset = ssl_views.PilDataset(images, [0, 1, 2, 3],
                                   ssl_views.TwoViews(ssl_views.simclr_transform(16)))
    torch.manual_seed(0)
    (first, second), label = dataset[1]
    assert label == 1 and first.shape == second.shape == (3, 16, 16)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("res", [16, 32, 64, 96])
def test_both_pipelines_blur_at_the_same_sizes(ssl_views, res):
    from hundred.data.augment import PRESETS, view_specs

    steps = [type(t).__name__ for t in ssl_views.simclr_transform(res).transforms]
    reference_blurs = steps.count("RandomApply") == 2  # the jitter's, and the blur's
    hundred_blurs = [any(step.get("op") == "blur" for step in PRESETS[spec])
                     for spec in view_specs(ssl_views.view_recipe(res))]
    assert hundred_blurs == [reference_blurs] * 2
    assert reference_blurs == (res >= 64)


def test_data_is_cut_to_the_run(ssl_views):
    images, labels = ssl_views.two_view_images(16, steps=2, warmup=1, batch=8)
    assert images.shape == (24, 16, 16, 3) and len(labels) == 24
    assert len(set(labels.tolist())) > 1  # evenly spaced, not the first class only
