"""Dataset sources, by name: ``open_source("synth100")``, ``open_source("cifar10:/data/cifar")``.

A spec is ``NAME`` or ``NAME:ARGUMENT`` (a path, or ``LIST:PATH`` for ``imagenet100``).
Keyword options are the builder's own (``classes=10`` for synth100, ``res=16`` ...); options
given as strings (from the command line) are converted to the type of the builder's default.
Builders are imported lazily so that ``hundred --help`` stays fast.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from hundred.data.dataset import Dataset
from hundred.errors import HundredError

# name -> ("module:function", one-line description). The function takes the spec's argument
# (None when absent) and typed keyword options, and returns a Dataset.
SOURCES: dict[str, tuple[str, str]] = {
    "synth100": ("hundred.data.sources.synth:open_synth100",
                 "built-in procedural 100-class RGB images (no files needed)"),
    "synth100-events": ("hundred.data.sources.events:open_synth100_events",
                        "synth100 seen by a moving event camera: binary ON/OFF frames, "
                        "bit-packed (a DVS stand-in)"),
    "digits": ("hundred.data.sources.digits:open_digits",
               "scikit-learn's bundled handwritten digits, 10 classes (no files needed)"),
    "cifar10": ("hundred.data.sources.cifar:open_cifar10",
                "CIFAR-10 python files: cifar10:PATH (folder or .tar.gz)"),
    "cifar100": ("hundred.data.sources.cifar:open_cifar100",
                 "CIFAR-100 python files: cifar100:PATH (folder or .tar.gz)"),
    "imagefolder": ("hundred.data.sources.imagefolder:open_imagefolder",
                    "train/ + val/ trees of class folders: imagefolder:PATH"),
    "imagenet100": ("hundred.data.sources.imagefolder:open_imagenet100",
                    "ImageNet folder restricted to a 100-class list: imagenet100:LIST:PATH"),
}


def _builder(name: str) -> Callable[..., Dataset]:
    if name not in SOURCES:
        raise HundredError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    module_name, _, func_name = SOURCES[name][0].partition(":")
    return getattr(importlib.import_module(module_name), func_name)


def coerce_options(func: Callable[..., Any], options: dict[str, Any], what: str) -> dict[str, Any]:
    """Check ``options`` against ``func``'s keyword parameters; convert strings to their types.

    Unknown names and unconvertible values raise :class:`HundredError` naming the option and
    what is allowed, before any work starts.
    """
    params = {
        name: param
        for name, param in inspect.signature(func).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    coerced: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params:
            allowed = ", ".join(params) or "none"
            raise HundredError(f"{what} has no option {key!r}; allowed: {allowed}")
        default = params[key].default
        if isinstance(value, str) and default is not inspect.Parameter.empty and default is not None \
                and not isinstance(default, str):
            try:
                if isinstance(default, bool):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("true", "1", "yes")
                else:
                    value = type(default)(value)
            except ValueError:
                raise HundredError(
                    f"{what} option {key}={value!r}: expected {type(default).__name__}"
                ) from None
        coerced[key] = value
    return coerced


def open_source(spec: str, **options: Any) -> Dataset:
    """Open the source named by ``spec`` with its options; see :data:`SOURCES`."""
    name, _, argument = spec.partition(":")
    builder = _builder(name)
    return builder(argument or None, **coerce_options(builder, options, f"source {name}"))
