"""The weights of a finished run, for a run that starts from them: a teacher that distils
(``--teacher RUN_DIR``) or a backbone to fine-tune (``--init RUN_DIR``, e.g. after
self-supervised pre-training).

A finished run is a run directory with ``config.yaml``, ``summary.json`` and a readable
newest checkpoint. Its weights are the model it evaluated: the EMA weights when it kept an EMA
(``ema.*``), else the plain model's; the method's own modules (``method.*``: projectors,
momentum encoders) are never part of them. Everything is checked before the caller creates
its own run directory, so a run that cannot start from ``run_dir`` writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from hundred.config import ModelConfig, RunConfig, build_config
from hundred.engine.checkpoint import _candidates, _read_checkpoint, strip_prefix
from hundred.errors import HundredError


@dataclass(frozen=True)
class FinishedRun:
    """A finished run's stored config and summary, and the weights of the model it evaluated
    (a :class:`hundred.models.Classifier` state dict: ``backbone.*`` and ``head.*``)."""

    run_dir: Path
    config: RunConfig
    summary: dict[str, Any]
    weights: dict[str, torch.Tensor]


def load_finished_run(run_dir: Path, role: str, alternative: str = "") -> FinishedRun:
    """Read the finished run ``run_dir``; ``role`` (``teacher``, ``init``) starts every error
    message, and ``alternative`` (e.g. `` or timm:NAME:PATH``) completes the hint of a missing
    one. A run without ``summary.json`` has not finished; its newest checkpoint must read
    back (an older one is not used in its place: it is not the model the run finished with)."""
    if not run_dir.is_dir():
        raise HundredError(f"{role} {run_dir} does not exist (give a finished run directory"
                           f"{alternative})")
    summary_path = run_dir / "summary.json"
    if not (run_dir / "config.yaml").is_file() or not summary_path.is_file():
        raise HundredError(f"{role} {run_dir} is not a finished run (it needs config.yaml and "
                           "summary.json)")
    config = build_config([run_dir / "config.yaml"])
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as error:
        raise HundredError(f"{role} {summary_path} is unreadable ({error})") from None
    if not isinstance(summary, dict):
        raise HundredError(f"{role} {summary_path} is unreadable (not a JSON object)")
    config = _exported_architecture(config, summary, role, summary_path)
    directory = run_dir / "checkpoints"
    stems = _candidates(directory) if directory.is_dir() else []
    if not stems:
        raise HundredError(f"{role} {run_dir} has no checkpoint")
    try:
        _, weights, _ = _read_checkpoint(directory, stems[0])
    except ValueError as error:
        raise HundredError(f"{role} {run_dir}: its newest checkpoint {error}") from None
    ema = strip_prefix(weights, "ema.")
    model_weights = ema or {key: value for key, value in weights.items()
                            if not key.startswith(("ema.", "method."))}
    return FinishedRun(run_dir, config, summary, model_weights)


def _exported_architecture(config: RunConfig, summary: dict[str, Any], role: str,
                           summary_path: Path) -> RunConfig:
    """``config`` with the model the run exported (``summary.export.model``, e.g. a pruned
    shape: ``model.options.pruned_widths``) in place of the one it trained, when it exported
    one: that is the model its newest checkpoint holds."""
    export = summary.get("export")
    exported = export.get("model") if isinstance(export, dict) else None
    if exported is None:
        return config
    try:
        model = ModelConfig.model_validate(exported)
    except ValidationError as error:
        raise HundredError(f"{role} {summary_path}: its export.model is not a model config "
                           f"({str(error).splitlines()[0][:200]})") from None
    return config.model_copy(update={"model": model})


def architecture(model: ModelConfig) -> str:
    """``resnet20`` or ``resnet20 {'width': 32}``: what decides a backbone's weights."""
    return model.name + (f" {model.options}" if model.options else "")


