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

from hundred.config import RunConfig, with_values
from hundred.errors import HundredError
from hundred.track import Track


def phase_teacher(track: Track, methods: Mapping[str, type], config: RunConfig, out: Path,
                  console: Any) -> dict[str, list[str]]:
    """``{method: ["classify.teacher=<run dir>"]}`` for each method of the phase that distils
    a teacher, after training (or reusing) that phase's teacher; nothing for the others."""
    from hundred.engine.run import settings_digest
    from hundred.protocol.tune import _captured, slug

    distilling = [name for name, cls in methods.items() if getattr(cls, "needs_teacher", False)]
    if not distilling:
        return {}
    if config.classify.teacher is not None:
        raise HundredError(
            "hundred check trains one teacher per phase (tuning and evaluation use different "
            "classes, so no single teacher fits both): drop --teacher / classify.teacher and "
            "choose the teachers' architecture with --set classify.teacher_model=NAME")
    teacher = with_values(config, {"method": "erm", "method_params": {},
                                   "model.name": config.classify.teacher_model,
                                   "model.options": {}, "seed": 0}, "phase teacher")
    name = f"teacher-{slug(teacher.data.label)}-{settings_digest(teacher)[:8]}"
    teacher = with_values(teacher, {"name": name, "root": str(out / "teachers"),
                                    "quiet": True}, "phase teacher")
    run_dir = out / "teachers" / track.name / "erm" / name
    if (run_dir / "summary.json").is_file():
        console.print(f"[teacher] {teacher.model.name} on {teacher.data.label}: already done "
                      f"({run_dir})", highlight=False, markup=False)
    else:
        resume = run_dir if (run_dir / "config.yaml").is_file() else None
        console.print(f"[teacher] training {teacher.model.name} on {teacher.data.label} "
                      f"({teacher.train.epochs} epochs) for the distillation methods",
                      highlight=False, markup=False)
        with _captured(True) as output:  # kept in the teacher's console.log, like a trial's
            try:
                summary = track.run(teacher, resume)
            finally:
                if output is not None and run_dir.is_dir():
                    with open(run_dir / "console.log", "a", encoding="utf-8") as handle:
                        handle.write(output.getvalue())
        console.print(f"[teacher] {teacher.model.name} on {teacher.data.label}: "
                      f"{track.primary.key} {summary[track.primary.key]:.2f} ({run_dir})",
                      highlight=False, markup=False)
    return {name: [f"classify.teacher={json.dumps(str(run_dir))}"] for name in distilling}
