"""Reports the CPU quota its sandbox had while this module was imported (the instance's start) and now."""

from pathlib import Path


def _cpus():
    """The cgroup's CPU quota in CPUs (None: unlimited), cgroup v1 or v2."""
    v2 = Path("/sys/fs/cgroup/cpu.max")
    if v2.exists():
        quota, period = v2.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    folder = Path("/sys/fs/cgroup/cpu")
    quota = int((folder / "cpu.cfs_quota_us").read_text())
    return None if quota < 0 else quota / int((folder / "cpu.cfs_period_us").read_text())


AT_IMPORT = _cpus()


def handler(event):
    return {"atImport": AT_IMPORT, "now": _cpus()}
