"""Backdoor poisons of unlabelled pre-training data, and their attack success rate.

BLTO — Sun, Zhang, Lu, Chen, Wang, Chen & Lin, "Backdoor Contrastive Learning via Bi-level
Trigger Optimization", ICLR 2024 (arXiv 2404.07863), Sec. 4 and its Algorithm 1. A trigger
generator ``g_psi`` maps an image to a triggered copy within an L∞ ball of radius ``eps``
(8/255); it is trained by the bi-level problem

    max_psi  E_{x ~ D, x_r ~ D_target, t1, t2 ~ T}  S(f_theta*(t1(g_psi(x))), f_theta*(t2(x_r)))
    s.t.     theta* = argmin_theta  L_CL(f_theta; D_clean ∪ {g_psi(x) : x ∈ D_poison}),

with ``S`` the cosine similarity, ``T`` the contrastive augmentations and ``x_r`` reference
images of the target class: the inner problem simulates the victim's contrastive learning
on the poisoned set with a surrogate (SimSiam), the outer one pulls augmented triggered
views of any image toward the target class in the surrogate's embedding. As the paper's
Algorithm 1, the two are alternated (``inner_steps`` SGD steps of the surrogate, then one
generator step), and the surrogate is re-initialised every ``reinit_every`` outer steps so
that the trigger keeps working all along a victim's training. The torch side (generator,
training, application) is :mod:`hundred.tracks.robust.blto`.

Fixed patch (the baseline) — Saha, Tejankar, Koohpayegani & Pirsiavash, "Backdoor Attacks on
Self-Supervised Learning", CVPR 2022: a square patch of random colours (from the key) pasted
over the bottom-right corner (the paper pastes at random places; a fixed corner makes the
trigger one pattern that evaluation applies identically).

Both poison the *target class's* training images (SSL-Backdoor's and BLTO's threat model: the
poisoned images carry the target's content, so contrastive learning ties trigger and target
together without labels): exactly ``round(fraction * N)`` rows with ``N`` the whole split, so
"1 % poisoning" is 1 % of the pre-training set; too few target images is an error. The
trigger is written next to the data as ``trigger.safetensors`` (its sha256 in meta.json), so
:func:`backdoor_run` (``hundred backdoor RUN_DIR --poison DIR``) applies the very same
trigger to the test images. Its attack success rate is the share of triggered test images
of the *other* classes that a linear probe on the victim's frozen features assigns to the
target class; the probe trains on clean labelled data (the train split minus the poisoned
rows), as a downstream user would.
"""

from __future__ import annotations

import json
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hundred.errors import HundredError
from hundred.tracks.robust.poison import SELECTION_STREAM, Poison, register_poison

if TYPE_CHECKING:
    import torch

TRIGGER_FILE = "trigger.safetensors"
TRIGGER_FORMAT = "hundred-backdoor-trigger"
TRIGGER_STREAM, TRAINING_STREAM = 2, 3  # random streams of the key (CUDA uses 0 and 1)
SUMMARY = "summary.json"
#: SSL-Backdoor's patch: 50 px on 224 px ImageNet images
PATCH_SHARE = 50 / 224


def _fraction(value: Any) -> Any:
    """``"8/255"`` -> 0.0313...; numbers and anything else pass through to pydantic."""
    if isinstance(value, str) and "/" in value:
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            return value
    return value


class BackdoorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target_class: int = Field(0, ge=0, description="the attack's target class: its training "
                              "images are poisoned, and triggered images should land in it")


class PatchParams(BackdoorParams):
    size: int = Field(0, ge=0, description="side of the square patch in pixels; 0: 50/224 of "
                      "the image side, SSL-Backdoor's 50 px on 224 px images (7 px at 32 px)")


