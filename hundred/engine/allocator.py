"""Keep freed tensor memory in the process on CPU instead of handing it back to the kernel.

PyTorch's CPU tensors come from glibc's ``malloc``. glibc serves blocks above
``M_MMAP_THRESHOLD`` (128 KiB at start, raised dynamically up to 32 MiB) with a fresh
``mmap`` and returns them with ``munmap`` when freed, and it trims the heap's top above
``M_TRIM_THRESHOLD``. A training loop allocates and frees the same large activations on
every batch, and evaluation at batch 512 makes activations above 32 MiB, which are always
mapped afresh. Each new mapping is then faulted in page by page, so the kernel zeroes
memory over and over. In the whole WA run of docs/speed.md (2-core CPU), 12 % of the wall
time was system time, with 12.8 M minor page faults; with this module, 0.7 % and 0.31 M.

:func:`keep_freed_memory` raises both thresholds once per process (``mallopt``), so freed
blocks are reused from the heap. It is what ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``
does, without needing the variable to be set before the interpreter starts. The cost is
that memory freed by the run stays reserved by the process (up to the trim threshold) rather
than returning to the system, which a training process would ask for again anyway.

It only acts on Linux with glibc, and stays off when ``GLIBC_TUNABLES`` already sets a
``malloc`` tunable or ``HUNDRED_MALLOC=system`` is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks up to 256 MiB come from the heap, not fresh mappings
TRIM_THRESHOLD = 512 << 20  # keep up to 512 MiB of freed memory at the heap's top

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True if they were set
    now or before, False where it does not apply (not glibc, opted out, or refused)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("HUNDRED_MALLOC") == "system":
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user chose the allocator's settings
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library: nothing to tune
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
