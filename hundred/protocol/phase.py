"""Runs that a phase of ``hundred check`` needs before its own: a model trained on that
phase's data, which the phase's runs then start from (e.g. the teacher of distillation
methods, or the pre-trained model a fine-tuning method starts from).

The protocol tunes on one class half and evaluates on the other, so such a run cannot serve
both phases: each phase trains its own, once, with the phase's base settings (none of them
tuned), under ``<out>/<folder>/``. A finished one is reused and a killed one resumed, like
every run of a check; its console output goes to its ``console.log``, like a trial's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from hundred.config import RunConfig, with_values
from hundred.track import Track


def phase_run(track: Track, config: RunConfig, values: Mapping[str, Any], role: str,
              folder: str, out: Path, console: Any, purpose: str) -> Path:
    """Train (or reuse) the run of ``config`` with ``values`` set (e.g. ``method=erm``,
    ``seed=0``) on the phase's data; returns its run directory.

    ``role`` names it in the console (``teacher``) and its directory
    (``<out>/<folder>/<track>/<method>/<role>-<data>-<digest>``); ``purpose`` says in a few
    words who needs it (``for the distillation methods``)."""
    from hundred.engine.run import settings_digest
    from hundred.protocol.tune import _captured, slug

    config = with_values(config, dict(values), f"phase {role}")
    name = f"{role}-{slug(config.data.label)}-{settings_digest(config)[:8]}"
    config = with_values(config, {"name": name, "root": str(out / folder), "quiet": True},
                         f"phase {role}")
    run_dir = out / folder / track.name / config.method / name
    what = f"{config.model.name} on {config.data.label}"
    if (run_dir / "summary.json").is_file():
        console.print(f"[{role}] {what}: already done ({run_dir})", highlight=False,
                      markup=False)
        return run_dir
    resume = run_dir if (run_dir / "config.yaml").is_file() else None
    console.print(f"[{role}] training {what} ({config.train.epochs} epochs) {purpose}",
                  highlight=False, markup=False)
    with _captured(True) as output:  # kept in the run's console.log, like a trial's
        try:
            summary = track.run(config, resume)
        finally:
            if output is not None and run_dir.is_dir():
                with open(run_dir / "console.log", "a", encoding="utf-8") as handle:
                    handle.write(output.getvalue())
    console.print(f"[{role}] {what}: {track.primary.key} {summary[track.primary.key]:.2f} "
                  f"({run_dir})", highlight=False, markup=False)
    return run_dir
