"""How the engine's threads share the cores: two process-level settings, kept apart here.

The engine's CPU work runs on threads it owns: the coordinator (VAD, bookkeeping), the
encoder threads (ONNX Runtime, which releases the GIL) and the niced file threads (uploads).
Two things outside those threads would otherwise take their cores:

- OpenBLAS. numpy and scipy (the fbank, small matmuls) each load an OpenBLAS whose idle
  threads busy-wait after every call, one per core: on a 2-core machine they steal the cores
  the encoder and the VAD run on. `limit_blas_threads(1)` caps them (Engine.load). This is a
  hack: OpenBLAS has no public Python switch, so the libraries are found in /proc/self/maps
  and their `*openblas_set_num_threads*` symbol is called through ctypes, as threadpoolctl
  does (not a dependency: it would be the only use). Without /proc (not Linux) it does nothing.
- File work. Uploaded files are embedded on threads of their own that run at a higher nice
  value (`lower_thread_priority`), so that under load the OS gives the cores to live calls.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("vbgw.engine")

_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads")


def limit_blas_threads(n: int) -> None:
    """Cap the threads of every OpenBLAS library loaded in the process at `n` (see above).
    Load scipy first (`import scipy.signal`): a library loaded later is not capped."""
    import ctypes
    import re
    try:
        with open("/proc/self/maps") as fh:
            libs = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", fh.read())))
    except OSError:
        return
    for lib in libs:
        try:
            h = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in _OPENBLAS_SETTERS:
            fn = getattr(h, sym, None)
            if fn is not None:
                try:
                    fn(ctypes.c_int(max(1, int(n))))
                except Exception:  # noqa: BLE001 - a library we cannot cap keeps its threads
                    pass
                break


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux: nice is per thread; elsewhere
    PRIO_PROCESS would name a process, so nothing is done)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        log.warning("could not lower the file threads' priority")
