"""How the engine's threads share the cores: the BLAS thread cap and the file threads' nice."""
from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("vbgw.engine")


def _lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value (Linux: nice is per thread; elsewhere
    PRIO_PROCESS would name a process, so nothing is done)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        log.warning("could not lower the file threads' priority")



def _limit_threads(n: int) -> None:
    """Cap the OpenBLAS threads of numpy/scipy (used for the fbank and small matmuls).

    Idle OpenBLAS threads busy-wait after each call and would steal the cores the encoder
    and the VAD run on. Like threadpoolctl (not a dependency), this calls
    `*openblas_set_num_threads*` in every OpenBLAS library loaded in the process."""
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
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(h, sym, None)
            if fn is not None:
                try:
                    fn(ctypes.c_int(max(1, int(n))))
                except Exception:  # noqa: BLE001
                    pass
                break
