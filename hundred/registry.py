"""One registry of tracks and methods. A method registers itself with ``@register``.

Method modules live in ``hundred/tracks/<track>/methods/<method>.py`` and are imported on
demand, so adding a method is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Callable, TypeVar

from hundred.errors import HundredError

if TYPE_CHECKING:  # importing the method base pulls in torch; the registry itself must not
    from hundred.engine.method import Method

METHODS: dict[tuple[str, str], "type[Method]"] = {}
M = TypeVar("M", bound="type[Method]")


def register(track: str, name: str) -> Callable[[M], M]:
    """Class decorator: make ``cls`` the method ``track/name``."""

    def decorate(cls: M) -> M:
        cls.track, cls.name = track, name
        METHODS[(track, name)] = cls
        return cls

    return decorate


def tracks() -> list[str]:
    """Track packages under ``hundred.tracks``."""
    import hundred.tracks

    return sorted(m.name for m in pkgutil.iter_modules(hundred.tracks.__path__) if m.ispkg)


def _import_methods(track: str) -> None:
    try:
        package = importlib.import_module(f"hundred.tracks.{track}.methods")
    except ModuleNotFoundError:
        raise HundredError(f"unknown track {track!r}; known: {', '.join(tracks())}") from None
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def methods(track: str) -> dict[str, "type[Method]"]:
    """All methods of ``track``, by name."""
    _import_methods(track)
    return {name: cls for (t, name), cls in sorted(METHODS.items()) if t == track}


def get_method(track: str, name: str) -> "type[Method]":
    found = methods(track)
    if name not in found:
        raise HundredError(f"unknown method {track}/{name}; known: {', '.join(found) or 'none'}")
    return found[name]
