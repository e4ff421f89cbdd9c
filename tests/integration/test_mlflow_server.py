"""`mlflow server` (what `make ui` starts) serves a neulig run over REST, and stops leaving no process behind."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

METRICS = {"acc/merged/alpha": 81.25, "acc/merged/beta": 70.5, "acc/merged/avg": 75.875,
           "acc/ensembled/alpha": 82.0, "acc/ensembled/beta": 71.0, "acc/ensembled/avg": 76.5,
           "gap/alpha": 0.75, "gap/beta": 0.5, "gap/avg": 0.625,
           "acc/pretrained/avg": 40.0, "acc/finetuned/avg": 90.0}
HEALTH_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_members(sid: int) -> list[str]:
    """Live processes of session ``sid`` (orphans keep their session id after re-parenting)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp, session = fields[0], int(fields[2]), int(fields[3])
        if state != "Z" and sid in (pgrp, session):
            found.append(f"{entry} {stat.split(')')[0].split('(', 1)[1]}")
    return found


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is still there after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and session_members(proc.pid):
        proc.poll()
        time.sleep(0.2)
    if session_members(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.skipif(sys.platform != "linux", reason="process-group checks read /proc")
def test_server_serves_the_run_and_stops_cleanly(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "server.log", "w")
    # started first: it creates the store while this process imports Lightning; the run is then written
    # straight into the sqlite file (as `python -m neulig.run` does while `make ui` is open)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from neulig.callbacks.mlflow import MLflowReporter

        start = time.monotonic()
        while True:
            assert proc.poll() is None, f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200 and response.read().strip() == b"OK":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() - start < HEALTH_TIMEOUT_S, "no /health answer in 60 s"
            time.sleep(0.25)

        cwd = os.getcwd()
        os.chdir(tmp_path)  # the sqlite store's default artifact root is ./mlruns
        try:
            reporter = MLflowReporter(store, "neulig-toy-tiny", "portland-toy-tiny-s0",
                                      {"backbone": "tiny", "merge": "portland"})
            reporter.open()
            (tmp_path / "results.json").write_text(json.dumps({"metrics": METRICS}))
            reporter.finish({"merge": {"name": "portland"}, "model": {"name": "tiny"}}, METRICS,
                            [tmp_path / "results.json"])
        finally:
            os.chdir(cwd)
        experiment_id = reporter.client.get_experiment_by_name("neulig-toy-tiny").experiment_id

        found = get_json(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 10})
        assert len(found["runs"]) == 1
        run = found["runs"][0]
        assert run["info"]["run_name"] == "portland-toy-tiny-s0" and run["info"]["status"] == "FINISHED"
        served = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert served == METRICS  # every contract metric, exact values
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["merge.name"] == "portland"
        artifacts = get_json(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}")
        assert [f["path"] for f in artifacts["files"]] == ["results.json"]

        # the report reads the same run through the server
        from neulig.report import main

        assert main(["--tracking-uri", base, "--format", "csv"]) == 0
        out = capsys.readouterr().out
        assert ",portland,method,portland-toy-tiny-s0," in out and out.rstrip().endswith(",75.875,76.5,0.625")
        assert len(session_members(proc.pid)) <= 3, session_members(proc.pid)  # main + 1 uvicorn worker
    finally:
        stop(proc)
        log.close()
    assert proc.returncode is not None
    assert session_members(proc.pid) == [], "processes left after stopping the server"
