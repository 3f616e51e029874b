"""Whether the Triton kernels may run (read once at import; changeable with use_kernels)."""

import functools
import os

_ENABLED = os.environ.get("VAR_ST_KERNELS", "1") != "0"


def use_kernels(enabled: bool) -> None:
    """Force the Triton kernels on (where CUDA + Triton exist) or off (PyTorch reference)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def kernels_enabled() -> bool:
    return _ENABLED


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    # Triton is optional: a CPU install of var-st never needs it.
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
