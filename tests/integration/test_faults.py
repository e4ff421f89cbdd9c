"""The fault catalogue of runs that share a machine and a store (issue 21).

Cache and cores:
- each cached stage computed once across processes, locks of dead processes taken over, cores shared,
  preempted fine-tuning resumed; command-line mistakes are answered in one line (those cases are in
  tests/config/test_catalogue.py).

Every exit of a run is recorded in MLflow, and a remote tracking server is a real component:
- Once its MLflow run is open, a run ends it FINISHED, FAILED (an error during or after the experiment: the
  one-line error as a tag, the traceback as ``error.txt``) or KILLED (SIGINT, SIGTERM: the real CLI,
  signalled while Portland trains). A run whose process died without a word (SIGKILL) is marked KILLED by
  the next start on the same store, which says so in one line.
- Against ``mlflow server`` on loopback (one module-scoped server, stopped and started by the tests): a
  server restarted mid-run is carried through by retries; a server down for the rest of the run leaves a
  finished run, its record in the run dir and one warning line, and ``python -m neulig.report --upload``
  sends it later, twice without creating anything new.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import FAST_RUN, REPO, assert_cache_clean
from tests.integration.test_mlflow_server import HEALTH_TIMEOUT_S, free_port, stop

FETCHER = """
import os, sys, time
from pathlib import Path

import pytest
import torch
from neulig.stages.stage import CachedStage

root, hold = Path(sys.argv[1]), float(sys.argv[2])

def compute():
    with open(root / "computed.txt", "a") as handle:
        handle.write(f"{os.getpid()}\\n")
    print("computing", flush=True)
    time.sleep(hold)
    return {"w": torch.arange(4.0) * 3}, {}

product = CachedStage("experts", "expert", "encoder.safetensors").fetch(root / "cache", ("same",), compute,
                                                                         label="the toy expert")
