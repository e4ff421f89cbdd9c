"""``python -m neulig.report``: every option, on a real store, with exactly the logged numbers."""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neulig.report import main
from neulig.report.cli import parser
from tests.conftest import REPO
from tests.report.conftest import DATASETS, DIVERSE, FT, KINDS, OLD, PRE, SINGLE, by

COLUMNS = [*DATASETS, "avg"]


def report(capsys, store, *args: str) -> str:
    assert main(["--tracking-uri", store["uri"], *args]) == 0
    return capsys.readouterr().out


def tables(text: str) -> dict[str, list[list[str]]]:
    """experiment -> its markdown table's rows (header and separator excluded), as stripped cells."""
    out: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("experiment: "):
            current = line.split()[1]
            out[current] = []
        elif line.startswith("|"):
            out[current].append([c.strip() for c in line.strip().strip("|").split("|")])
    return {k: v[2:] for k, v in out.items()}


def f2(value: float) -> str:
    return f"{value:.2f}"


def triple(metrics: dict, d: str) -> str:
    keys = (f"acc/merged/{d}", f"acc/ensembled/{d}", f"gap/{d}")
    return " / ".join(f2(metrics[k]) if k in metrics else "–" for k in keys)


def test_every_run_a_row_of_its_experiment_s_table_with_its_logged_numbers(store, capsys):
    out = report(capsys, store)
    found = tables(out)
    assert set(found) == {SINGLE, DIVERSE}  # the diverse-origin runs get their own table
    single = found[SINGLE]
    assert single[0] == ["Pre-trained", *(f2(PRE[d]) for d in DATASETS), f2(sum(PRE.values()) / 4), ""]
    assert single[1] == ["Fine-tuned", *(f2(FT[d]) for d in DATASETS), f2(sum(FT.values()) / 4), ""]
    rows = {r[-1].split()[0]: r for r in single[2:]}  # the run column: two seed-0 default runs read the same
    for logged in [r for r in store["runs"] if r.experiment == SINGLE]:
        row = rows[logged.run_id[:8]]
        assert row[1:6] == [triple(logged.metrics, d) for d in COLUMNS], logged.overrides
    # labels: the method and only the options that differ among its rows of this table
    labels = sorted({r[0] for r in single[2:]})
    assert labels == ["portland (data.num_co_models=2, merge.views=2, seed=0)",
                      "portland (data.num_co_models=None, merge.views=0, seed=0)",
                      "portland (data.num_co_models=None, merge.views=2, seed=0)",
                      "portland (data.num_co_models=None, merge.views=2, seed=1)",
                      "portland (data.num_co_models=None, merge.views=2, seed=2)", "regmean"]
    assert "data.root" not in out and "paths." not in out and "model.origins" not in out
    diverse = [r[0] for r in found[DIVERSE][2:]]
    assert diverse == ["average (align.method=None, seed=0)", "average (align.method=weight, seed=0)",
                       "average (align.method=weight, seed=1)", "average (align.method=weight, seed=2)"]
    assert "| run |" not in out.split(f"experiment: {SINGLE}")[0]  # no re-runs there: no run column
    assert "ties" not in out  # the FAILED run


def test_latest_keeps_the_newest_run_of_each_experiment_and_seed(store, capsys):
    found = tables(report(capsys, store, "--latest"))
    single = {r[0]: r for r in found[SINGLE][2:]}
    assert len(single) == len(found[SINGLE]) - 2 == 6  # every label once: the older seed-0 re-run is gone
    assert all(len(r) == 6 for r in found[SINGLE])  # no run column
    newest = by(store["runs"], "merge=portland", "seed=0")[-1]
    assert newest.overrides == ("merge=portland", "seed=0")
    assert single["portland (data.num_co_models=None, merge.views=2, seed=0)"][5] == triple(newest.metrics, "avg")
    assert len(found[DIVERSE]) == 2 + 4  # align none/weight and seeds 0, 1, 2 are all kept


