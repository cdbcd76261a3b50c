"""Teachers for the distillation methods: a finished hundred run, or a timm model with a local
weights file. A teacher is checked before anything is written: its classes must be the
data's, its files must exist and load (safetensors, or a state dict read with
``weights_only``), and it comes back frozen, in eval mode."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from hundred.config import build_config
from hundred.engine.init import load_finished_run
from hundred.errors import HundredError
from hundred.models import create

TIMM_PREFIX = "timm:"


def load_teacher(spec: str, num_classes: int, data_name: str, image_size: int) -> nn.Module:
    """The teacher named by ``spec`` for data ``data_name`` of ``num_classes`` classes, whose
    images reach the models at ``image_size`` pixels."""
    if spec.startswith(TIMM_PREFIX):
        teacher = _timm_teacher(spec, num_classes, image_size)
    else:
        teacher = _run_teacher(Path(spec), num_classes, data_name, image_size)
    return teacher.eval().requires_grad_(False)


def teacher_label(spec: str) -> str:
    """A teacher in a few words: ``resnet56 (run teacher-synth100)`` for a run directory,
    ``timm:resnet34 (r34.safetensors)`` for a timm model with a local file."""
    if spec.startswith(TIMM_PREFIX):
        name, _, path = spec[len(TIMM_PREFIX):].partition(":")
        return f"{TIMM_PREFIX}{name} ({Path(path).name})"
    run_dir = Path(spec)
    try:
        model = build_config([run_dir / "config.yaml"]).model.name
    except (HundredError, OSError):
        return f"run {run_dir.name}"
    return f"{model} (run {run_dir.name})"


def _run_teacher(run_dir: Path, num_classes: int, data_name: str, image_size: int
                 ) -> nn.Module:
    """A finished run (:func:`~hundred.engine.init.load_finished_run`): its architecture from
    ``config.yaml``, the weights it evaluated (the EMA's when it kept one) from its newest
    checkpoint."""
    found = load_finished_run(run_dir, "teacher", " or timm:NAME:PATH")
    try:
        teacher_classes, teacher_data = int(found.summary["classes"]), str(found.summary["data"])
    except (ValueError, KeyError, TypeError) as error:
        raise HundredError(f"teacher {run_dir / 'summary.json'} is unreadable ({error})"
                           ) from None
    if teacher_classes != num_classes:
        raise HundredError(f"teacher {run_dir} was trained on {teacher_data} "
                           f"({teacher_classes} classes); the data {data_name} has "
                           f"{num_classes} classes")
    model = found.config.model
    teacher = create(model.name, teacher_classes, head=model.head, img_size=image_size,
                     **model.options)
    _load(teacher, found.weights, str(run_dir))
    return teacher


def _timm_teacher(spec: str, num_classes: int, image_size: int) -> nn.Module:
    name, _, path = spec[len(TIMM_PREFIX):].partition(":")
    if not name or not path:
        raise HundredError(f"teacher {spec!r}: expected timm:NAME:PATH (a local weights file)")
    file = Path(path)
    if not file.is_file():
        raise HundredError(f"teacher weights {file} do not exist")
    try:
        if file.suffix == ".safetensors":
            weights = load_safetensors(file.read_bytes())
        else:  # a plain state dict; weights_only never runs pickled code
            weights = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files, pickles with code, foreign formats
        raise HundredError(f"teacher weights {file} are unreadable "
                           f"({str(error).splitlines()[0][:200]})") from None
    teacher = create(name, num_classes, img_size=image_size)
    _load(teacher, weights, str(file))
    return teacher


def _load(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise HundredError(f"teacher weights in {where} do not fit the teacher's model: "
                           f"{str(error).splitlines()[0][:300]}") from None
