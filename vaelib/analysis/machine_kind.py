"""What of the machine shapes a fit's floating-point results, for the keys of stored fits.

The architecture, the SIMD extensions NumPy dispatches to (numba compiles for the same host CPU) and the
BLAS kernels loaded (OpenBLAS picks its kernels by CPU): two machines that agree on these compute the
same bits with the same libraries. The PCA and UMAP stores put it in their keys, so a cache folder shared
between machines of different CPUs (a cluster's home directory) never hands one machine's fit to another.
"""

from __future__ import annotations

import platform

__all__ = ["numeric_machine"]


def numeric_machine() -> tuple:
    """``(architecture, SIMD extensions on, ((BLAS, version, kernel architecture), ...))``, hashable.

    The BLAS are those loaded when it is called, NumPy's and SciPy's at least (SciPy's is loaded first): a
    library another package loads in some processes only can make a key miss a stored fit, never match
    one of other bits.
    """
    import numpy as np
    import scipy.linalg  # noqa: F401 - loads SciPy's BLAS, so that it is always in the list
    import threadpoolctl

    umath = getattr(getattr(np, "_core", None) or getattr(np, "core", None), "_multiarray_umath", None)
    features = getattr(umath, "__cpu_features__", {})
    simd = tuple(sorted(name for name, on in features.items() if on))
    blas = tuple(sorted((str(p.get("internal_api", "")), str(p.get("version") or ""), str(p.get("architecture") or ""))
                        for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"))
    return platform.machine(), simd, blas
