"""What ``hundred check generate`` needs per phase: the trained denoiser its samplers share.

Tuning and evaluation use different classes, so each phase first trains one denoiser per
training objective of the checked methods (noise prediction for ddpm / ddim / ddim_cfg /
skip_tuning, velocity for the flow samplers) with the phase's base settings, seed 0, under
``<out>/generators/`` (:func:`hundred.protocol.phase.phase_run`); the phase's runs then only
sample (``generate.init``) and their trials vary sampler settings. Methods that train their
own networks (objective ``own``) train in each run, as usual.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from hundred.config import RunConfig
from hundred.errors import HundredError
from hundred.track import Track

# the method whose run trains the denoiser of each objective (its sampler is then measured
# too, which costs one sampling pass)
TRAINER_OF = {"ddpm": "ddpm", "flow": "flow_euler"}


def phase_generators(track: Track, methods: Mapping[str, type], config: RunConfig, out: Path,
                     console: Any) -> dict[str, list[str]]:
    """``{method: ["generate.init=<run dir>"]}`` for each sampling method of the phase, after
    training (or reusing) the phase's denoiser of its objective."""
    from hundred.protocol.phase import phase_run

    sampling = {name: cls.objective for name, cls in methods.items()
                if cls.objective in TRAINER_OF}
    if not sampling:
        return {}
    if config.generate.init is not None:
        raise HundredError("hundred check trains each phase's denoiser itself (tuning and "
                           "evaluation use different classes): drop --init / generate.init")
    runs = {objective: phase_run(track, config, {"method": TRAINER_OF[objective],
                                                 "method_params": {}, "seed": 0,
                                                 "model.name": config.generate.denoiser},
                                 f"generator-{objective}", "generators", out, console,
                                 "for the samplers")
            for objective in sorted(set(sampling.values()))}
    return {name: [f"generate.init={json.dumps(str(runs[objective]))}"]
            for name, objective in sampling.items()}
