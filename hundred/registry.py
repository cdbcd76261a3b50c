"""One registry of tracks and methods.

Tracks are packages that export ``TRACK`` (a :class:`~hundred.track.Track`): every folder
under ``hundred/tracks/``, plus the packages named (comma-separated) in the
``HUNDRED_TRACKS`` environment variable, so a track can live outside this repository.
A method registers itself with ``@register(track, name)``; method modules live in
``<track package>.methods`` and are imported on demand, so adding a method is adding one
file and adding a track is adding a folder.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TYPE_CHECKING, Callable, TypeVar

from hundred.errors import HundredError
from hundred.track import Track

if TYPE_CHECKING:  # importing the method base pulls in torch; the registry itself must not
    from hundred.engine.method import Method

PLUGINS_VARIABLE = "HUNDRED_TRACKS"
# The track of a config that names none (plain supervised training).
DEFAULT_TRACK = "classify"

METHODS: dict[tuple[str, str], "type[Method]"] = {}
M = TypeVar("M", bound="type[Method]")


def register(track: str, name: str) -> Callable[[M], M]:
    """Class decorator: make ``cls`` the method ``track/name``."""

    def decorate(cls: M) -> M:
        cls.track, cls.name = track, name
        METHODS[(track, name)] = cls
        return cls

    return decorate


def _track_packages() -> dict[str, str]:
    """Track name -> package: the folders of ``hundred.tracks``, then ``HUNDRED_TRACKS``."""
    import hundred.tracks

    found = {m.name: f"hundred.tracks.{m.name}"
             for m in pkgutil.iter_modules(hundred.tracks.__path__) if m.ispkg}
    for package in filter(None, (p.strip() for p in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        track = _load(package)
        if track.name in found and found[track.name] != package:
            raise HundredError(f"{PLUGINS_VARIABLE}: {package} declares track {track.name!r}, "
                               f"which {found[track.name]} already provides")
        found[track.name] = package
    return found


def _load(package: str) -> Track:
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as error:
        raise HundredError(f"track package {package} cannot be imported: {error}") from None
    track = getattr(module, "TRACK", None)
    if not isinstance(track, Track):
        raise HundredError(f"track package {package} exports no TRACK (a hundred.track.Track)")
    return track


def tracks() -> list[str]:
    """The names of every available track."""
    return sorted(_track_packages())


def get_track(name: str) -> Track:
    """The :class:`Track` called ``name``; HundredError lists the known ones otherwise."""
    packages = _track_packages()
    if name not in packages:
        raise HundredError(f"unknown track {name!r}; known: {', '.join(sorted(packages))}")
    track = _load(packages[name])
    if track.name != name:
        raise HundredError(f"{packages[name]} exports the track {track.name!r}, not {name!r}")
    return track


def methods(track: str) -> dict[str, "type[Method]"]:
    """All methods of ``track``, by name (each a subclass of the track's method base)."""
    declared = get_track(track)
    try:
        package = importlib.import_module(f"{declared.package}.methods")
    except ModuleNotFoundError:
        raise HundredError(f"track {track} has no methods package ({declared.package}.methods)"
                           ) from None
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    found = {name: cls for (t, name), cls in sorted(METHODS.items()) if t == track}
    base = declared.method_base_class
    for name, cls in found.items():
        if not issubclass(cls, base):
            raise HundredError(f"method {track}/{name} must subclass {base.__name__}")
    return found


def get_method(track: str, name: str) -> "type[Method]":
    """The method class ``track/name``; HundredError lists the track's methods otherwise."""
    found = methods(track)
    if name not in found:
        raise HundredError(f"unknown method {track}/{name}; known: {', '.join(found) or 'none'}")
    return found[name]
