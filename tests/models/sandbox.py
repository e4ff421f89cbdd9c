"""A child process that reads checkpoints in throwaway grandchildren, for the hostile-file tests.

``python -m tests.models.sandbox LAYOUT.json`` imports torch and neulig once, then answers one JSON
request per stdin line with one JSON line: it forks a grandchild that reads ``path`` (``"neulig"``:
:func:`neulig.models.expert_sources.read_visual` against the layout, as the CLI does; ``"torch"``: plain
``torch.load(weights_only=False)``, the control), waits at most ``timeout`` seconds (then kills it),
and replies with the outcome, the message, the seconds the read took and the grandchild's peak RSS
(``wait4``'s ``ru_maxrss``, which counts the pages inherited from this process too) and its RSS before
the read.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path

ARCH = "neulig-tiny"


def _rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _read(request: dict, layout: dict) -> dict:
    import torch

    from neulig.errors import NeuligError
    from neulig.models.expert_sources import read_visual

    sys.path[:0] = request.get("sys_path", [])
    start, before = time.perf_counter(), _rss_kib()
    try:
        if request["action"] == "torch":
            torch.load(request["path"], weights_only=False)
            outcome, message = "loaded", ""
        else:
            state = read_visual(request["path"], layout, ARCH)
            outcome, message = "loaded", f"{len(state)} tensors"
    except NeuligError as err:
        outcome, message = "refused", str(err)
    except BaseException as err:  # noqa: BLE001 - reported to the test, which decides
        outcome, message = "error", f"{type(err).__name__}: {err}"
    return {"outcome": outcome, "message": message, "seconds": time.perf_counter() - start, "rss_before_kib": before}


def _run(request: dict, layout: dict) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the grandchild: read, report, exit without cleanup handlers
        os.close(read_end)
        try:
            reply = _read(request, layout)
        except BaseException as err:  # noqa: BLE001
            reply = {"outcome": "error", "message": repr(err)}
        os.write(write_end, json.dumps(reply).encode())
        os._exit(0)
    os.close(write_end)
    chunks, deadline = [], time.monotonic() + request["timeout"]
    while True:
        ready, _, _ = select.select([read_end], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            reply = {"outcome": "timeout", "message": f"still running after {request['timeout']} s"}
            break
        chunk = os.read(read_end, 1 << 16)
        if not chunk:
            reply = json.loads(b"".join(chunks)) if chunks else {"outcome": "crashed", "message": ""}
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status, usage = os.wait4(pid, 0)
    if os.WIFSIGNALED(status) and reply["outcome"] != "timeout":
        reply = {"outcome": "crashed", "message": f"signal {os.WTERMSIG(status)}"}
    return {**reply, "peak_rss_kib": usage.ru_maxrss}


def main() -> None:
    import torch

    import neulig.models.expert_sources  # noqa: F401 - imported once, before any fork

    spec = json.loads(Path(sys.argv[1]).read_text())
    layout = {key: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for key, shape, dtype in spec}
    for line in sys.stdin:
        print(json.dumps(_run(json.loads(line), layout)), flush=True)


if __name__ == "__main__":
    main()
