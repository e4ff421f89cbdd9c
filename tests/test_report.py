"""``python -m neulig.report`` rebuilds Table 2 from MLflow with exactly the logged numbers."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neulig.report import KINDS_TAG, main
from tests.conftest import REPO

EXPERIMENT = "neulig-toy-tiny"
DATASETS = ["alpha", "beta"]


def contract(merged: dict, ensembled: dict | None, pretrained: dict, finetuned: dict, extra: dict | None = None):
    """Metrics as neulig.pipeline.contract_metrics makes them (avg = mean, gap/avg = |avg ens - avg mer|)."""
    metrics = {}
    for kind, values in (("merged", merged), ("ensembled", ensembled), ("pretrained", pretrained),
                         ("finetuned", finetuned), *((extra or {}).items())):
        if values is None:
            continue
        for d, v in values.items():
            metrics[f"acc/{kind}/{d}"] = v
        metrics[f"acc/{kind}/avg"] = sum(values.values()) / len(values)
    if ensembled is not None:
        for d in merged:
            metrics[f"gap/{d}"] = abs(ensembled[d] - merged[d])
        metrics["gap/avg"] = abs(metrics["acc/ensembled/avg"] - metrics["acc/merged/avg"])
    return metrics


PRE = {"alpha": 24.166665971279144, "beta": 27.666667103767395}
FT = {"alpha": 94.9999988079071, "beta": 76.83333158493042}
RUNS = [  # (merge, seed, metrics), logged in this order (the last portland is the newest)
    ("portland", 0, contract({"alpha": 93.0, "beta": 77.33333333333333}, {"alpha": 92.00000166893005, "beta": 74.125},
                             PRE, FT, {"merged_batch": {"alpha": 93.0, "beta": 77.33333333333333},
                                       "merged_task": {"alpha": 94.49999928474426, "beta": 77.0},
                                       "merged_global": {"alpha": 60.16666889190674, "beta": 43.99999976158142}})),
    ("regmean", 0, contract({"alpha": 41.83333516120911, "beta": 30.666667222976685}, None, PRE, FT)),
    ("portland", 1, contract({"alpha": 95.125, "beta": 79.004999}, {"alpha": 96.33333086967468, "beta": 78.995001},
                             PRE, FT)),
]


def log_runs(uri: str, run_root: Path) -> list[dict]:
    """The three fake runs through MLflowReporter (as run.py logs them), plus one failed run."""
    from neulig.callbacks.mlflow import MLflowReporter

    logged = []
    for merge, seed, metrics in RUNS:
        name = f"{merge}-toy-tiny-s{seed}"
        tags = {"backbone": "tiny", "datasets": ",".join(DATASETS), "merge": merge, "merge.kind": "static"}
        reporter = MLflowReporter(uri, EXPERIMENT, name, tags)
        reporter.open()
        run_dir = run_root / name
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps({"run_name": name, "metrics": metrics}, indent=2))
        cfg = {"merge": {"name": merge, "kind": "static"}, "model": {"name": "tiny"},
               "data": {"name": "toy", "datasets": DATASETS}, "seed": seed}
        if merge == "portland":  # as MLflowReporter.report tags a run with extra kinds of accuracy
            from neulig.portland.evaluation import LABELS

            reporter.client.set_tag(reporter.run_id, KINDS_TAG, json.dumps(LABELS))
        reporter.finish(cfg, metrics, [run_dir / "results.json"])
        logged.append({"run_id": reporter.run_id, "name": name, "merge": merge, "dir": run_dir})
        time.sleep(0.01)  # distinct start times
    broken = MLflowReporter(uri, EXPERIMENT, "average-toy-tiny-s0", {"backbone": "tiny", "merge": "average"})
    broken.open()
    broken.fail()
    return logged


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)  # MLflow puts artifacts of a sqlite store under ./mlruns: keep them in the temp dir
    try:
        runs = log_runs(uri, root / "runs")
    finally:
        os.chdir(cwd)
    return {"uri": uri, "root": root, "runs": runs}


def report(capsys, *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def table_rows(text: str) -> list[list[str]]:
    """Markdown table rows (header and separator excluded) as lists of stripped cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    return rows[2:]