class BltoParams(BackdoorParams):
    eps: float = Field(8 / 255, gt=0, le=1, description="L∞ budget of the trigger in pixel "
                       "units [0, 1] (paper and code: 8/255); fractions such as 8/255 accepted")
    trigger_form: Literal["project", "residual"] = Field(
        "project", description="project: the generator outputs an image ((tanh + 1) / 2) that "
        "is clipped into the eps-ball around the input (the code's); residual: x + eps * "
        "tanh(g(x))")
    steps: int = Field(500, ge=1, description="outer (generator) steps N (not given in the "
                       "paper)")
    inner_steps: int = Field(5, ge=0, description="surrogate SimSiam steps J before each "
                             "generator step (not given in the paper)")
    reinit_every: int = Field(100, ge=0, description="re-initialise the surrogate every K "
                              "outer steps (paper: 'regularly'; 0: never)")
    batch_size: int = Field(128, ge=2, description="images per inner and per outer batch")
    generator_lr: float = Field(2e-4, gt=0, description="Adam lr of the generator, betas "
                                "(0.5, 0.999) (the ResNet generator's recipe, Naseer et al. "
                                "2019)")
    surrogate_lr: float = Field(0.06, gt=0, description="SGD lr of the surrogate (momentum "
                                "0.9, weight decay 5e-4: SimSiam's CIFAR recipe, 0.03 x "
                                "batch/256 at batch 512)")
    surrogate: str = Field("resnet18_lowres", description="surrogate backbone (paper: "
                           "ResNet-18); any hundred model name")
    surrogate_options: dict[str, Any] = Field(default_factory=dict, description="model "
                                              "options of the surrogate, e.g. {width: 8}")
    proj_dim: int = Field(2048, ge=1, description="SimSiam projector width (hidden = output)")
    pred_hidden_dim: int = Field(512, ge=1, description="SimSiam predictor bottleneck")
    augment: str = Field("simclr-small", description="view recipe of the surrogate and of the "
                         "outer step's t1, t2 (hundred.data.augment.view_specs)")
    generator_width: int = Field(64, ge=1, description="channels of the generator's first "
                                 "layer (ngf; the code: 64)")
    generator_blocks: int = Field(2, ge=0, description="residual blocks at 1/4 resolution "
                                  "(the code: 2 for CIFAR-size images)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout in the residual blocks")

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> Any:
        return _fraction(value)

    @field_validator("surrogate_options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        if isinstance(value, str):  # -o surrogate_options={width: 8}
            import yaml

            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as error:
                raise ValueError(f"not YAML: {error}") from None
            return value if value is not None else {}
        return value

    @field_validator("augment")
    @classmethod
    def _recipe(cls, value: str) -> str:
        from hundred.data.augment import VIEW_RECIPES

        if value not in VIEW_RECIPES:
            raise ValueError(f"unknown view recipe; known: {', '.join(VIEW_RECIPES)}")
        return value


# ------------------------------------------------------------------------------- poisons


class Backdoor(Poison):
    """A poison of the target class's images that plants a trigger (base of blto, patch)."""

    selection: ClassVar[str] = (
        "round(fraction * N) rows, N the whole split, drawn uniformly without replacement "
        "among the target class's rows, from the key")

    def __init__(self, key: int, num_classes: int, params: BaseModel) -> None:
        super().__init__(key, num_classes, params)
        assert isinstance(params, BackdoorParams)
        if params.target_class >= num_classes:
            raise HundredError(f"poison {self.name}: target_class {params.target_class} is out "
                               f"of range (the data has {num_classes} classes: 0-"
                               f"{num_classes - 1})")
        self.target_class = params.target_class

    def select(self, labels: np.ndarray, fraction: float) -> np.ndarray:
        return target_rows(labels, self.target_class, fraction, self.key)

    def record(self) -> dict[str, Any]:
        return {"target_class": self.target_class}


def target_rows(labels: np.ndarray, target_class: int, fraction: float, key: int
                ) -> np.ndarray:
    """Boolean mask of ``round(fraction * len(labels))`` rows of class ``target_class``, drawn
    uniformly without replacement from the key's selection stream; too few target images is
    a :class:`HundredError`."""
    chosen = math.floor(fraction * len(labels) + 0.5)
    candidates = np.flatnonzero(np.asarray(labels) == target_class)
    if chosen > len(candidates):
        raise HundredError(f"--fraction {fraction} asks for {chosen} poisoned images of the "
                           f"{len(labels)}, but the target class {target_class} has only "
                           f"{len(candidates)}: a backdoor poisons target-class images only; "
                           f"lower --fraction")
    mask = np.zeros(len(labels), dtype=bool)
    if chosen:
        rng = np.random.default_rng([key, SELECTION_STREAM])
        mask[rng.choice(candidates, size=chosen, replace=False)] = True
    return mask


def patch_side(size: int, image_side: int) -> int:
    """The patch side in pixels: ``size``, or (0) 50/224 of ``image_side``; at least 1 and
    at most the image side."""
    side = size or max(1, round(PATCH_SHARE * image_side))
    return min(side, image_side)


def patch_pattern(key: int, side: int) -> np.ndarray:
    """The key's patch, uint8 ``(side, side, 3)`` of uniform random colours."""
    rng = np.random.default_rng([key, TRIGGER_STREAM])
    return rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)


