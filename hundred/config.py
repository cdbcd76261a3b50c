"""Typed, validated run configuration: YAML files plus ``--set key.sub=value`` overrides.

Validation happens before anything heavy is imported (no torch here), so a misspelt key or
an out-of-range value fails at once with a message naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hundred.errors import HundredError


class _Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    source: str = Field("synth100", description="source spec or packed directory")
    options: dict[str, Any] = Field(default_factory=dict, description="source options")
    augment: str = Field("crop-flip", description="train augmentation preset")
    batch_size: int = Field(128, ge=1, description="global batch size (all ranks together)")
    eval_batch_size: int = Field(512, ge=1)
    device_budget_gb: Optional[float] = Field(
        None, ge=0, description="keep a split on the device when it fits; None = automatic")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ModelConfig(_Strict):
    name: str = "resnet20"
    head: Literal["linear", "cosine"] = "linear"
    options: dict[str, Any] = Field(default_factory=dict, description="backbone keyword options")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    compile: bool = Field(False, description="torch.compile the model (opt-in)")


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(5e-4, ge=0)
    decay_norm_and_bias: bool = Field(
        False, description="apply weight decay to norm weights and biases too")


class ScheduleConfig(_Strict):
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[int] = Field(default_factory=list, description="epochs, for 'step'")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor, for 'step'")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: Optional[float] = Field(None, gt=0, description="max gradient norm")
    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="EMA of weights; None = off")
    amp: Literal["auto", "bf16", "off"] = Field("auto", description="bf16 autocast on CUDA")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    keep_checkpoints: int = Field(1, ge=1)
    eval_every: int = Field(1, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")


class IncrementalConfig(_Strict):
    """Class-incremental scenario (used by the ``incremental`` track)."""

    scenario: str = Field("B0-Inc10", pattern=r"^B\d+-Inc\d+$",
                          description="B<first task classes>-Inc<classes per later task>")
    class_order_seed: int = Field(1993, ge=0, description="np.random.seed(s); permutation")
    class_order: Optional[list[int]] = Field(None, description="explicit class order")
    memory: int = Field(2000, ge=0, description="exemplars in total (fixed-total memory)")
    memory_per_class: Optional[int] = Field(
        None, ge=1, description="exemplars per class instead (growing memory)")
    selection: Literal["herding", "random"] = "herding"


class RunConfig(_Strict):
    """Everything one run needs. ``method_params`` are validated by the method itself."""

    track: str = "classify"
    method: str = "erm"
    name: Optional[str] = Field(None, description="run directory name (default: generated)")
    root: str = Field("runs", description="runs/<track>/<method>/<name>/")
    seed: int = Field(0, ge=0)
    quiet: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    incremental: IncrementalConfig = Field(default_factory=IncrementalConfig)
    method_params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _milestones_inside_training(self) -> "RunConfig":
        bad = [m for m in self.schedule.milestones if not 0 < m < self.train.epochs]
        if self.schedule.name == "step" and bad:
            raise ValueError(f"schedule.milestones {bad} must lie in 1..{self.train.epochs - 1}")
        return self


def _format_errors(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parent = item["loc"][:-1]
            allowed = _allowed_keys(parent)
            lines.append(f"  {key}: unknown key; allowed here: {', '.join(allowed)}")
        else:
            got = f" (got {item['input']!r})" if item["loc"] else ""
            lines.append(f"  {key}: {item['msg']}{got}")
    return "\n".join(lines)


def _allowed_keys(path: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.05"`` -> ``(["optim", "lr"], 0.05)``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise HundredError(f"--set expects KEY=VALUE (e.g. optim.lr=0.05), got {text!r}")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` in the nested dict ``raw`` (creating levels as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise HundredError(f"--set {text}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with clear errors for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise HundredError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise HundredError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise HundredError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    return raw


def build_config(files: list[str | Path] = (), overrides: list[str] = (),
                 base: dict[str, Any] | None = None) -> RunConfig:
    """Merge ``base``, then each YAML file, then ``--set`` overrides; validate the result."""
    raw: dict[str, Any] = dict(base or {})
    for file in files:
        _deep_update(raw, read_yaml(file))
    apply_overrides(raw, list(overrides))
    origin = ", ".join([str(f) for f in files] + ["--set"] * bool(overrides)) or "defaults"
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise HundredError(_format_errors(error, origin)) from None


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def quick_preset(track: str) -> Path:
    """The packaged ``--quick`` preset of ``track`` (small data and few epochs)."""
    path = Path(__file__).parent / "presets" / f"quick-{track}.yaml"
    if not path.is_file():
        raise HundredError(f"track {track} has no --quick preset")
    return path


def dump_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (what a run directory stores and ``--config`` reads back)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