def init_backbone_weights(run_dir: Path, config: RunConfig, image_size: int
                          ) -> dict[str, torch.Tensor]:
    """The backbone weights of the finished run ``run_dir`` for a run of ``config`` whose
    images reach the model at ``image_size`` pixels, checked before anything is written: the
    two runs' architectures (``model.name`` and ``model.options``) must be equal, and the
    weights must fit this run's backbone exactly (every key, no extra one, equal shapes)."""
    return _fitting_backbone(load_finished_run(run_dir, "init"), config, image_size)


def init_model_weights(run_dir: Path, config: RunConfig, image_size: int, num_classes: int,
                       data_name: str) -> tuple[dict[str, torch.Tensor], bool]:
    """The weights a run of ``config`` on ``data_name`` (``num_classes`` classes) starts from
    when it continues training the finished run ``run_dir`` (e.g. adversarial fine-tuning of
    a pre-trained model): the whole classifier (``backbone.*`` and ``head.*``, second value
    True) when that run was trained on the same data and classes, else its backbone alone
    (``backbone.*``, False: the caller builds a new head). Checked like
    :func:`init_backbone_weights` before anything is written."""
    found = load_finished_run(run_dir, "init")
    backbone = _fitting_backbone(found, config, image_size)
    weights = {f"backbone.{key}": value for key, value in backbone.items()}
    head = strip_prefix(found.weights, "head.")
    same_task = (found.summary.get("data") == data_name
                 and found.summary.get("classes") == num_classes)
    if same_task and head:
        weights.update({f"head.{key}": value for key, value in head.items()})
    return weights, same_task and bool(head)


def _fitting_backbone(found: FinishedRun, config: RunConfig, image_size: int
                      ) -> dict[str, torch.Tensor]:
    """The backbone weights of ``found``, checked against a run of ``config``."""
    from hundred.models import create_backbone

    run_dir = found.run_dir
    theirs, ours = architecture(found.config.model), architecture(config.model)
    if (found.config.model.name, found.config.model.options) != (config.model.name,
                                                                 config.model.options):
        raise HundredError(f"init {run_dir} {'exported' if _pruned(found) else 'trained'} "
                           f"{theirs}, but this run's model is {ours}: give the same "
                           "model.name and model.options" + _pruned_hint(found))
    weights = strip_prefix(found.weights, "backbone.")
    try:  # the backbone's shapes, without allocating or initialising it
        with torch.device("meta"):
            expected = create_backbone(config.model.name, img_size=image_size,
                                       **config.model.options).state_dict()
    except (RuntimeError, NotImplementedError):  # a model that cannot be built on meta
        expected = create_backbone(config.model.name, img_size=image_size,
                                   **config.model.options).state_dict()
    missing = sorted(expected.keys() - weights.keys())
    extra = sorted(weights.keys() - expected.keys())
    reshaped = sorted(key for key in expected.keys() & weights.keys()
                      if tuple(expected[key].shape) != tuple(weights[key].shape))
    if missing or extra or reshaped:
        problems = [f"{label} {', '.join(keys[:5])}" + (" ..." if len(keys) > 5 else "")
                    for label, keys in (("missing", missing), ("unexpected", extra),
                                        ("other shapes:", reshaped)) if keys]
        raise HundredError(f"init {run_dir}: its backbone weights do not fit this run's "
                           f"{ours} at {image_size} px ({'; '.join(problems)})")
    return weights


def _pruned(found: FinishedRun) -> bool:
    return "pruned_widths" in found.config.model.options


def _pruned_hint(found: FinishedRun) -> str:
    """How to build a pruned export's shape: its width plan as a --set."""
    if not _pruned(found):
        return ""
    plan = json.dumps(found.config.model.options["pruned_widths"], separators=(", ", ": "))
    return (f" (its pruned shape: --set 'model.options.pruned_widths={plan}', or put "
            "model.options from its summary's export.model in a config file)")


def resumes_from_checkpoint(resume_dir: Path | None) -> bool:
    """Whether a resumed run wrote a checkpoint (which then holds its weights, so it does not
    read its init run again)."""
    return resume_dir is not None and any(
        (resume_dir / "checkpoints").glob("epoch-*.safetensors"))
