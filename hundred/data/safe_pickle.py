"""A restricted unpickler for data files (CIFAR batches and the like).

Why: unpickling runs code. A pickle names globals (``os.system``, ``builtins.eval``, any
class) and calls them with arguments of its choosing, so loading a downloaded data file with
plain :func:`pickle.load` hands that file the machine. A *data* file never needs that: it is
containers, strings, numbers and numpy arrays. :func:`safe_load_pickle` resolves only the
handful of globals those need and refuses every other one *before* anything is called, with a
:class:`~hundred.errors.HundredError` that names the global and the file.

The allow-list (module, name) and why each entry is there:

* numpy arrays -- ``numpy.ndarray`` and ``numpy.dtype``; ``_reconstruct`` (protocols 0-4) and
  ``_frombuffer`` (protocol 5) from ``numpy.core.*`` (numpy 1.x) or ``numpy._core.*``
  (numpy 2.x), both spellings mapped to the installed numpy; ``scalar`` for numpy scalars
  such as ``np.float32(1.5)``. Nothing else from numpy (``numpy.load``, ``np.ma``, the
  testing helpers that ``exec`` strings ... are refused).
* builtins -- only constructors of plain values that protocols 0-2 cannot write as opcodes:
  ``set``, ``frozenset``, ``bytearray``, ``bytes`` (an empty ``bytes`` under protocol <= 2
  pickles as ``bytes()``) and ``complex``. They are pure constructors: whatever they are
  given, they build a value and run no code. Under the Python 2 name ``__builtin__`` too.
  ``eval``, ``exec``, ``getattr``, ``__import__``, ``open`` ... are refused.
* ``_codecs.encode`` -- protocol <= 2 from Python 3 writes every ``bytes`` value as
  ``_codecs.encode(text, "latin1")``. It is replaced by a wrapper that accepts only the
  latin-1 codec, so the codec registry is not reachable either.

Everything else -- ``collections.OrderedDict``, any user class, ``copyreg._reconstructor``,
``os``/``posix``/``subprocess`` -- is refused. Persistent ids and out-of-band buffers are
refused by :class:`pickle.Unpickler` itself (no ``persistent_load``, no ``buffers``).

This stops code execution, not resource exhaustion: a hostile file can still ask for a huge
array and fail with ``MemoryError``.
"""

from __future__ import annotations

import pickle
from functools import lru_cache
from typing import Any, BinaryIO, Callable

from hundred.errors import HundredError


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol <= 2 uses it for bytes, and only that."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode only for latin-1 text, got {encoding!r}")
    return text.encode("latin1")


_BUILTIN_CONSTRUCTORS: dict[str, type] = {
    "set": set,
    "frozenset": frozenset,
    "bytearray": bytearray,
    "bytes": bytes,
    "complex": complex,
}


@lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """(module, name) -> the object the unpickler may use; built once, imports only numpy."""
    import numpy as np

    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core import multiarray, numeric
    else:  # numpy 1.x
        from numpy.core import multiarray, numeric

    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # Files written by either numpy generation name the other's modules; map both to ours.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    for module in ("builtins", "__builtin__"):  # __builtin__: Python 2 files
        for name, constructor in _BUILTIN_CONSTRUCTORS.items():
            allowed[(module, name)] = constructor
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are those of :func:`_allowed_globals`."""

    def __init__(self, file: BinaryIO, *, encoding: str, what: str) -> None:
        super().__init__(file, encoding=encoding)
        self.what = what

    def find_class(self, module: str, name: str) -> Any:
        # Look the pair up in our own table: nothing is imported, nothing resolved by name.
        found = _allowed_globals().get((module, name))
        if found is None:
            raise HundredError(
                f"refusing to unpickle {self.what}: it references {module}.{name}, which is "
                f"not a plain container or numpy array (a data file must never run code)"
            )
        return found


def safe_load_pickle(file: BinaryIO, *, encoding: str = "bytes", what: str = "") -> Any:
    """Unpickle a data file admitting only containers, strings, numbers and numpy arrays.

    ``encoding`` decodes Python 2 ``str`` objects (``"bytes"`` keeps them as bytes, as the
    CIFAR files need); ``what`` names the file in errors (defaults to ``file.name``). A
    refused global or a malformed file raises :class:`HundredError`; see the module docstring
    for the allow-list.
    """
    what = what or str(getattr(file, "name", "") or "pickle data")
    try:
        return _DataUnpickler(file, encoding=encoding, what=what).load()
    except HundredError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # only allow-listed code ran, so this is a malformed file
        raise HundredError(
            f"cannot unpickle {what}: {type(error).__name__}: {error}"
        ) from error
