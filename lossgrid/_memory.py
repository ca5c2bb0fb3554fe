"""How much memory this machine has for a new allocation: sizes are checked before they are allocated.

Example:
    >>> memory_problem(1) is None
    True
"""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping (``MemAvailable`` in ``/proc/meminfo``),
    ``None`` where the system does not say."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_problem(need: int, limit_if_unknown: int | None = None) -> str | None:
    """Why ``need`` bytes cannot be allocated, or ``None``. Where the available memory is
    unknown, ``limit_if_unknown`` (if given) is the bound."""
    available = available_memory()
    if available is not None:
        return None if need <= available else f"it needs {need:,} bytes of memory and {available:,} are available"
    if limit_if_unknown is not None and need > limit_if_unknown:
        return (f"it needs {need:,} bytes of memory, more than the {limit_if_unknown:,} allowed where the "
                "available memory is unknown")
    return None
