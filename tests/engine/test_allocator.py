"""Freed tensor memory is reused instead of being mapped afresh on every allocation."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
if sys.argv[1] == "kept":
    from hundred.engine.allocator import keep_freed_memory
    assert keep_freed_memory()
def allocate(times):
    for _ in range(times):
        torch.ones(48 << 18)  # 48 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
allocate(10)  # the heap grows to its working size first
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
allocate(20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                            check=True, env={"PATH": "", "HUNDRED_MALLOC": ""})
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_keeping_freed_memory_avoids_faulting_it_in_again():
    system, kept = page_faults("system"), page_faults("kept")
    assert system > 20 * 10_000  # every 48 MiB tensor is faulted in page by page (12k pages)
    assert kept < system / 10