def test_over_seeds_one_table_per_experiment_one_row_per_group(store, capsys):
    text = report(capsys, store, "--over-seeds")
    found = tables(text)
    single = {r[0]: r for r in found[SINGLE]}
    default = single["portland (data.num_co_models=None, merge.views=2)"]
    runs = [by(store["runs"], "merge=portland", "seed=0")[-1], *by(store["runs"], "merge=portland", "seed=1"),
            next(r for r in store["runs"] if r.overrides == OLD)]  # newest seed 0, seed 1, the older-format seed 2
    assert default[-1] == "0,1,2"
    for i, key in enumerate(("acc/merged", "acc/ensembled", "gap")):
        values = [r.metrics[f"{key}/avg"] for r in runs]
        assert default[5].split(" / ")[i] == f"{f2(statistics.fmean(values))} ± {f2(statistics.stdev(values))}"
        assert default[1].split(" / ")[i] == f2(statistics.fmean(r.metrics[f"{key}/digits"] for r in runs))
    assert single["regmean"][5] == f"{f2(by(store['runs'], 'merge=regmean')[0].metrics['acc/merged/avg'])} ± 0.00 / – / –"
    assert single["regmean"][-1] == "0" and single["Pre-trained"][-1] == "0,1,2"
    assert single["Pre-trained"][5] == f"{f2(sum(PRE.values()) / 4)} ± 0.00"
    diverse = {r[0]: r[-1] for r in found[DIVERSE]}
    assert diverse == {"Pre-trained": "0,1,2", "Fine-tuned": "0,1,2", "average (align.method=None)": "0",
                       "average (align.method=weight)": "0,1,2"}


def test_metrics_add_one_column_each_with_the_logged_values(store, capsys):
    found = tables(report(capsys, store, "--over-seeds", "--metrics", "acc/ensembled/digits", "acc/merged_task/avg"))
    single = {r[0]: r for r in found[SINGLE]}
    runs = [by(store["runs"], "merge=portland", "seed=0")[-1], *by(store["runs"], "merge=portland", "seed=1"),
            next(r for r in store["runs"] if r.overrides == OLD)]
    values = [r.metrics["acc/ensembled/digits"] for r in runs]
    row = single["portland (data.num_co_models=None, merge.views=2)"]
    # the older-format seed-2 run never logged acc/merged_task: no mean of two seeds passed off as three, a dash
    assert row[6:8] == [f"{f2(statistics.fmean(values))} ± {f2(statistics.stdev(values))}", "–"]
    assert single["regmean"][6] == "–" and single["Pre-trained"][6:8] == ["–", "–"]
    rows = list(csv.DictReader(io.StringIO(report(capsys, store, "--format", "csv", "--metrics", "acc/merged_task/avg"))))
    first = store["runs"][0]
    assert float(next(r for r in rows if r["run_id"] == first.run_id)["acc/merged_task/avg"]) == \
        first.metrics["acc/merged_task/avg"]


def test_csv_is_exact_and_matches_results_json(store, capsys):
    rows = list(csv.DictReader(io.StringIO(report(capsys, store, "--format", "csv", "--granularities"))))
    methods = {r["run_id"]: r for r in rows if r["row"] == "method"}
    assert set(methods) == {r.run_id for r in store["runs"]}
    for logged in store["runs"]:
        row = methods[logged.run_id]
        saved = json.loads(logged.results.read_text())["metrics"]
        assert (row["model"], row["data"], row["run_name"], row["experiment"], row["seed"]) == (
            "tiny", "embedded", logged.run_name, logged.experiment, str(logged.seed))
        assert row["method"].startswith(logged.merge)
        for d in DATASETS:
            assert float(row[f"{d} Mer."]) == saved[f"acc/merged/{d}"]
        if "gap/avg" in saved:
            assert float(row["Avg Ens."]) == saved["acc/ensembled/avg"]
            assert float(row["Avg Gap"]) == saved["gap/avg"]
        else:
            assert row["Avg Ens."] == row["Avg Gap"] == ""
    grains = [r for r in rows if r["row"] == "granularity"]
    assert {r["method"].split(", ", 3)[-1] for r in grains} == set(KINDS.values())
    task = next(r for r in grains if r["method"].endswith("one merge per dataset"))
    first = store["runs"][0]
    assert float(task["digits Mer."]) == first.metrics["acc/merged_task/digits"] and task["digits Ens."] == ""
    assert [r["method"] for r in rows if r["row"] == "reference"] == ["Pre-trained", "Fine-tuned"] * 2


