"""benchmarks/all.py: every row at its tiniest size on CPU writes one table (markdown + JSON) with every
row and every column; the budget split picks each row's size; a failing or absent row is reported, not
fatal. Speed targets live in the table, never in these tests."""
import dataclasses
import importlib.util
import json
import sys

import pytest
import torch

from tests.conftest import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_threads():
    """The scripts set torch's thread count (``--threads``): give the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# rows that run the whole pipeline (make run twice, the embedded stages): only in the slow test
PIPELINE = {"make_run", "portland_training"}


def check_table(bench, out: dict, ran: set[str]) -> dict:
    """The md/json pair lists every row once with every column; the rows in ``ran`` measured something."""
    names = [b.name for b in bench.R.ROWS]
    table = json.loads(out["json"].read_text())
    assert [r["name"] for r in table["rows"]] == names
    fields = {f.name for f in dataclasses.fields(bench.R.Row)}
    assert all(set(r) == fields for r in table["rows"])
    by_name = {r["name"]: r for r in table["rows"]}
    for b in bench.R.ROWS:
        row = by_name[b.name]
        if "cpu" not in b.devices:
            assert row["status"] == "not run on cpu (cuda only)"
        elif b.name not in ran:
            assert row["status"] == "not selected (--only)"
        elif b.optional and not b.path().exists():
            assert row["status"].startswith("not available")
        else:  # it ran: a figure, contenders measured in the same run, and the command that reproduces it
            assert row["status"].startswith(("measured", "extrapolated")), (b.name, row["status"])
            assert row["contenders"] and row["figure"] != "-" and row["seconds"] > 0
            assert row["command"].startswith(f"python benchmarks/{b.script}.py ")
    md = out["markdown"].read_text().splitlines()
    header = next(line for line in md if line.startswith("| row |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(bench.COLUMNS)
    for name in names:  # one line per row
        assert sum(line.startswith(f"| {name} |") for line in md) == 1
    assert table["meta"]["device_kind"] == "cpu" and table["meta"]["smoke"] is True
    return by_name


def test_smoke_writes_every_row_and_column(tmp_path, capsys):
    bench = load("all")
    ran = {b.name for b in bench.R.ROWS if "cpu" in b.devices} - PIPELINE
    out = bench.main(["--device", "cpu", "--smoke", "--in-process", "--out", str(tmp_path / "results"),
                      "--root", str(tmp_path / "root"), *(a for name in sorted(ran) for a in ("--only", name))])
    assert out["markdown"].name.startswith(out["json"].stem) and "-cpu-smoke-" in out["json"].name
    by_name = check_table(bench, out, ran)
    assert by_name["study_scale"]["status"].startswith("extrapolated")  # 120 x 200 epochs from 6 x 2
    assert by_name["portland_stage"]["status"].startswith("measured")  # smoke: 2 epochs (an epoch is below the noise)
    assert by_name["merge_inference"]["ratio"] > 0
    assert "written:" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_every_row_in_its_own_process(tmp_path):
    """The default way: every row in a fresh interpreter, the pipeline rows included."""
    bench = load("all")
    out = bench.main(["--device", "cpu", "--smoke", "--out", str(tmp_path / "results"), "--root", str(tmp_path / "root")])
    assert out["json"].name.endswith("-cpu-smoke.json")
    by_name = check_table(bench, out, {b.name for b in bench.R.ROWS if "cpu" in b.devices})
    assert by_name["make_run"]["ratio"] > 0  # cold / warm


def fake(bench, name: str, costs: list[float], devices=("cpu", "cuda"), optional=False):
    R = bench.R
    plans = [R.Plan((f"--size={s:g}",), s, "" if i == 0 else "cut") for i, s in enumerate(costs)]
    return R.Bench(name, "merge_inference", name, lambda c: plans,
                   lambda c: R.Plan(("--size=0",), 0), lambda r, c: None, devices=devices, optional=optional)


def run(bench, benches, budget: float, monkeypatch, fail=()):
    """``run_rows`` with the scripts replaced by a recorder (each row then takes almost no time)."""
    R, ran = bench.R, []

    def summarise(b, argv, context):
        ran.append((b.name, argv[0]))
        if b.name in fail:
            raise RuntimeError("boom")
        return R.Summary("f", (("a", "1"),), 1.0, "a / b", "-", None)

    monkeypatch.setattr(bench, "summarise", summarise)
    args = bench.build_parser().parse_args(["--device", "cpu", "--in-process", "--budget", str(budget)])
    rows = bench.run_rows(benches, args, R.Context("cpu", REPO, 0))
    return rows, ran


def test_budget_runs_full_sizes_when_they_fit_and_cuts_where_forced(monkeypatch):
    bench = load("all")
    benches = [fake(bench, "a", [100, 10]), fake(bench, "b", [300, 30])]
    rows, ran = run(bench, benches, 1000, monkeypatch)
    assert ran == [("a", "--size=100"), ("b", "--size=300")]
    assert [r.status for r in rows] == ["measured", "measured"]
    rows, ran = run(bench, benches, 200, monkeypatch)  # a's share is 50: cut; b's then ~200 < 300: cut
    assert ran == [("a", "--size=10"), ("b", "--size=30")]
    assert [r.status for r in rows] == ["measured (reduced: cut)"] * 2
    _, ran = run(bench, benches, 350, monkeypatch)  # a's share 87.5: cut; b's then ~350: full
    assert ran == [("a", "--size=10"), ("b", "--size=300")]


def test_choose_takes_the_largest_size_that_fits():
    bench = load("all")
    plans = [bench.R.Plan(("full",), 100), bench.R.Plan(("half",), 50, "half"), bench.R.Plan(("tiny",), 10, "tiny")]
    assert bench.choose(plans, 100).argv == ("full",)
    assert bench.choose(plans, 99).argv == ("half",)
    assert bench.choose(plans, 1).argv == ("tiny",)  # nothing fits: the cheapest still runs


def test_failed_absent_and_other_device_rows_are_reported_and_the_rest_run(monkeypatch):
    bench = load("all")
    benches = [fake(bench, "broken", [1]), fake(bench, "gpu_only", [1], devices=("cuda",)),
               fake(bench, "absent", [1], optional=True), fake(bench, "fine", [1])]
    benches[2] = dataclasses.replace(benches[2], script="no_such_benchmark")
    rows, ran = run(bench, benches, 100, monkeypatch, fail=("broken",))
    status = {r.name: r.status for r in rows}
    assert status["broken"] == "failed (boom)"
    assert status["gpu_only"] == "not run on cpu (cuda only)"
    assert status["absent"] == "not available (benchmarks/no_such_benchmark.py absent)"
    assert status["fine"] == "measured"
    assert [name for name, _ in ran] == ["broken", "fine"]


def test_portland_stage_refuses_a_measure_that_cannot_extrapolate():
    stage = load("portland_stage")
    for measure in (["3", "2"], ["1", "200"], ["0", "2"]):
        with pytest.raises(SystemExit, match="--measure takes two increasing epoch counts below --epochs 200"):
            stage.main(["--measure", *measure])