def f2(value: float) -> str:
    return f"{value:.2f}"


def test_markdown_table_equals_logged_metrics(store, capsys):
    out = report(capsys, "--tracking-uri", store["uri"])
    header = next(line for line in out.splitlines() if line.startswith("| method"))
    assert "alpha Mer. / Ens. / Gap" in header and "Avg Mer. / Ens. / Gap" in header
    assert "| run |" in header  # two portland runs: the run column tells them apart
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["Pre-trained", "Fine-tuned", "portland", "portland", "regmean"]
    assert rows[0][1:4] == [f2(PRE["alpha"]), f2(PRE["beta"]), f2(sum(PRE.values()) / 2)]
    assert rows[1][1:4] == [f2(FT["alpha"]), f2(FT["beta"]), f2(sum(FT.values()) / 2)]
    by_id = {r[4].split()[0]: r for r in rows[2:]}
    for logged, (merge, _, metrics) in zip(store["runs"], RUNS):
        row = by_id[logged["run_id"][:8]]
        assert row[0] == merge
        for i, d in enumerate(DATASETS + ["avg"], start=1):
            if merge == "regmean":
                assert row[i] == f"{f2(metrics[f'acc/merged/{d}'])} / – / –"
            else:
                assert row[i] == " / ".join(f2(metrics[k]) for k in (f"acc/merged/{d}", f"acc/ensembled/{d}", f"gap/{d}"))
    # Avg gap is |Avg Ens. - Avg Mer.| (gap/avg), not the mean of the per-dataset gaps
    newest = RUNS[2][2]
    assert f2(newest["gap/avg"]) != f2((newest["gap/alpha"] + newest["gap/beta"]) / 2)
    assert by_id[store["runs"][2]["run_id"][:8]][3].endswith(f2(newest["gap/avg"]))
    assert "average" not in out  # the FAILED run is left out by default


def test_latest_keeps_newest_run_per_method(store, capsys):
    rows = table_rows(report(capsys, "--tracking-uri", store["uri"], "--latest"))
    assert [r[0] for r in rows] == ["Pre-trained", "Fine-tuned", "portland", "regmean"]
    assert rows[2][3].startswith(f2(RUNS[2][2]["acc/merged/avg"]))
    assert len(rows[2]) == 4  # no duplicates: no run column


def test_csv_is_exact_and_matches_results_json(store, capsys):
    out = report(capsys, "--tracking-uri", store["uri"], "--format", "csv", "--granularities")
    rows = list(csv.DictReader(io.StringIO(out)))
    methods = [r for r in rows if r["row"] == "method"]
    assert len(methods) == 3
    for logged in store["runs"]:
        saved = json.loads((logged["dir"] / "results.json").read_text())["metrics"]
        row = next(r for r in methods if r["run_id"] == logged["run_id"])
        assert (row["model"], row["data"], row["method"], row["run_name"]) == ("tiny", "toy", logged["merge"], logged["name"])
        for d in DATASETS:
            assert float(row[f"{d} Mer."]) == saved[f"acc/merged/{d}"]
        assert float(row["Avg Mer."]) == saved["acc/merged/avg"]
        if "gap/avg" in saved:
            assert float(row["Avg Ens."]) == saved["acc/ensembled/avg"]
            assert float(row["Avg Gap"]) == saved["gap/avg"]
            assert float(row["beta Gap"]) == saved["gap/beta"]
        else:
            assert row["Avg Ens."] == row["Avg Gap"] == ""
    grains = [r for r in rows if r["row"] == "granularity"]
    assert {r["method"] for r in grains} == {"portland, merged per test batch", "portland, one merge per dataset",
                                             "portland, one merge for all"}
    task = next(r for r in grains if r["method"] == "portland, one merge per dataset")
    assert float(task["alpha Mer."]) == RUNS[0][2]["acc/merged_task/alpha"] and task["alpha Ens."] == ""
    assert [r["method"] for r in rows if r["row"] == "reference"] == ["Pre-trained", "Fine-tuned"]


