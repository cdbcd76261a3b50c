"""What ``hundred check robust`` needs per phase: the pre-trained model that adversarial
fine-tuning (``adv_finetune``, any method with ``needs_init``) starts from.

Tuning and evaluation use different classes, so each phase first trains an ERM run of the
phase's data with the phase's base settings (the model, epochs, batch size and learning
rate of the config, none of them tuned; seed 0) under ``<out>/init/``
(:func:`hundred.protocol.phase.phase_run`, the mechanism classify's phase teachers use);
the phase's fine-tuning runs start from it (``robust.init``). Its cost is not counted in the
fine-tuning runs' ``train_seconds``: the paper, too, starts from an existing model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from hundred.config import RunConfig
from hundred.errors import HundredError
from hundred.track import Track


def phase_init(track: Track, methods: Mapping[str, type], config: RunConfig, out: Path,
               console: Any) -> dict[str, list[str]]:
    """``{method: ["robust.init=<run dir>"]}`` for each method of the phase that fine-tunes a
    pre-trained model, after training (or reusing) the phase's ERM run; nothing for the
    others."""
    from hundred.protocol.phase import phase_run

    fine_tuning = [name for name, cls in methods.items() if getattr(cls, "needs_init", False)]
    if not fine_tuning:
        return {}
    if config.robust.init is not None:
        raise HundredError(
            "hundred check trains the pre-trained model of each phase itself (tuning and "
            "evaluation use different classes, so no single model fits both): drop --init / "
            "robust.init")
    run_dir = phase_run(track, config, {"method": "erm", "method_params": {}, "seed": 0},
                        "init", "init", out, console, "for the fine-tuning methods")
    return {name: [f"robust.init={json.dumps(str(run_dir))}"] for name in fine_tuning}
