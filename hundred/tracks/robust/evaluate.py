"""``hundred attack RUN_DIR``: robust accuracy of a finished classifier run, afterwards.

The run may be of any classification-style track (classify, robust: a summary with
``classes``, a model config, a checkpoint). Its weights are read with
:func:`hundred.engine.init.load_finished_run` (safetensors; never a pickle), its data is
loaded from its own config, and its held-out split (val) is attacked. Everything is checked
before anything is written — an ε outside [0, 1], an unknown attack, a directory without
weights each give one clear error and leave the summary as it was. The result is appended to
the summary's ``attacks`` list (the threat model with the number), and ``<attack>_top1`` /
``<attack>_threat`` hold the latest one, which reports show; the summary is rewritten
atomically, keeping everything else in it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hundred.errors import HundredError
from hundred.tracks.robust.config import parse_eps

SUMMARY = "summary.json"


@dataclass(frozen=True)
class AttackRequest:
    """What ``hundred attack`` was asked for (``eps``/``step_size`` as numbers or fractions
    such as ``"8/255"``; ``eps``/``norm`` None: the run's own ``robust:`` settings).
    ``options``: keywords of the attack's builder (QuScore: ``interpreter``,
    ``max_queries``, its GA settings); ``surrogate``: a finished run whose model the attacker
    owns (QuScore's transfer stage)."""

    attack: str = "pgd"
    eps: str | float | None = None
    norm: str | None = None
    steps: int = 20
    step_size: str | float | None = None
    restarts: int = 1
    seed: int = 0
    limit: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    surrogate: str | None = None


def _number(value: Any, what: str) -> float:
    try:
        return parse_eps(value, what)
    except ValueError as error:
        raise HundredError(str(error)) from None


def attack_run(run_dir: Path, request: AttackRequest) -> dict[str, Any]:
    """Attack ``run_dir``'s model on its val split and record the result in its summary;
    returns the ``attacks`` entry written."""
    from hundred.data.loader import BatchLoader
    from hundred.engine.init import load_finished_run
    from hundred.engine.run import image_size, load_data
    from hundred.engine.trainer import resolve_device
    from hundred.tracks.robust.attacks import (PixelSpaceModel, ThreatModel, attack_spec,
                                               attack_subset, robust_accuracy)
    from hundred.tracks.robust.scenario import attack_label

    spec = attack_spec(request.attack)
    spec.check_options(request.attack, request.options)
    if request.surrogate is not None and "surrogate" not in spec.options:
        raise HundredError(f"attack {request.attack!r} takes no surrogate model")
    for value, what in ((request.steps, "--steps"), (request.restarts, "--restarts"),
                        (request.limit, "--limit"), (request.batch_size, "--batch-size")):
        if value is not None and value < 1:
            raise HundredError(f"{what} must be >= 1, got {value}")
    if request.seed < 0:
        raise HundredError(f"--seed must be >= 0, got {request.seed}")
    if request.eps is not None:  # checked before the run is read: a bad budget is bad input
        _number(request.eps, "--eps")
    found = load_finished_run(run_dir, "attack")
    config, summary = found.config, found.summary
    surrogate = None if request.surrogate is None else \
        load_finished_run(Path(request.surrogate), "surrogate")
    robust = getattr(config, "robust", None)
    if request.eps is None and robust is None:
        raise HundredError(f"{run_dir} is a {config.track} run: give the budget, e.g. --eps "
                           "8/255")
    eps = _number(request.eps if request.eps is not None else robust.eps, "--eps")
    norm = request.norm or (robust.norm if robust is not None else "linf")
    step = None if request.step_size is None else _number(request.step_size, "--step-size")
    if step == 0:
        raise HundredError("--step-size must be above 0")
    threat = ThreatModel(norm=norm, eps=eps, steps=request.steps, step_size=step,
                         restarts=request.restarts, random_start=True)
    classes = summary.get("classes")
    if isinstance(classes, bool) or not isinstance(classes, int):
        raise HundredError(f"{run_dir} is not a classifier run (its summary has no "
                           "'classes'): hundred attack needs a classify or robust run")
    dataset = load_data(config)
    if dataset.num_classes != classes:
        raise HundredError(f"{run_dir} was trained on {classes} classes, but its data "
                           f"{dataset.name} now has {dataset.num_classes}")
    size = image_size(config, dataset)
    device = resolve_device(request.device)
    model = _model(found, run_dir, classes, size).to(device)
    options = dict(request.options)
    if surrogate is not None:
        surrogate_classes = surrogate.summary.get("classes")
        if surrogate_classes != classes:
            raise HundredError(f"the surrogate {request.surrogate} has {surrogate_classes} "
                               f"classes, the attacked run {classes}")
        options["surrogate"] = PixelSpaceModel(
            _model(surrogate, Path(request.surrogate), classes, size),
            surrogate.config.data.mean, surrogate.config.data.std).to(device).eval()
    data = config.data
    val = dataset.arrays("val")
    batches = BatchLoader(val, batch_size=request.batch_size or data.eval_batch_size,
                          shuffle=False, drop_last=False, seed=0, device=device, train=False,
                          out_size=data.image_size, mean=data.mean, std=data.std,
                          indices=attack_subset(len(val.labels), request.limit))
    result = robust_accuracy(model, batches, data.mean, data.std, request.attack, threat,
                             classes, seed=request.seed, device=device, options=options)
    if result["norm"] != threat.norm:  # an attack with a norm of its own (sda: l0)
        threat = ThreatModel(norm=result["norm"], eps=threat.eps, steps=threat.steps,
                             step_size=threat.step_size, restarts=threat.restarts)
    entry = {**result, "split": "val", "source": "hundred attack",
             "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if request.surrogate is not None:
        entry["surrogate"] = str(request.surrogate)
    _record(run_dir / SUMMARY, entry, f"{_label(threat)}, {attack_label(request.attack, threat)}")
    return entry


def _model(found: Any, run_dir: Path, classes: int, size: int) -> Any:
    """The model of a finished run (``load_finished_run``'s result), its weights loaded."""
    from hundred.models import create

    config = found.config
    model = create(config.model.name, classes, head=config.model.head, img_size=size,
                   **config.model.options)
    try:
        model.load_state_dict(found.weights)
    except (RuntimeError, TypeError) as error:
        raise HundredError(f"the weights of {run_dir} do not fit its model "
                           f"({str(error).splitlines()[0][:300]})") from None
    return model


def _label(threat: Any) -> str:
    from hundred.tracks.robust.config import eps_label

    return f"{ {'linf': 'Linf', 'l2': 'L2', 'l0': 'L0'}[threat.norm]} {eps_label(threat.eps)}"


def _record(path: Path, entry: dict[str, Any], threat: str) -> None:
    """Append ``entry`` to the summary's ``attacks`` and set ``<attack>_top1`` /
    ``<attack>_threat`` to it."""
    record_in_summary(path, "attacks", entry, {f"{entry['attack']}_top1": entry["robust_top1"],
                                               f"{entry['attack']}_threat": threat})


def record_in_summary(path: Path, key: str, entry: dict[str, Any], latest: dict[str, Any]
                      ) -> None:
    """Append ``entry`` to the summary's list ``key`` and set the ``latest`` keys (what
    reports show of the newest entry). The summary is read again now, so nothing written in
    the meantime is lost, and rewritten atomically; a summary that cannot be read, or whose
    ``key`` is not a list, is an error and stays as it is."""
    from hundred.io import write_json

    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HundredError(f"{path} is unreadable ({error})") from None
    earlier = summary.get(key) or []
    if not isinstance(earlier, list):
        raise HundredError(f"{path}: {key!r} is not a list; left as it is")
    summary[key] = [*earlier, entry]
    summary.update(latest)
    write_json(path, summary)