def test_filter_experiment_and_scatter(store, capsys, tmp_path):
    png = tmp_path / "fig" / "scatter.png"
    out = report(capsys, "--tracking-uri", store["uri"], "--experiment", EXPERIMENT,
                 "--filter", "params.merge.name = 'regmean'", "--scatter", str(png))
    assert [r[0] for r in table_rows(out)] == ["Pre-trained", "Fine-tuned", "regmean"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in png.parent.iterdir() if p.name != "scatter.png"]  # no temp file left


def test_all_statuses_shows_failed_run_only_if_it_has_results(store, capsys):
    # the failed run logged no metrics, so it has no row even with --all-statuses
    rows = table_rows(report(capsys, "--tracking-uri", store["uri"], "--all-statuses", "--latest"))
    assert [r[0] for r in rows] == ["Pre-trained", "Fine-tuned", "portland", "regmean"]


@pytest.mark.parametrize("args, message", [
    (["--filter", "params.merge.name = 'nosuch'"], "no runs matched"),
    (["--experiment", "neulig-nosuch-tiny"], "unknown experiment 'neulig-nosuch-tiny'; available: neulig-toy-tiny"),
    (["--filter", "params.merge.name === 'x'"], "invalid --filter"),
    (["--scatter", "plot.pdf"], "--scatter must name a .png file"),
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
                 "--format", "--tracking-uri", "Pre-trained", "Fine-tuned", "examples:"):
        assert word in proc.stdout, word
    assert elapsed < 5, f"--help took {elapsed:.1f} s (mlflow/matplotlib must be imported lazily)"


def test_cli_missing_store_is_one_line_and_creates_nothing(tmp_path):
    proc = cli(cwd=tmp_path)  # default store outputs/mlflow.db does not exist here
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no MLflow store at outputs/mlflow.db" in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # MLflow did not create an empty store


def test_over_seeds_gives_each_experiment_its_mean_and_sd(store, capsys):
    import statistics

    text = report(capsys, "--tracking-uri", store["uri"], "--over-seeds")
    rows = {r[0]: r for r in table_rows(text)}
    assert set(rows) == {"Pre-trained", "Fine-tuned", "portland", "regmean"}
    portland = [m for merge, _, m in RUNS if merge == "portland"]
    assert rows["portland"][-1] == "0,1" and rows["regmean"][-1] == "0"
    for i, key in enumerate(("acc/merged", "acc/ensembled", "gap")):
        values = [m[f"{key}/avg"] for m in portland]
        expected = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        assert rows["portland"][3].split(" / ")[i] == expected
    alpha = statistics.fmean(m["acc/merged/alpha"] for m in portland)
    assert rows["portland"][1].split(" / ")[0] == f2(alpha)
    assert rows["regmean"][3] == f"{RUNS[1][2]['acc/merged/avg']:.2f} ± 0.00 / – / –"
    assert rows["Pre-trained"][3] == f"{sum(PRE.values()) / 2:.2f} ± 0.00"


def test_over_seeds_labels_a_method_s_experiments_by_the_options_that_differ():
    from neulig.report import Run
    from neulig.report_seeds import group_runs

    def run(seed, views, start):
        return Run("id", "n", "e", "FINISHED", start, "portland", "tiny", "toy", ["a"], {"acc/merged/avg": 1.0},
                   params={"seed": str(seed), "merge.views": str(views), "merge.name": "portland", "paths.root_dir": "x"})

    groups = group_runs([run(0, 2, 1), run(1, 2, 2), run(0, 0, 3), run(0, 0, 4)])
    assert [(g.label, g.seeds, len(g.runs)) for g in groups] == [
        ("portland (merge.views=2)", ("0", "1"), 2), ("portland (merge.views=0)", ("0",), 1)]
    assert groups[1].runs[0].start_time == 4  # a re-run of a seed: the newest counts
