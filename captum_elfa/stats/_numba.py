"""The optional numba back end of the statistics: the switch, the decorator, the BLAS / LAPACK
routines and the thread split.

numba compiles the loops of :mod:`captum_elfa.stats._ace_kernel` (ACE with one predictor),
:mod:`captum_elfa.stats._eigen_kernel` (leading eigenpairs) and
:mod:`captum_elfa.stats._pca_kernel` (PCACE's per-channel preprocessing), all ``nogil``, so that
blocks of rows run side by side on Python threads (as many as ``torch.get_num_threads()``).
numba is imported, and the kernels compiled, on the first call that uses them (about 5 s; kept
between processes by numba's cache where Python keeps bytecode, see :func:`_cache_kernels`).

Without numba, with :data:`ENABLED` set to False or the environment variable
``CAPTUM_ELFA_NO_NUMBA=1``, and for CUDA tensors, the statistics run as batched torch operations:
ACE gives the same transforms up to rounding (and the same iteration counts), the preprocessing the
same components where PC1 is determined by the data (``tests/test_kernels.py``); where the two
leading eigenvalues are (nearly) equal, PC1 is arbitrary and the two ways pick different ones.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

#: use the compiled kernels where they apply (numba installed, tensors on the CPU)
ENABLED = importlib.util.find_spec("numba") is not None and os.environ.get("CAPTUM_ELFA_NO_NUMBA", "").lower() not in (
    "1",
    "true",
    "yes",
)

_loaded: Optional[bool] = None


def load() -> bool:
    """Whether the kernels can be used now: :data:`ENABLED`, and numba imports (once; a failed
    import turns the kernels off with a warning)."""
    global ENABLED, _loaded
    if not ENABLED:
        return False
    if _loaded is None:
        try:
            import numba  # noqa: F401
        except Exception as err:  # pragma: no cover - a broken numba installation
            _loaded = ENABLED = False
            warnings.warn(
                f"numba could not be imported ({err!r}): captum_elfa's statistics run as torch operations",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            _loaded = True
    return bool(_loaded)


def _cache_kernels() -> bool:
    """Keep compiled kernels between processes where Python keeps bytecode: in the package's
    ``__pycache__`` (or ``NUMBA_CACHE_DIR``), unless bytecode writing is off
    (``PYTHONDONTWRITEBYTECODE``) or the folder is not writable."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    if sys.dont_write_bytecode:
        return False
    here = os.path.dirname(os.path.abspath(__file__))
    cache = os.path.join(here, "__pycache__")
    return os.access(cache, os.W_OK) if os.path.isdir(cache) else os.access(here, os.W_OK)


def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``numba.njit(nogil=True, cache=...)`` (see :func:`_cache_kernels`); imports numba."""
    import numba

    return numba.njit(nogil=True, cache=_cache_kernels())(fn)


def external(library: str, name: str, n_args: int, result: Any = None) -> Any:
    """SciPy's Cython-exported BLAS / LAPACK routine ``name`` (``library``: ``"cython_blas"`` or
    ``"cython_lapack"``) as a numba external function of ``n_args`` pointer arguments: called by
    symbol name, so that the kernels calling it can be cached."""
    from llvmlite import binding
    from numba import types
    from numba.extending import get_cython_function_address

    symbol = f"captum_elfa_{name}"
    binding.add_symbol(symbol, get_cython_function_address(f"scipy.linalg.{library}", name))
    restype = types.void if result is None else result
    return types.ExternalFunction(symbol, restype(*([types.voidptr] * n_args)))


def run_blocks(
    fn: Callable[[int, int], None], rows: int, threads: int, min_rows: int = 16, per_thread: int = 1
) -> None:
    """Call ``fn(lo, hi)`` on contiguous blocks covering ``range(rows)``: ``per_thread`` blocks
    per thread (more balance the load when rows take unequal times), each of at least
    ``min_rows`` rows, run side by side on ``threads`` threads."""
    threads = max(1, int(threads))
    blocks = max(1, min(threads * per_thread, rows // max(1, min_rows)))
    if blocks == 1 or threads == 1:
        fn(0, rows)
        return
    bounds = [round(rows * b / blocks) for b in range(blocks + 1)]
    with ThreadPoolExecutor(max_workers=min(threads, blocks)) as pool:
        list(pool.map(lambda b: fn(bounds[b], bounds[b + 1]), range(blocks)))
