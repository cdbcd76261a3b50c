"""Typed, validated run configuration: YAML files plus ``--set key.sub=value`` overrides.

Validation happens before anything heavy is imported (no torch here), so a misspelt key or
an out-of-range value fails at once with a message naming the key and what is allowed.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

from hundred.errors import HundredError
from hundred.registry import DEFAULT_TRACK, get_track


class StrictModel(BaseModel):
    """Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


_CLASS_ITEM = r"\s*\d+\s*(?:-\s*\d+\s*)?"
_CLASSES_SYNTAX = re.compile(rf"{_CLASS_ITEM}(?:,{_CLASS_ITEM})*")
# ``synth100[0-49]``: a source spec with a class selection appended (what reports print)
_SOURCE_WITH_CLASSES = re.compile(r"(?P<source>.*[^\s\[])\[(?P<classes>[\d,\s-]*)\]")


def parse_classes(text: str) -> list[int]:
    """``"0-2,7"`` -> ``[0, 1, 2, 7]``: class indices (labels of the dataset, i.e. positions in
    its sorted class list). ValueError names what is wrong (syntax, a reversed range, a class
    listed twice)."""
    if not isinstance(text, str) or not _CLASSES_SYNTAX.fullmatch(text):
        raise ValueError(f"{text!r} is not a class selection such as '0-49', '50-99' or "
                         "'0,3,7-9'")
    indices: list[int] = []
    for item in text.split(","):
        low, _, high = item.partition("-")
        first, last = int(low), int(high) if high.strip() else int(low)
        if last < first:
            raise ValueError(f"class range {item.strip()!r} runs backwards")
        indices += range(first, last + 1)
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if twice:
        raise ValueError(f"class selection {text!r} lists {twice[:5]} more than once")
    return sorted(indices)


def format_classes(indices: list[int]) -> str:
    """The canonical text of a class selection: ``[0, 1, 2, 7]`` -> ``"0-2,7"``."""
    parts: list[str] = []
    ordered = sorted(indices)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(parts)


FLOAT32_MAX = 3.4028234663852886e38  # the optimisers apply rates to float32 weights


def check_run_name(name: str) -> None:
    """ValueError unless ``name`` is one plain path component, so that a run directory
    ``<root>/<track>/<method>/<name>`` never leaves its root: no separator (``/`` or ``\\``),
    not ``.`` or ``..``, not blank."""
    if not name.strip() or name in (".", "..") or "\0" in name or "/" in name or "\\" in name:
        raise ValueError(f"{name!r} is not a plain directory name (no '/', '\\', '..'); "
                         "the run directory is <root>/<track>/<method>/<name>")


class DataConfig(StrictModel):
    source: str = Field("synth100", description="source spec or packed directory; "
                        "'SOURCE[0-49]' also sets classes")
    classes: Optional[str] = Field(
        None, description="keep only these classes (dataset labels = sorted class index), "
        "relabelled 0..K-1, e.g. '0-49' or '0,3,7-9'; None = all")
    options: dict[str, Any] = Field(default_factory=dict, description="source options")
    augment: str = Field("crop-flip", description="train augmentation preset")
    label_fraction: float = Field(
        1.0, gt=0, le=1, description="train on this fraction of the train split: "
        "round(fraction * n) images of each class (at least 1), the same for every run seed; "
        "validation is never subsampled")
    label_fraction_seed: int = Field(
        0, ge=0, description="the seed that picks the label_fraction subset (independent of "
        "the run seed, so that runs of several seeds train on the same images)")
    image_size: Optional[int] = Field(
        None, ge=8, description="model input size; default: the data's resolution (pack a "
        "little larger, e.g. 72 for 64, so random-resized and centre crops have a margin)")
    batch_size: int = Field(128, ge=1, description="global batch size (all ranks together)")
    eval_batch_size: int = Field(512, ge=1)
    device_budget_gb: Optional[float] = Field(
        None, ge=0, description="keep a split on the device when it fits; None = automatic")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @model_validator(mode="before")
    @classmethod
    def _split_source_classes(cls, raw: Any) -> Any:
        """``source: synth100[0-49]`` is shorthand for ``source: synth100, classes: 0-49``."""
        if isinstance(raw, dict) and isinstance(raw.get("source"), str):
            match = _SOURCE_WITH_CLASSES.fullmatch(raw["source"].strip())
            if match:
                if raw.get("classes") is not None:
                    raise ValueError(f"source {raw['source']!r} selects classes and so does "
                                     f"classes={raw['classes']!r}; give them once")
                raw = {**raw, "source": match["source"], "classes": match["classes"]}
        return raw

    @field_validator("classes", mode="before")
    @classmethod
    def _canonical_classes(cls, value: Any) -> Optional[str]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # ``--set data.classes=7`` reads as an integer
        return None if value is None else format_classes(parse_classes(value))

    @property
    def label(self) -> str:
        """``synth100`` or ``synth100[0-49]``: the source with its class selection."""
        return self.source + (f"[{self.classes}]" if self.classes else "")


