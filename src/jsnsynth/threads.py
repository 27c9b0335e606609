"""One thread in every numerical library, so that results do not depend on the machine's cores.

Multi-threaded kernels (OpenCV's filters and warps, BLAS products, torch's convolutions) split
their work, and with it the order of their sums, by the number of threads: the last bit of a
result follows the thread count. A dataset made in one process with the libraries' default
threads differed by one grey level in hundreds of pixels per image from the same dataset made by
single-threaded worker processes, and so would a dataset made on a machine with another number
of cores.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


#: Variables a BLAS or OpenMP library reads for its thread count when it is loaded.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with one thread in OpenCV, in every BLAS and OpenMP library loaded
    (``threadpoolctl``) and in torch when it is loaded; a library loaded inside the block starts
    with one thread too (the thread-count variables are set meanwhile) and keeps it. The settings
    of the libraries loaded before, and the variables, come back after."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2_threads = cv2.getNumThreads()
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    cv2.setNumThreads(1)
    if torch is not None:
        torch.set_num_threads(1)
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        cv2.setNumThreads(cv2_threads)
        if torch is not None:
            torch.set_num_threads(torch_threads)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
