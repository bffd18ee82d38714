"""The first processor's fields of Linux ``/proc/cpuinfo`` (model name, family and model numbers, flags)."""

from __future__ import annotations

import functools
import platform


@functools.cache
def cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model_name() -> str:
    """The CPU's model name (``model name`` of /proc/cpuinfo), else the platform's processor string."""
    return cpuinfo_fields().get("model name") or platform.processor() or "unknown CPU"
