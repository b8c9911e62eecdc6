"""The machine a benchmark ran on, recorded beside its figures of speed."""

from __future__ import annotations

from pathlib import Path


def cpu_name() -> str:
    """This machine's CPU model and core count, e.g. "AMD EPYC (2 cores)", or "unknown"."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0]} ({len(names)} cores)" if names else "unknown"
