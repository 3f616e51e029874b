"""Whether the Triton kernels may run (read once at import; changeable with use_kernels)."""

import os

_ENABLED = os.environ.get("VAR_ST_KERNELS", "1") != "0"


def use_kernels(enabled: bool) -> None:
    global _ENABLED
    _ENABLED = bool(enabled)


def kernels_enabled() -> bool:
    return _ENABLED
