"""What crib-node does to its own memory so that the daemons it forks share more of it.

A forked daemon shares crib-node's pages until it writes one; then the kernel copies that
page into the daemon (copy-on-write) and it counts in the daemon's PSS alone. Three things
here keep the daemons from writing pages they need not:

- `trim_heap`: the free heap the imports left goes back to the OS before forking;
- `plug_free_blocks`: the free blocks that remain in pages that hold live objects (the
  small-object allocator's pools, malloc's free chunks) are taken by crib-node for good,
  so a daemon's new objects go to fresh pages of its own instead of into holes of shared
  ones (every such allocation copies the page, and unlinking a free chunk copies its
  neighbours' too);
- `drop_file_pages`: library pages crib-node touched only while importing leave its PSS.

Measured with bench/bench_node.py (issue 14).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile

__all__ = ["drop_file_pages", "free_small_blocks", "plug_free_blocks", "trim_heap"]

# <asm-generic/mman-common.h>
MADV_DONTNEED = 4
# Rounds of measuring and filling the pools: measuring makes temporaries of its own, and
# freeing them leaves holes again (in the last round, in a pool of their own).
PLUG_ROUNDS = 3
# The largest request malloc serves from its heap rather than with mmap (glibc's
# M_MMAP_THRESHOLD, which the daemons keep at its initial 128 KiB).
HEAP_REQUEST_MAX = 64 * 1024
# One line per size class of sys._debugmallocstats():
#   class   size   num pools   blocks in use  avail blocks
_POOL_LINE = re.compile(rb"^\s*\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", re.M)


def trim_heap() -> None:
    """Give the heap the imports freed back to the OS before forking: resident free pages
    would otherwise be inherited, and counted, by every daemon."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_small_blocks() -> dict[int, int]:
    """Free blocks in the small-object allocator's pools in use, by block size; {} where
    the interpreter does not report them (another allocator, another format)."""
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as out:
            # CPython prints the statistics with C stdio on standard error.
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
            out.seek(0)
            text = out.read()
    finally:
        os.close(saved)
    return {int(size): int(free) for size, free in _POOL_LINE.findall(text)}


def _plug_small_blocks() -> None:
    """Allocate every free block of the pools in use, never to be freed. The allocator
    fills a pool in use before it opens another, so as many blocks of a size as are free
    fill exactly the holes."""
    if os.environ.get("PYTHONMALLOC", "pymalloc") != "pymalloc" or sys.flags.dev_mode:
        return  # another allocator, or pymalloc with debug hooks (blocks of other sizes)
    malloc = ctypes.pythonapi.PyObject_Malloc
    malloc.argtypes = [ctypes.c_size_t]
    malloc.restype = None  # the address is not kept: no object for it, no new hole
    for _ in range(PLUG_ROUNDS):
        free = free_small_blocks()
        if not any(free.values()):
            return
        for size, count in free.items():
            for _ in range(count):
                malloc(size)


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h)."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _plug_heap() -> None:
    """Allocate malloc's free chunks (not the top of the heap), never to be freed.

    Requests from HEAP_REQUEST_MAX down, halving whenever one was cut from the top (the
    heap's end, whose pages a daemon would fault in fresh anyway; given back at once);
    after `trim_heap` the chunks' inner pages are not resident, and taking a chunk does
    not fault them in."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    size = HEAP_REQUEST_MAX
    while size >= 16:
        info = libc.mallinfo2()
        if info.fordblks - info.keepcost < 16:  # only the top is free
            return
        block = libc.malloc(size)
        if libc.mallinfo2().keepcost < info.keepcost:
            libc.free(block)
            size //= 2


def plug_free_blocks() -> None:
    """Before forking: the small-object pools' holes, then (after trimming) malloc's.
    Costs the holes' bytes, on pages already resident and shared with every daemon."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        _plug_small_blocks()
    trim_heap()
    with contextlib.suppress(OSError, AttributeError):
        _plug_heap()


def drop_file_pages() -> None:
    """Unmap from crib-node the library pages it touched while importing and never uses
    again (OpenSSL's start-up, pydantic-core, ...): a forked daemon maps its own as it
    needs them, but while crib-node keeps them they count in its PSS, in full where no
    daemon maps them. Only read-only file mappings with no private (copied) page: their
    pages come back from the page cache, unchanged, on the next touch."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = end = 0
        candidate = False
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split(maxsplit=5)
                if not head[0].endswith(":"):  # a mapping's first line: range, perms, ...
                    start, end = (int(x, 16) for x in head[0].split("-"))
                    candidate = len(head) > 5 and head[5].startswith("/") and "w" not in head[1]
                elif candidate and head[0] == "Anonymous:" and head[1] == "0":
                    libc.madvise(start, end - start, MADV_DONTNEED)