def test_experiment_filter_scatter_and_decimals(store, capsys, tmp_path):
    png = tmp_path / "fig" / "scatter.png"
    assert main(["--tracking-uri", store["uri"], "--experiment", DIVERSE, "--filter",
                 "tags.`config.align.method` = 'weight'", "--scatter", str(png), "--decimals", "4"]) == 0
    out, err = capsys.readouterr()
    assert err == f"scatter: {png}\n"
    found = tables(out)
    assert list(found) == [DIVERSE]
    assert [r[0] for r in found[DIVERSE][2:]] == ["average (seed=0)", "average (seed=1)", "average (seed=2)"]
    seed1 = by(store["runs"], "align=weight", "seed=1")[0]
    assert found[DIVERSE][3][5] == f"{seed1.metrics['acc/merged/avg']:.4f} / {seed1.metrics['acc/ensembled/avg']:.4f}" \
                                   f" / {seed1.metrics['gap/avg']:.4f}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in png.parent.iterdir() if p.name != "scatter.png"]  # no temp file left


def test_all_statuses_shows_no_row_for_a_failed_run_without_results(store, capsys):
    assert report(capsys, store, "--all-statuses", "--latest") == report(capsys, store, "--latest")


def test_every_option_is_covered_here():
    options = {a.option_strings[-1] for a in parser()._actions if a.option_strings} - {"--help"}
    covered = {"--tracking-uri", "--experiment", "--filter", "--format", "--scatter", "--latest", "--all-statuses",
               "--granularities", "--over-seeds", "--decimals", "--metrics",
               "--upload"}  # tests/integration/test_faults.py sends a kept record twice
    assert options == covered, "a new option needs its test in tests/report/test_cli.py"


@pytest.mark.parametrize("args, message", [
    (["--filter", "params.`merge.name` = 'nosuch'"], "no runs matched"),
    (["--experiment", "neulig-nosuch-tiny"], f"unknown experiment 'neulig-nosuch-tiny'; available: {DIVERSE}, {SINGLE}"),
    (["--filter", "params.merge.name === 'x'"], "invalid --filter"),
    (["--scatter", "plot.pdf"], "--scatter must name a .png file"),
    (["--decimals", "18"], "--decimals must be between 0 and 17"),
    (["--over-seeds", "--format", "csv"], "--over-seeds shows every seed's run as one markdown row"),
    (["--over-seeds", "--latest"], "--over-seeds shows every seed's run as one markdown row"),
    (["--tracking-uri", "http://127.0.0.1:1"], "no MLflow server answers at http://127.0.0.1:1"),
])
def test_user_errors_exit_2_with_one_line(store, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["--tracking-uri", store["uri"], *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("neulig.report: error: ") and message in err


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neulig.report", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_cli_help_is_fast_and_plain(tmp_path):
    start = time.perf_counter()
    proc = cli("--help", cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and proc.stderr == ""
    for word in ("Mer.", "Ens.", "Gap", "|Avg Ens. - Avg Mer.|", "--latest", "--scatter", "--filter", "--experiment",
                 "--format", "--tracking-uri", "--over-seeds", "--granularities", "--decimals", "--all-statuses",
                 "Pre-trained", "Fine-tuned", "examples:", "config.<option>"):
        assert word in proc.stdout, word
    assert elapsed < 5, f"--help took {elapsed:.1f} s (mlflow/matplotlib must be imported lazily)"


def test_cli_missing_store_is_one_line_and_creates_nothing(tmp_path):
    proc = cli(cwd=tmp_path)  # default store outputs/mlflow.db does not exist here
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no MLflow store at outputs/mlflow.db" in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # MLflow did not create an empty store
