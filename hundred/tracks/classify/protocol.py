"""What ``hundred check classify`` needs per phase: a teacher of that phase's classes.

The protocol tunes on one class half and evaluates on the other, so one teacher cannot serve
both phases (a teacher of all classes would have seen the evaluation classes, and its output
layer would not fit either half). When a distillation method is checked and no teacher is
given, each phase first trains its own ERM teacher (``classify.teacher_model``, on that
phase's data with the phase's base settings — the config's epochs, batch size and learning
rate, none of them tuned — seed 0) under ``<out>/teachers/``; the phase's runs then distil
from it. A finished teacher is reused and a killed one resumed, like every run of
a check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from hundred.config import RunConfig
from hundred.errors import HundredError
from hundred.track import Track


def phase_teacher(track: Track, methods: Mapping[str, type], config: RunConfig, out: Path,
                  console: Any) -> dict[str, list[str]]:
    """``{method: ["classify.teacher=<run dir>"]}`` for each method of the phase that distils
    a teacher, after training (or reusing) that phase's teacher; nothing for the others."""
    from hundred.protocol.phase import phase_run

    distilling = [name for name, cls in methods.items() if getattr(cls, "needs_teacher", False)]
    if not distilling:
        return {}
    if config.classify.teacher is not None:
        raise HundredError(
            "hundred check trains one teacher per phase (tuning and evaluation use different "
            "classes, so no single teacher fits both): drop --teacher / classify.teacher and "
            "choose the teachers' architecture with --set classify.teacher_model=NAME")
    run_dir = phase_run(track, config, {"method": "erm", "method_params": {},
                                        "model.name": config.classify.teacher_model,
                                        "model.options": {}, "seed": 0},
                        "teacher", "teachers", out, console, "for the distillation methods")
    return {name: [f"classify.teacher={json.dumps(str(run_dir))}"] for name in distilling}
