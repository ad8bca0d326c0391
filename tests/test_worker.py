"""The Ray task's process-level settings (`scalesweep/worker.py`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

PROBE = """
import ctypes, ctypes.util
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
    )]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p

def mmapped_while_held(size):
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    held = libc.mallinfo2().hblkhd - before
    libc.free(ctypes.c_void_p(block))
    return held

print(mmapped_while_held(8 << 20))
from scalesweep.worker import keep_freed_memory
print(keep_freed_memory())
print(mmapped_while_held(8 << 20), mmapped_while_held(32 << 20))
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_worker_serves_large_blocks_from_the_heap_it_keeps():
    """Before: an 8 MiB block is a fresh mmap (page-faulted on first touch, unmapped on free).
    After `keep_freed_memory`: blocks up to 64 MiB come from the heap (none mmapped)."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, accepted, after = done.stdout.split("\n", 2)
    assert int(before) >= 8 << 20, "glibc's default: a block this large is mmapped"
    assert accepted == "True"
    assert after.split() == ["0", "0"]