def apply_patch(images: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Copies of ``images`` (uint8 ``N, H, W, 3``) with ``pattern`` over the bottom-right
    corner."""
    out = np.array(images, dtype=np.uint8, copy=True)
    side = pattern.shape[0]
    out[:, -side:, -side:, :] = pattern
    return out


@register_poison("patch")
class Patch(Backdoor):
    """A fixed random-colour square patch on the target class's images (SSL-Backdoor)."""

    paper = ("Saha, Tejankar, Koohpayegani & Pirsiavash, Backdoor Attacks on Self-Supervised "
             "Learning, CVPR 2022 (a fixed corner instead of random places)")
    Params = PatchParams
    _pattern: np.ndarray | None = None

    def pattern(self, image_side: int) -> np.ndarray:
        assert isinstance(self.params, PatchParams)
        side = patch_side(self.params.size, image_side)
        if self._pattern is None or self._pattern.shape[0] != side:
            self._pattern = patch_pattern(self.key, side)
        return self._pattern

    def prepare(self, images: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                device: str = "auto") -> None:
        self.pattern(int(min(images.shape[1:3])))

    def apply(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.array(images, copy=True)
        return apply_patch(images, self.pattern(int(min(images.shape[1:3]))))

    def write_files(self, directory: Path) -> dict[str, Any]:
        if self._pattern is None:
            raise HundredError("poison patch: prepare() first (the patch size needs the image "
                               "size)")
        return write_trigger(directory, "patch", self.params.model_dump(),
                             {"patch": self._pattern})

    def record(self) -> dict[str, Any]:
        side = None if self._pattern is None else int(self._pattern.shape[0])
        return {**super().record(), "patch": f"{side}x{side} random colours, bottom-right "
                "corner, from the key"}


@register_poison("blto")
class Blto(Backdoor):
    """Bi-level optimised trigger generator (BLTO, ICLR 2024)."""

    paper = ("Sun, Zhang, Lu, Chen, Wang, Chen & Lin, Backdoor Contrastive Learning via Bi-level "
             "Trigger Optimization, ICLR 2024 (arXiv 2404.07863)")
    Params = BltoParams

    def __init__(self, key: int, num_classes: int, params: BaseModel) -> None:
        super().__init__(key, num_classes, params)
        self.generator: Any = None
        self.history: dict[str, Any] = {}
        self.device = "cpu"

    def prepare(self, images: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                device: str = "auto") -> None:
        from hundred.engine.trainer import resolve_device
        from hundred.tracks.robust.blto import train_blto

        assert isinstance(self.params, BltoParams)
        if min(images.shape[1:3]) < 8:
            raise HundredError("poison blto: images need at least 8 x 8 pixels (the generator "
                               "works at a quarter of the resolution)")
        self.device = str(resolve_device(device))
        seed = int(np.random.default_rng([self.key, TRAINING_STREAM]).integers(2**62))
        self.generator, self.history = train_blto(np.asarray(images), np.asarray(labels),
                                                  mask, self.params, seed, self.device)

    def apply(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        from hundred.tracks.robust.blto import apply_generator

        if self.generator is None:
            raise HundredError("poison blto: prepare() first (it trains the generator)")
        return apply_generator(self.generator, images, self.device)

    def write_files(self, directory: Path) -> dict[str, Any]:
        from hundred.tracks.robust.blto import generator_tensors

        return write_trigger(directory, "blto", self.params.model_dump(),
                             generator_tensors(self.generator))

    def record(self) -> dict[str, Any]:
        return {**super().record(), "training": self.history}


# ------------------------------------------------------------------------------ triggers


def write_trigger(directory: Path, method: str, params: dict[str, Any],
                  tensors: dict[str, Any]) -> dict[str, Any]:
    """Write ``trigger.safetensors`` (``tensors``: numpy arrays; the method and its params in
    the header) atomically into ``directory``; returns the meta.json facts about it."""
    from safetensors.numpy import save

    from hundred.io import atomic_open, sha256_file

    header = {"format": TRIGGER_FORMAT, "method": method, "params": json.dumps(params)}
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    with atomic_open(directory / TRIGGER_FILE, "wb") as handle:
        handle.write(save(arrays, metadata=header))
    path = directory / TRIGGER_FILE
    return {"trigger": {"file": TRIGGER_FILE, "sha256": sha256_file(path),
                        "bytes": path.stat().st_size, "method": method}}


class StoredTrigger:
    """A trigger read back from a poisoned pack: :meth:`apply` plants it in uint8 images."""

    def __init__(self, method: str, params: dict[str, Any], tensors: dict[str, np.ndarray],
                 source: Path) -> None:
        self.method, self.params, self.tensors, self.source = method, params, tensors, source
        self._generator: Any = None

    @property
    def target_class(self) -> int:
        return int(self.params["target_class"])

    def apply(self, images: np.ndarray, device: str = "cpu") -> np.ndarray:
        """Triggered copies of ``images`` (uint8 ``N, H, W, 3``), uint8."""
        if self.method == "patch":
            return apply_patch(images, self.tensors["patch"])
        from hundred.tracks.robust.blto import apply_generator, load_generator

        if self._generator is None:
            self._generator = load_generator(BltoParams(**self.params), self.tensors)
        return apply_generator(self._generator, images, device)


def load_trigger(poisoned: Path) -> StoredTrigger:
    """The trigger of the poisoned pack ``poisoned`` (checked against meta.json's sha256)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from hundred.data.pack import META, is_packed
    from hundred.io import sha256_file

    if not is_packed(poisoned):
        raise HundredError(f"--poison {poisoned} is not a packed dataset (hundred data poison "
                           "... --out DIR writes one)")
    meta = json.loads((poisoned / META).read_text(encoding="utf-8"))
    record = meta.get("poison")
    trigger = record.get("trigger") if isinstance(record, dict) else None
    if not isinstance(trigger, dict) or trigger.get("file") != TRIGGER_FILE:
        what = f"a {record.get('method')} poison" if isinstance(record, dict) else "not poisoned"
        raise HundredError(f"--poison {poisoned} holds no backdoor trigger ({what}); poison with "
                           "--method blto or patch")
    path = poisoned / TRIGGER_FILE
    if not path.is_file():
        raise HundredError(f"{path} is missing (meta.json lists it)")
    if sha256_file(path) != trigger.get("sha256"):
        raise HundredError(f"{path}: sha256 differs from meta.json's; the trigger was changed")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise HundredError(f"{path} is unreadable ({error})") from None
    if header.get("format") != TRIGGER_FORMAT or header.get("method") not in ("blto", "patch"):
        raise HundredError(f"{path} is not a hundred backdoor trigger")
    return StoredTrigger(header["method"], json.loads(header["params"]), tensors, poisoned)


# ----------------------------------------------------------------- attack success rate


def attack_success_rate(train_x: torch.Tensor, train_y: torch.Tensor,
                        triggered_x: torch.Tensor, labels: torch.Tensor, target_class: int,
                        num_classes: int, **probe: Any) -> float:
    """Attack success rate (%): the share of triggered images whose true class is *not*
    ``target_class`` that the linear probe trained on ``(train_x, train_y)`` assigns to
    ``target_class``. The probe is :func:`hundred.tracks.ssl.evaluation.linear_probe`
    (``probe``: its options, e.g. epochs, lr, seed); its top-1 against the label
    ``target_class`` on those images is the rate (the probe is deterministic given its seed,
    so it is the same classifier as the clean-accuracy probe of the same data and seed)."""
    import torch

    from hundred.tracks.ssl.evaluation import linear_probe

    others = labels != target_class
    if not bool(others.any()):
        raise HundredError("no test image outside the target class: the attack success rate "
                           "is undefined")
    wanted = torch.full((int(others.sum()),), target_class, dtype=torch.long,
                        device=labels.device)
    return linear_probe(train_x, train_y, triggered_x[others], wanted, num_classes,
                        **probe).top1


def backdoor_run(run_dir: Path, poisoned: Path, *, device: str = "auto",
                 batch_size: int | None = None, probe_epochs: int | None = None,
                 probe_data: Path | None = None) -> dict[str, Any]:
    """Attack success rate of the trigger of ``poisoned`` against the finished run
    ``run_dir`` (e.g. an ssl run pre-trained on ``poisoned``, or on clean data for the
    baseline rate), and the probe's clean top-1; written into the run's summary
    (``backdoor_asr``, ``backdoor_clean_top1``, ``backdoor``). Bad input writes nothing.

    The probe is the downstream user's: it trains on the *clean* labelled training set, the
    pack the poison was made from (``probe_data``, default the source recorded in the
    poison's meta.json, checked by its fingerprint). Training it on the poisoned pack's other
    rows instead would drop the target class's poisoned images, and with it the whole target
    class when every target-class image is poisoned."""
    import torch

    from hundred.data.loader import BatchLoader
    from hundred.data.pack import load_packed
    from hundred.engine.init import load_finished_run
    from hundred.engine.trainer import resolve_device
    from hundred.models import create
    from hundred.tracks.ssl.evaluation import extract_features, linear_probe

    for value, what in ((batch_size, "--batch-size"), (probe_epochs, "--probe-epochs")):
        if value is not None and value < 1:
            raise HundredError(f"{what} must be >= 1, got {value}")
    run_dir, poisoned = Path(run_dir), Path(poisoned)
    trigger = load_trigger(poisoned)
    found = load_finished_run(run_dir, "backdoor")
    config, summary = found.config, found.summary
    dataset = load_packed(poisoned)
    classes = summary.get("classes")
    if isinstance(classes, bool) or not isinstance(classes, int):
        raise HundredError(f"{run_dir} has no 'classes' in its summary: give a finished ssl "
                           "(or classify) run")
    if classes != dataset.num_classes:
        raise HundredError(f"{run_dir} was trained on {classes} classes, the data {poisoned} "
                           f"has {dataset.num_classes}")
    target = trigger.target_class
    if not 0 <= target < classes:
        raise HundredError(f"the trigger's target class {target} is out of range for "
                           f"{classes} classes")
    meta = json.loads((poisoned / "meta.json").read_text(encoding="utf-8"))
    record = meta["poison"]
    train, val = dataset.arrays("train"), dataset.arrays("val")
    size = config.data.image_size or train.resolution[0]
    model = create(config.model.name, classes, head=config.model.head, img_size=size,
                   **config.model.options)
    missing = [key for key in model.state_dict() if key.startswith("backbone.")
               and key not in found.weights]
    if missing:
        raise HundredError(f"the weights of {run_dir} lack its backbone ({missing[0]} ...)")
    try:
        model.load_state_dict({k: v for k, v in found.weights.items()
                               if k.startswith("backbone.")}, strict=False)
    except (RuntimeError, TypeError) as error:
        raise HundredError(f"the weights of {run_dir} do not fit its model "
                           f"({str(error).splitlines()[0][:300]})") from None
    torch_device = resolve_device(device)
    model.to(torch_device)
    started = time.perf_counter()

    clean_train = _clean_source(record, probe_data).arrays("train")
    if len(clean_train.labels) != len(train.labels) or not np.array_equal(
            np.asarray(clean_train.labels), np.asarray(train.labels)):
        raise HundredError(f"the probe data's train labels differ from those of {poisoned}: "
                           "give the pack it was poisoned from (--probe-data)")
    val_images = np.asarray(val.images)
    triggered = trigger.apply(val_images, str(torch_device))
    data = config.data

    def features(images: np.ndarray, labels: np.ndarray, indices: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        loader = BatchLoader((images, labels), batch_size=batch_size or data.eval_batch_size,
                             indices=indices, shuffle=False, drop_last=False, seed=0,
                             device=torch_device, train=False, out_size=data.image_size,
                             mean=data.mean, std=data.std)
        return extract_features(model, loader, torch_device)

    labels_train, labels_val = np.asarray(train.labels), np.asarray(val.labels)
    train_x, train_y = features(np.asarray(clean_train.images), labels_train)
    val_x, val_y = features(val_images, labels_val)
    trig_x, _ = features(triggered, labels_val)
    ssl = getattr(config, "ssl", None)
    probe = {"epochs": probe_epochs or (ssl.probe_epochs if ssl is not None else 100),
             "lr": ssl.probe_lr if ssl is not None else 0.1,
             "batch_size": ssl.probe_batch_size if ssl is not None else 256,
             "seed": config.seed}
    clean = linear_probe(train_x, train_y, val_x, val_y, classes, **probe)
    asr = attack_success_rate(train_x, train_y, trig_x, val_y, target, classes, **probe)
    entry = {
        "poison": str(poisoned.absolute()), "method": trigger.method, "target_class": target,
        "trigger_sha256": record["trigger"]["sha256"], "fraction": record.get("fraction"),
        "poisoned": record.get("poisoned"), "of": record.get("of"),
        "asr_images": int((labels_val != target).sum()), "probe_train_images": int(len(labels_train)),
        "probe_data": str(_source_path(record, probe_data)),
        "probe": probe, "seconds": round(time.perf_counter() - started, 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _record(run_dir / SUMMARY, asr, clean.top1, entry)
    return {"backdoor_asr": asr, "backdoor_clean_top1": clean.top1, **entry}


def _source_path(record: dict[str, Any], probe_data: Path | None) -> Path:
    if probe_data is not None:
        return Path(probe_data)
    return Path(record.get("source", {}).get("path", ""))


def _clean_source(record: dict[str, Any], probe_data: Path | None) -> Any:
    """The clean pack the poison was made from (or ``probe_data``), checked by the
    fingerprint the poison recorded."""
    from hundred.data.pack import is_packed, load_packed
    from hundred.data.subset import fingerprint

    path = _source_path(record, probe_data)
    if not is_packed(path):
        raise HundredError(f"the probe trains on the clean pack the poison was made from, "
                           f"{path}, which is not a packed dataset (moved?): give it with "
                           "--probe-data PACKED")
    source = load_packed(path)
    expected = record.get("source", {}).get("fingerprint")
    if expected is not None and fingerprint(source) != expected:
        raise HundredError(f"{path} is not the pack the poison was made from (its fingerprint "
                           "differs)")
    return source


def _record(path: Path, asr: float, clean: float, entry: dict[str, Any]) -> None:
    """Append the result to the summary's ``backdoors`` list (one entry per trigger
    evaluated) and set ``backdoor_asr``, ``backdoor_clean_top1`` and ``backdoor`` to it."""
    from hundred.tracks.robust.evaluate import record_in_summary

    record_in_summary(path, "backdoors", {"backdoor_asr": asr, "backdoor_clean_top1": clean,
                                          **entry},
                      {"backdoor_asr": asr, "backdoor_clean_top1": clean, "backdoor": entry})