class ModelConfig(StrictModel):
    name: str = "resnet20"
    head: Literal["linear", "cosine"] = "linear"
    options: dict[str, Any] = Field(default_factory=dict, description="backbone keyword options")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    compile: bool = Field(False, description="torch.compile the model (opt-in)")


class OptimConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, lt=FLOAT32_MAX,
                      description="base learning rate (applied in float32, so below 3.4e38)")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(5e-4, ge=0)
    decay_norm_and_bias: bool = Field(
        False, description="apply weight decay to norm weights and biases too")


class ScheduleConfig(StrictModel):
    name: Literal["cosine", "step", "constant", "linear"] = Field(
        "cosine", description="after the warm-up: cosine to min_lr_ratio, step decay, "
        "constant, or linear to min_lr_ratio reached at the last step (with a warm-up: a "
        "triangle, e.g. the slow-start, fast-decay schedule of adversarial fine-tuning)")
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[int] = Field(default_factory=list, description="epochs, for 'step'")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor, for 'step'")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine/linear floor as a "
                                "fraction of lr")


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: Optional[float] = Field(None, gt=0, description="max gradient norm")
    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="EMA of weights; None = off")
    ema_warmup: bool = Field(False, description="the EMA's decay warms up as "
                             "1 - (1 + step)^(-2/3), capped at ema_decay (diffusion models' "
                             "practice), so a short run's average is not the initialisation's")
    amp: Literal["auto", "bf16", "off"] = Field("auto", description="bf16 autocast on CUDA")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints")
    keep_checkpoints: int = Field(1, ge=1)
    eval_every: int = Field(1, ge=1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto | cpu | cuda | cuda:N")
    mesa: bool = Field(False, description="Mesa memory-saving training (hundred.engine.mesa): "
                       "exact forward, 8-bit saved activations; ViTs only")

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads ``--set train.amp=off`` as False: take it as ``off``."""
        return "off" if value is False else value


class ProvenanceConfig(StrictModel):
    """Which protocol produced a run (copied into ``summary.json`` and every report row).

    ``conventional``: trained with hand-set hyperparameters; whoever reports the number may
    have tuned them on the very data it is reported on. ``tune-then-evaluate`` (Cha & Cho,
    "Hyperparameters in Continual Learning: a Reality Check", TMLR 2025): a ``tuning`` run is
    one trial of a study on the tuning data; an ``evaluation`` run trains with the study's
    frozen best parameters (``tuned_params``) on a different dataset (``tuned_on`` names the
    tuning data, ``tuning_fingerprint`` its identity, so loading it again is refused).
    """

    protocol: Literal["conventional", "tune-then-evaluate"] = "conventional"
    phase: Optional[Literal["tuning", "evaluation"]] = None
    study: Optional[str] = Field(None, description="the Optuna study that tuned / is tuning")
    trial: Optional[int] = Field(None, ge=0, description="the study's trial number (tuning)")
    tuned_on: Optional[str] = Field(None, description="the data the parameters were tuned on")
    tuning_fingerprint: Optional[str] = Field(None, description="data fingerprint of tuned_on")
    tuned_params: dict[str, Any] = Field(
        default_factory=dict, description="searched parameters (a trial's candidate or the "
        "study's best), as declared in the search space")

    @model_validator(mode="after")
    def _consistent(self) -> "ProvenanceConfig":
        if self.protocol == "conventional":
            extra = [k for k in ("phase", "study", "trial", "tuned_on", "tuning_fingerprint")
                     if getattr(self, k) is not None] + (["tuned_params"] if self.tuned_params else [])
            if extra:
                raise ValueError(f"a conventional run has no {', '.join(extra)}")
        elif self.phase is None:
            raise ValueError("a tune-then-evaluate run needs phase: tuning or evaluation")
        elif self.phase == "tuning" and (self.tuned_on or self.tuning_fingerprint):
            raise ValueError("a tuning run is on the tuning data; tuned_on is for evaluation runs")
        elif self.phase == "evaluation" and not (self.tuned_on and self.tuning_fingerprint):
            raise ValueError("an evaluation run must name tuned_on and tuning_fingerprint")
        return self


class RunConfig(StrictModel):
    """Everything one run needs. ``method_params`` are validated by the method itself.

    A track with its own config section (``Track.section``) validates through a subclass
    that adds it under the track's name (:func:`config_class`): ``config.<track>`` exists on
    that track's runs only, and a section given to another track is an unknown key.
    """

    track: str = DEFAULT_TRACK
    method: str = "erm"
    name: Optional[str] = Field(None, description="run directory name (default: generated); "
                                "one path component, so the run stays inside root")
    root: str = Field("runs", description="runs/<track>/<method>/<name>/")
    seed: int = Field(0, ge=0)
    quiet: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    method_params: dict[str, Any] = Field(default_factory=dict)
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: Optional[str]) -> Optional[str]:
        if name is not None:
            check_run_name(name)
        return name

    @model_validator(mode="after")
    def _milestones_inside_training(self) -> "RunConfig":
        bad = [m for m in self.schedule.milestones if not 0 < m < self.train.epochs]
        if self.schedule.name == "step" and bad:
            raise ValueError(f"schedule.milestones {bad} must lie in 1..{self.train.epochs - 1}")
        return self


def with_values(config: RunConfig, values: dict[str, Any], origin: str = "values") -> RunConfig:
    """A validated copy of ``config`` with dotted keys set (``{"optim.lr": 0.05}``); the keys
    of a dict field may be reached too (``model.options.width``). HundredError names a bad key."""
    raw = config.model_dump(mode="json")
    for key, value in values.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                if isinstance(node, dict) and part not in node:
                    child = node[part] = {}
                else:
                    raise HundredError(f"{origin}: {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return validate_config(raw, origin)


@functools.lru_cache(maxsize=None)
def _with_section(track: str, section: type[BaseModel]) -> type[RunConfig]:
    return create_model(f"{section.__name__.removesuffix('Config')}RunConfig",
                        __base__=RunConfig, __doc__=RunConfig.__doc__,
                        **{track: (section, Field(default_factory=section))})


def config_class(track: str) -> type[RunConfig]:
    """The run-config class of ``track``: :class:`RunConfig` plus the track's own section."""
    declared = get_track(track)
    return RunConfig if declared.section is None else _with_section(track, declared.section)


def validate_config(raw: dict[str, Any], origin: str = "values") -> RunConfig:
    """Validate a raw config mapping with its track's config class (HundredError otherwise)."""
    track = raw.get("track", DEFAULT_TRACK)
    if not isinstance(track, str):
        raise HundredError(f"invalid configuration ({origin}):\n  track: expected a track "
                           f"name, got {track!r}")
    model = config_class(track)
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise HundredError(_format_errors(error, origin, model)) from None


def _format_errors(error: ValidationError, origin: str, model: type[BaseModel]) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            parent = item["loc"][:-1]
            allowed = _allowed_keys(model, parent)
            lines.append(f"  {key}: unknown key; allowed here: {', '.join(allowed)}")
        else:
            got = f" (got {item['input']!r})" if item["loc"] else ""
            lines.append(f"  {key}: {item['msg']}{got}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
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
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        problem = str(error).splitlines()[0]
        raise HundredError(f"--set {text}: the value is not valid YAML ({problem}); quote text "
                           "or write a flow mapping such as {a: 1, b: 2}") from None
    return key.strip().split("."), parsed


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
    return validate_config(raw, origin)


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# Settings that never change a run's results: its identity, where and how verbosely it runs,
# how often it checkpoints or evaluates, and memory-layout or compiler choices. Reports and
# the settings digest ignore them, so runs differing only in these are one experiment.
RESULT_NEUTRAL_KEYS = frozenset({
    "seed", "name", "root", "quiet", "provenance", "train.device", "train.checkpoint_every",
    "train.keep_checkpoints", "train.eval_every", "data.eval_batch_size",
    "data.device_budget_gb", "model.channels_last", "model.compile"})


def result_settings(config: RunConfig, also_drop: Iterable[str] = ()) -> dict[str, Any]:
    """``config`` as a nested dict without :data:`RESULT_NEUTRAL_KEYS` (and the seed), nor
    the dotted keys of ``also_drop``."""
    settings = config.model_dump(mode="json")
    for key in (*RESULT_NEUTRAL_KEYS, *also_drop):
        *parents, last = key.split(".")
        node = settings
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return settings


def dump_yaml(config: RunConfig) -> str:
    """The resolved config as YAML (what a run directory stores and ``--config`` reads back)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
