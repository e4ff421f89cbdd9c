"""Which process owns an open MLflow run, and whether it is still alive.

Every run records its host, process id and the process's start time as tags when it opens. A run that is
still RUNNING although its process is gone (killed with SIGKILL, out of memory, a node lost) can then be
told apart from one that is merely long: :func:`reap` marks such runs KILLED. It judges only runs of this
host (another host's processes cannot be seen); a process id reused by a newer process is recognised by its
start time (Linux).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

HOST_TAG, PID_TAG, START_TAG = "neulig.host", "neulig.pid", "neulig.pid_start"


def start_time(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or '' where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    """The tags that name this process: host, pid and its start time."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), START_TAG: start_time(os.getpid())}


def is_gone(tags: dict[str, str]) -> bool:
    """True when ``tags`` name a process of this host that no longer exists (or whose pid was reused)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    recorded, now = tags.get(START_TAG, ""), start_time(pid)
    return bool(recorded and now and recorded != now)


@dataclass(frozen=True)
class Reaped:
    run_id: str
    run_name: str
    pid: str


def reap(client) -> list[Reaped]:
    """Mark KILLED every RUNNING run of this host whose process is gone; return them."""
    experiments, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiments.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            break
    if not experiments:
        return []
    found = client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = "
                                            f"'{socket.gethostname()}'", max_results=1000)
    reaped = []
    for run in found:
        if is_gone(run.data.tags):
            client.set_tag(run.info.run_id, "neulig.error", f"its process (pid {run.data.tags[PID_TAG]}) ended "
                                                            "without a word (SIGKILL, out of memory, a lost node)")
            client.set_terminated(run.info.run_id, "KILLED")
            reaped.append(Reaped(run.info.run_id, run.info.run_name, run.data.tags[PID_TAG]))
    return reaped


def reaped_line(reaped: list[Reaped]) -> str:
    """One line saying which runs were marked KILLED."""
    runs = ", ".join(f"{r.run_name} (pid {r.pid})" for r in reaped)
    if len(reaped) == 1:
        return f"marked run {runs} KILLED in the MLflow store: its process is gone"
    return f"marked {len(reaped)} runs KILLED in the MLflow store, their processes are gone: {runs}"
