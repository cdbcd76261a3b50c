"""Every shipped preset validates (a broken preset would fail only when someone uses it)."""

from pathlib import Path

import pytest

import hundred
from hundred.config import build_config
from hundred.registry import get_method

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").rglob("*.yaml")) + sorted(
    (Path(hundred.__file__).parent / "presets").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_is_valid(path):
    config = build_config([path])
    get_method(config.track, config.method)(config.method_params, config)
