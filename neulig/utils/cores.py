"""Sharing the machine's cores between the runs that compute on it at the same time (``threads: auto``).

Every run registers itself in a per-user folder on this host (``<tmp>/neulig-<uid>/runs/<pid>``, holding
``active`` or ``waiting``); a run that waits on another's cache lock marks itself ``waiting``, so it
gives its cores to the one computing. With ``threads=auto`` a run takes ``cores // active runs`` of
the cores it may use (its CPU affinity, which is what Slurm and cgroups hand it): at its start, before
each cached stage it computes, and before its method runs. Entries of dead pids are ignored and
removed. Counting live processes rather than reading a launcher's ``n_jobs`` covers every way runs
meet on one machine (a joblib sweep, two terminals, a job array on one node), and a run that only
waits costs nothing. ``threads=<n>`` fixes the count and leaves the others alone.

DataLoader workers (:func:`loader_workers`): an explicit count is kept; ``auto`` gives a quarter of the
run's share (none below 4 cores) and takes them out of its torch threads, so that together they never
exceed the share (each worker runs one torch thread, PyTorch's default in workers).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from neulig.utils.cache import process_alive

AUTO = "auto"
ACTIVE, WAITING = "active", "waiting"

_setting: Any = AUTO  # this process's threads option while a run is registered
_registered: Path | None = None


def cpu_count() -> int:
    """The physical cores this process may run on: its affinity mask (all CPUs where there is none), one
    per core where Linux tells which CPUs are hyperthreads of one core. ``OMP_NUM_THREADS`` is not read:
    joblib's workers set it to ``cores // n_jobs`` whether or not the other jobs compute."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def registry(folder: Path | None = None) -> Path:
    """The folder of this host's runs: ``folder``, the one this run registered in, or the default."""
    if folder is not None:
        return Path(folder)
    if _registered is not None:
        return _registered.parent
    return Path(tempfile.gettempdir()) / f"neulig-{os.getuid()}" / "runs"


def _mark(state: str) -> None:
    if _registered is not None:
        tmp = _registered.with_name(f".{_registered.name}.{state}")
        tmp.write_text(state)
        os.replace(tmp, _registered)


def active_runs(folder: Path | None = None) -> int:
    """Runs on this host computing now (this one included when it is registered and active)."""
    count = 0
    for entry in registry(folder).glob("[0-9]*"):
        if not process_alive(int(entry.name)):
            entry.unlink(missing_ok=True)  # a killed run's entry
            continue
        try:
            count += entry.read_text() == ACTIVE
        except FileNotFoundError:
            continue
    return max(1, count)


def share(folder: Path | None = None) -> int:
    """This run's share of the cores: ``cores // active runs``, at least one."""
    return max(1, cpu_count() // active_runs(folder))


def plan(setting: Any, workers: Any = 0, cores: int | None = None) -> tuple[int, int]:
    """(torch threads, DataLoader workers) for a ``threads`` option and a workers option (an int or
    ``auto``) given ``cores``, the run's share (default: measured now)."""
    cores = share() if cores is None else cores
    n_workers = (cores // 4) if workers == AUTO else int(workers)
    if setting != AUTO:
        return int(setting), n_workers
    return max(1, cores - (n_workers if workers == AUTO else 0)), n_workers


def resize() -> int:
    """Set torch's threads to this run's share now (``threads=auto``; a fixed count is set once); returns it."""
    import torch

    threads = plan(_setting)[0]
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def loader_workers(workers: Any) -> int:
    """DataLoader workers for a workers option (an int, or ``auto``: see the module docstring); with
    ``auto`` the torch threads shrink by as many."""
    import torch

    threads, n_workers = plan(_setting, workers)
    if workers == AUTO and _setting == AUTO and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return n_workers


@contextmanager
def sharing(setting: Any, folder: Path | None = None) -> Iterator[int]:
    """Register this process as a computing run for the block and size its threads (yields the count)."""
    global _setting, _registered
    import torch

    outer = (_setting, _registered, torch.get_num_threads())
    if _registered is not None:  # a run inside a run (a test): registered once, by the outer one
        _setting = setting
        try:
            yield resize()
        finally:
            _setting = outer[0]
            torch.set_num_threads(outer[2])
        return
    path = registry(folder) / str(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    _setting, _registered = setting, path
    _mark(ACTIVE)
    try:
        yield resize()
    finally:
        path.unlink(missing_ok=True)
        _setting, _registered = outer[0], outer[1]
        torch.set_num_threads(outer[2])


@contextmanager
def waiting() -> Iterator[None]:
    """While the block waits for another process, this run's cores are the others' to use."""
    _mark(WAITING)
    try:
        yield
    finally:
        _mark(ACTIVE)