print("result", product.tensors["w"].tolist(), flush=True)
"""


def _fetcher(root: Path, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FETCHER, str(root), str(hold)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _computed(root: Path) -> list[int]:
    path = root / "computed.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_concurrent_fetches_compute_once_and_the_others_wait_then_load(tmp_path):
    procs = [_fetcher(tmp_path, 2.0) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    (owner,) = _computed(tmp_path)  # one process computed
    assert all("result [0.0, 3.0, 6.0, 9.0]" in out for out, _ in outs)
    waiting = [err for p, (_, err) in zip(procs, outs) if p.pid != owner]
    assert all("waiting for the toy expert (experts/" in err and f"process {owner} on " in err for err in waiting)
    assert_cache_clean(tmp_path / "cache")
    assert not list((tmp_path / "cache" / "experts").glob(".*.lock"))  # released


def test_a_killed_computing_process_is_taken_over_by_a_waiting_one(tmp_path):
    first = _fetcher(tmp_path, 600)
    assert first.stdout.readline().strip() == "computing"
    second = _fetcher(tmp_path, 0.0)
    deadline = time.time() + 60
    while not list((tmp_path / "cache" / "experts").glob(".*.lock")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the second one is waiting on the first's lock by now (its import takes ~2 s)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"process {first.pid} on " in err and "is no longer running" in err  # took the dead lock over
    assert _computed(tmp_path) == [first.pid, second.pid]
    assert "result [0.0, 3.0, 6.0, 9.0]" in out
    assert_cache_clean(tmp_path / "cache")


RUN = ["model.pretrain.steps=30", "model.pretrain.n_per_family=300", "model.pretrain.batch_size=64",
       "data.sizes.train=160", "data.sizes.val=64", "data.sizes.test=96", "model.pretrained=null",
       "data.datasets=[digits,shapes]", "logger=none", "merge=average"]


def _run(root: Path, *extra: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NEULIG_RUN_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "neulig.run", *RUN, f"paths.root_dir={root}", *extra], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True)


def _results(root: Path) -> list[dict]:
    import json

    return [json.loads(p.read_text())["metrics"] for p in sorted((root / "outputs" / "runs").glob("*/results.json"))]


@pytest.mark.slow
def test_three_concurrent_identical_runs_train_each_expert_once_and_agree(tmp_path):
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    procs = [_run(tmp_path, "model.finetune.epochs=2", log=log) for log in logs]
    assert [p.wait(timeout=1800) for p in procs] == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    text = "".join(log.read_text() for log in logs)
    for dataset in ("digits", "shapes"):
        assert text.count(f"fine-tuning the tiny encoder on {dataset}:") == 1, text  # trained once, by one run
    assert "waiting for the digits expert" in text or "waiting for the shapes expert" in text
    first, *others = _results(tmp_path)
    assert len(others) == 2 and all(other == first for other in others)
    assert_cache_clean(tmp_path / "outputs" / "cache")


@pytest.mark.slow
def test_killing_the_run_that_fine_tunes_lets_another_take_over_and_finish(tmp_path):
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_run(tmp_path, "model.finetune.epochs=30", log=log) for log in logs]
    deadline = time.time() + 900
    victim = None
    while victim is None and time.time() < deadline:
        time.sleep(0.5)
        victim = next((p for p, log in zip(procs, logs) if "fine-tuning the tiny encoder on digits" in log.read_text()),
                      None)
    assert victim is not None, [log.read_text() for log in logs]
    survivor, survivor_log = next((p, log) for p, log in zip(procs, logs) if p is not victim)
    time.sleep(2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert survivor.wait(timeout=1800) == 0, survivor_log.read_text()[-2000:]
    text = survivor_log.read_text()
    assert "taking over the digits expert (experts/" in text and f"process {victim.pid} on " in text, text
    assert "fine-tuning the tiny encoder on digits" in text and len(_results(tmp_path)) == 1
    assert_cache_clean(tmp_path / "outputs" / "cache", allow_temp=True)  # the victim's temp dirs are never trusted


def _expert(root: Path, dataset: str) -> dict:
    import json

    from safetensors.torch import load_file

    for entry in (root / "outputs" / "cache" / "experts").iterdir():
        if not entry.name.startswith(".") and json.loads((entry / "meta.json").read_text())["dataset"] == dataset:
            return load_file(str(entry / "encoder.safetensors"))
    raise AssertionError(f"no {dataset} expert in {root}")


@pytest.mark.slow
def test_sigterm_during_fine_tuning_saves_its_state_and_the_rerun_ends_with_the_same_expert(tmp_path):
    import torch

    args = ("model.finetune.epochs=3", "data.sizes.train=1200")  # 10 steps an epoch, 30 per expert
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run(whole, *args, log=tmp_path / "whole.log").wait(timeout=1800) == 0
    proc = _run(cut, *args, log=tmp_path / "cut.log")
    deadline = time.time() + 900
    while "fine-tuning the tiny encoder on digits" not in (tmp_path / "cut.log").read_text() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(6)  # into its 30 steps
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) != 0
    (saved,) = (cut / "outputs" / "cache" / "scratch" / "experts").glob("*/state.pt")
    assert "stopped by SIGTERM" in (tmp_path / "cut.log").read_text()
    assert _run(cut, *args, log=tmp_path / "rerun.log").wait(timeout=1800) == 0
    rerun = (tmp_path / "rerun.log").read_text()
    assert "resuming the digits expert from step " in rerun, rerun
    assert not saved.exists()  # removed once the expert is published
    for dataset in ("digits", "shapes"):
        expected, got = _expert(whole, dataset), _expert(cut, dataset)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), dataset  # identical tensors
    assert _results(whole) == _results(cut)[-1:]


# ---- every exit recorded; a remote tracking server ------------------------------------------

FAST = [a for a in FAST_RUN if a != "logger=none"]  # the cheapest whole run, recorded in MLflow
LONG_PORTLAND = ["merge=portland", "merge.global_epochs=1000000", "merge.eval_every=1"]  # stopped by the test
EXPERIMENT = "neulig-embedded-tiny"
METRICS = {"acc/merged/avg": 75.875, "acc/ensembled/avg": 76.5, "gap/avg": 0.625}


def client_of(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def runs_of(uri: str, experiment: str = EXPERIMENT) -> list:
    client = client_of(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def artifact_text(uri: str, run_id: str, name: str, dst: Path) -> str:
    return Path(client_of(uri).download_artifacts(run_id, name, str(dst))).read_text()


# ------------------------------------------------------------------------------------ errors after the experiment


class Broken(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["table", "write_outputs", "report"])
def test_an_error_after_the_experiment_ends_the_run_failed_with_its_line_and_traceback(where, tmp_path, monkeypatch):
    """The experiment itself is replaced by a stand-in (what it computes is not the point): the stages after
    it (the table, the run's files, the MLflow report) fail, and the run must not stay RUNNING."""
    from types import SimpleNamespace

    import neulig.recipe
    import neulig.run
    from neulig.callbacks.mlflow import MLflowReporter
    from tests.conftest import compose, execute

    def broken(*args, **kwargs):
        raise Broken(f"{where} broke\nsecond line of the message")

    result = SimpleNamespace(record=lambda name: {"metrics": {}})
    monkeypatch.setattr(neulig.recipe, "run_experiment", lambda config, callbacks=(): result)
    monkeypatch.setattr(neulig.run, "table", (lambda config, result: "table") if where != "table" else broken)
    monkeypatch.setattr(neulig.run, "write_outputs",
                        (lambda *a: {}) if where != "write_outputs" else broken)
    monkeypatch.setattr(MLflowReporter, "report", broken if where == "report" else lambda *a: None)
    cfg = compose([*FAST, "merge=average"], tmp_path)
    with pytest.raises(Broken):
        execute(cfg, tmp_path / "run")
    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    (run,) = runs_of(uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["neulig.error"] == f"Broken: {where} broke"
    trace = artifact_text(uri, run.info.run_id, "error.txt", tmp_path / "got")
    assert trace.startswith("Traceback") and f"Broken: {where} broke\nsecond line of the message" in trace


def test_a_run_whose_process_is_gone_is_marked_killed_by_the_next_start(tmp_path, neulig_log):
    from neulig.callbacks.mlflow import MLflowReporter
    from neulig.tracking.liveness import process_tags

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = gone.stdout.strip()
    client = client_of(uri)
    experiment_id = client.create_experiment("other-experiment")
    tags = {**process_tags(), "neulig.pid": dead_pid}  # this host, a process that has exited
    dead = client.create_run(experiment_id, run_name="dead-run", tags=tags).info.run_id
    alive = client.create_run(experiment_id, run_name="alive-run", tags=process_tags()).info.run_id  # this process
    elsewhere = client.create_run(experiment_id, run_name="elsewhere",
                                  tags={**tags, "neulig.host": "another-host"}).info.run_id
    MLflowReporter(uri, EXPERIMENT, "next-run").open()
    assert neulig_log == [f"marked run dead-run (pid {dead_pid}) KILLED in the MLflow store: its process is gone"]
    status = {r: client.get_run(r).info.status for r in (dead, alive, elsewhere)}
    assert status == {dead: "KILLED", alive: "RUNNING", elsewhere: "RUNNING"}
    assert "process" in client.get_run(dead).data.tags["neulig.error"]


@pytest.fixture
def neulig_log():
    """The messages the ``neulig`` logger emits during the test."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    logging.getLogger("neulig").addHandler(handler)
    yield lines
    logging.getLogger("neulig").removeHandler(handler)


# ------------------------------------------------------------------------------------ signals, through the CLI


class Watched:
    """A CLI run whose stderr is read line by line as it comes."""

    def __init__(self, root: Path, *args: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("NEULIG_RUN_DIR", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "neulig.run", f"paths.root_dir={root}", *FAST, *args],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, text: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.seen):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"no line with {text!r} within {timeout} s:\n" + "\n".join(self.seen))
            if line is None:
                pytest.fail(f"exited ({self.proc.wait()}) before a line with {text!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)

    def training(self, uri: str, timeout: float = 300) -> None:
        """Wait until the run's MLflow record holds a first Portland epoch: training is under way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [r for r in runs_of(uri) if r.data.tags.get("neulig.pid") == str(self.proc.pid)]
            if mine and any(k.startswith("portland/") for k in mine[0].data.metrics):
                return
            assert self.proc.poll() is None, "\n".join(self.seen)
            time.sleep(0.5)
        self.proc.kill()
        pytest.fail("Portland logged no epoch")

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return code


def own_run(uri: str, pid: int):
    (run,) = [r for r in runs_of(uri) if r.data.tags.get("neulig.pid") == str(pid)]
    return run


@pytest.fixture(scope="module")
def signal_root(tmp_path_factory) -> Path:
    """One root for the signal tests: the first run fills the cache, the others start warm."""
    return tmp_path_factory.mktemp("signals")


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_a_signal_during_portland_ends_the_run_killed(signum, signal_root, tmp_path):
    uri = f"sqlite:///{signal_root}/outputs/mlflow.db"
    run = Watched(signal_root, *LONG_PORTLAND)
    run.training(uri)
    run.proc.send_signal(signum)
    code = run.finish()
    name = signal.Signals(signum).name
    assert code == 128 + signum, "\n".join(run.seen)  # as a shell reports a process ended by that signal
    foreign = [line for line in run.seen if line.strip() and not line.startswith("[neulig] ")]
    assert foreign == [f"neulig: interrupted by {name}; stopped"]  # no traceback, no Lightning banner
    recorded = own_run(uri, run.proc.pid)
    assert recorded.info.status == "KILLED"
    assert recorded.data.tags["neulig.error"] == f"Interrupted: {name}"
    assert f"Interrupted: {name}" in artifact_text(uri, recorded.info.run_id, "error.txt", tmp_path)


@pytest.mark.slow
def test_a_run_killed_without_a_word_is_marked_killed_by_the_next_cli_start(signal_root):
    uri = f"sqlite:///{signal_root}/outputs/mlflow.db"
    run = Watched(signal_root, *LONG_PORTLAND)
    run.training(uri)
    run.proc.kill()  # SIGKILL: no handler runs, the run stays RUNNING
    run.finish()
    assert own_run(uri, run.proc.pid).info.status == "RUNNING"
    following = Watched(signal_root, "merge=average")
    assert following.finish(timeout=600) == 0, "\n".join(following.seen)
    assert own_run(uri, run.proc.pid).info.status == "KILLED"
    said = [line for line in following.seen if "KILLED" in line]
    assert len(said) == 1 and f"(pid {run.proc.pid})" in said[0], following.seen


# ------------------------------------------------------------------------------------ a remote tracking server


class Server:
    """``mlflow server`` on loopback over a sqlite store, which the tests stop and start again."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                 "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while True:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "no /health answer"
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    found = Server(tmp_path_factory.mktemp("server"))
    found.start()
    yield found
    found.stop()


def open_reporter(url: str, run_dir: Path, retries: int):
    from neulig.callbacks.mlflow import MLflowReporter
    from neulig.tracking.http import HttpPolicy

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"metrics": METRICS}))
    reporter = MLflowReporter(url, "neulig-faults", run_dir.name, {"merge": "portland"}, run_dir,
                              HttpPolicy(retries=retries, timeout_s=10))
    reporter.open()
    reporter.log_curve({"portland/loss": 1.0}, 0)
    return reporter


def curve_steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "portland/loss"))


def test_a_server_restarted_mid_run_is_carried_through_by_retries(server, tmp_path):
    reporter = open_reporter(server.url, tmp_path / "restarted", retries=6)  # up to ~60 s of backoff
    server.stop()
    restart = threading.Thread(target=server.start)
    restart.start()  # the server comes back while the next call is being retried
    try:
        reporter.log_curve({"portland/loss": 0.5}, 1)
    finally:
        restart.join()
    reporter.finish({"merge": {"name": "portland"}}, METRICS, [tmp_path / "restarted" / "results.json"],
                    root=tmp_path / "restarted")
    assert reporter.lost is None and not (tmp_path / "restarted" / "mlflow_record.json").exists()
    client = client_of(server.url)
    run = client.get_run(reporter.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["acc/merged/avg"] == METRICS["acc/merged/avg"]
    assert curve_steps(client, reporter.run_id) == [0, 1]


def test_a_server_down_for_the_rest_of_the_run_keeps_the_record_to_upload_later(server, tmp_path, capsys):
    from neulig.report import main
    from neulig.tracking.record import Child

    run_dir = tmp_path / "offline"
    reporter = open_reporter(server.url, run_dir, retries=1)
    server.stop()
    try:
        reporter.log_curve({"portland/loss": 0.5}, 1)  # fails past its retry: the run goes on without the store
        reporter.log_curve({"portland/loss": 0.25}, 2)
        reporter.record.children = [Child("a+b", {"datasets": "['a', 'b']"}, {"acc/merged/avg": 70.0})]
        reporter.finish({"merge": {"name": "portland"}}, METRICS, [run_dir / "results.json"], root=run_dir)
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"neulig: warning: MLflow store {server.url} stopped answering")
        assert err[0].endswith(f"send it with: python -m neulig.report --upload {run_dir.resolve()}")
        kept = json.loads((run_dir / "mlflow_record.json").read_text())
        assert kept["metrics"] == METRICS and kept["status"] == "FINISHED"
        assert [c[3] for c in kept["curves"]] == [0, 1, 2]
    finally:
        server.start()
    client = client_of(server.url)
    assert client.get_run(reporter.run_id).info.status == "RUNNING"  # what the store knew

    assert main(["--upload", str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"{run_dir}: sent (MLflow run {reporter.run_id} ")
    run = client.get_run(reporter.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["neulig.record"] == "complete"
    assert {k: run.data.metrics[k] for k in METRICS} == METRICS
    assert curve_steps(client, reporter.run_id) == [0, 1, 2]  # the live point once, then the kept ones
    assert [a.path for a in client.list_artifacts(reporter.run_id)] == ["results.json"]
    before = sorted(r.info.run_id for r in runs_of(server.url, "neulig-faults"))
    assert len(before) >= 2  # the run and its nested combination

    assert main(["--upload", str(run_dir)]) == 0  # again: nothing new
    assert "already in the store, nothing sent" in capsys.readouterr().out
    assert sorted(r.info.run_id for r in runs_of(server.url, "neulig-faults")) == before
    assert curve_steps(client, reporter.run_id) == [0, 1, 2]


@pytest.mark.slow
def test_a_cli_run_survives_a_server_restart(server, tmp_path):
    run = Watched(tmp_path, "merge=portland", "merge.global_epochs=200", "merge.eval_every=10",
                  f"logger.tracking_uri={server.url}", "logger.experiment_name=neulig-restart")
    run.until("expert features ready")
    server.stop()
    server.start()
    assert run.finish(timeout=600) == 0, "\n".join(run.seen)
    (recorded,) = runs_of(server.url, "neulig-restart")
    assert recorded.info.status == "FINISHED" and "acc/merged/avg" in recorded.data.metrics
    assert not list(tmp_path.glob("outputs/runs/*/mlflow_record.json"))


def test_a_server_unreachable_at_the_start_is_one_line_and_leaves_no_setting_behind():
    from neulig.callbacks.mlflow import MLflowReporter
    from neulig.errors import NeuligError

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    with pytest.raises(NeuligError) as caught:
        MLflowReporter(url, EXPERIMENT, "never").open()  # the start-up check takes no retry
    message = str(caught.value)
    assert message.startswith(f"MLflow tracking store '{url}' is unreachable (") and "\n" not in message
    assert message.endswith("fix logger.tracking_uri or use logger=none")
    assert {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")} == before
