"""The machine's dense-matmul peak, measured in the same run as whatever it is compared with.

Benchmarks report achieved GFLOP/s as a fraction of this figure rather than absolute
milliseconds, because the machines are noisy and a ratio measured in one run is honest.
"""
import time

import numpy as np
from threadpoolctl import threadpool_limits


def sgemm_gflops(threads: int = 1, n: int = 1024, min_seconds: float = 0.5) -> float:
    """Best-of-runs float32 GEMM throughput (GFLOP/s) of numpy's BLAS at `threads` threads.

    One n×n×n matmul is 2·n³ floating-point operations. We take the best repeat, as
    peak figures conventionally do, after one warm-up.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)  # warm-up: page in, pick kernels
        best = float("inf")
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
            if time.perf_counter() - start > min_seconds:
                break
    return 2.0 * n**3 / best / 1e9
