"""The CPUs a process may use: its affinity mask, capped by the CPU quota of its cgroups.

The pool sizes each worker's ONNX Runtime threads from `available_cpus`, because
`os.cpu_count()` counts the host's CPUs even inside a container with a CPU limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Mount point of the cgroup file system on Linux, and the file that lists this process's cgroups.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Return the CPUs this process may use: its affinity mask, capped by its cgroup CPU quota.

    `os.cpu_count()` counts the host's CPUs, so a pod limited to 2 CPUs on a 64-core node would
    start 32 threads per worker. The quota is rounded down, and the result is at least 1.
    """
    has_affinity = hasattr(os, "sched_getaffinity")  # Linux and some other Unix systems
    cpus = len(os.sched_getaffinity(0)) if has_affinity else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """Return the CPU quota of this process's cgroup in CPUs, or None when it has none.

    Reads `cpu.max` ("QUOTA PERIOD" or "max PERIOD") under cgroup v2, or `cpu.cfs_quota_us`
    (-1 for none) and `cpu.cfs_period_us` under v1. The cgroup's folder is the path in
    `proc_cgroup` under the mount. The kernel applies the quota of every cgroup above it as well,
    so the result is the smallest quota from that folder up to the mount itself. Inside a
    container whose cgroup namespace hides the host's path, the mount is the only folder left.
    A file that cannot be read counts as no quota.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _number, controllers, path = parts
        if controllers == "":
            mount, names = cgroup_root, ("cpu.max",)
        elif "cpu" in controllers.split(","):
            mount, names = cgroup_root / controllers, ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        for folder in _folders_up_to(mount, mount / path.lstrip("/")):
            quota = _parse_quota([word for name in names for word in _read_words(folder / name)])
            if quota is not None:
                quotas.append(quota)
    return min(quotas, default=None)


def _folders_up_to(mount: Path, folder: Path) -> list[Path]:
    """Return `folder` and each parent folder of it up to `mount`, or [mount] when it is outside."""
    if folder != mount and mount not in folder.parents:
        return [mount]
    chain = [folder]
    while chain[-1] != mount:
        chain.append(chain[-1].parent)
    return chain


def _parse_quota(words: list[str]) -> float | None:
    """Return QUOTA / PERIOD in CPUs from the two words of a cgroup file, or None for none."""
    if len(words) != 2 or words[0] in ("max", "-1"):
        return None
    try:
        quota, period = float(words[0]), float(words[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_words(path: Path) -> list[str]:
    """Return the whitespace-separated words of a small file, or [] when it cannot be read."""
    try:
        return path.read_text().split()
    except OSError:
        return []
