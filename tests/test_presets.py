"""Every shipped preset validates (a broken preset would fail only when someone uses it):
the paper settings in configs/ and each track's --quick preset."""

from pathlib import Path

import pytest

from hundred.config import build_config
from hundred.registry import get_method, get_track, tracks

ROOT = Path(__file__).resolve().parents[1]
PAPER_PRESETS = sorted((ROOT / "configs").rglob("*.yaml"))
QUICK_PRESETS = [(name, get_track(name).quick_preset) for name in tracks()
                 if get_track(name).quick_preset is not None]


@pytest.mark.parametrize("path", PAPER_PRESETS, ids=lambda p: p.name)
def test_paper_preset_is_valid(path):
    config = build_config([path])
    get_method(config.track, config.method)(config.method_params, config)


@pytest.mark.parametrize("track, path", QUICK_PRESETS, ids=lambda p: str(p))
def test_quick_preset_is_valid_for_its_track(track, path):
    config = build_config([path], [f"track={track}"])
    assert config.track == track
