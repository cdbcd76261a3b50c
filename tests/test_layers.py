"""The layers stay layered: the engine never imports the protocol, and what the CLI needs
to validate a command (config, registry, tracks, search-space types) never imports torch."""

import subprocess
import sys


def imported_after(code: str) -> set[str]:
    """The modules loaded by a fresh interpreter after running ``code``."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    return set(result.stdout.split())


def test_the_engine_does_not_import_the_protocol():
    loaded = imported_after("import hundred.engine.method, hundred.engine.trainer")
    assert "torch" in loaded  # the engine itself is loaded
    assert not [m for m in loaded if m.startswith("hundred.protocol")]


def test_validating_a_config_of_any_track_imports_no_torch():
    loaded = imported_after(
        "from hundred.config import build_config\n"
        "from hundred.registry import get_track, tracks\n"
        "import hundred.space\n"
        "for name in tracks():\n"
        "    track = get_track(name)\n"
        "    build_config(overrides=[f'track={name}'])\n"
        "    track.primary, track.quick_preset")
    assert "torch" not in loaded and "optuna" not in loaded
