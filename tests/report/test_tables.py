"""The table model: one table per experiment, rows labelled by the options that differ, means over seeds."""
from __future__ import annotations

import statistics

from neulig.report.store import RunRecord
from neulig.report.tables import keep_latest, run_tables, seed_tables

BASE = {"merge.name": "portland", "model.name": "tiny", "data.name": "toy", "align.method": "None",
        "data.num_co_models": "None", "merge.views": "2", "seed": "0"}


def record(start: int, merged: float, experiment: str = "study", method: str = "portland", datasets=("a", "b"),
           **options: str) -> RunRecord:
    metrics = {"acc/merged/a": merged, "acc/merged/b": merged + 2, "acc/merged/avg": merged + 1,
               "acc/pretrained/a": 10.0 + start, "acc/pretrained/b": 20.0, "acc/pretrained/avg": 15.0 + start / 2}
    if method != "regmean":
        metrics |= {"acc/ensembled/a": merged + 1, "acc/ensembled/b": merged + 1, "acc/ensembled/avg": merged + 1,
                    "gap/a": 1.0, "gap/b": 1.0, "gap/avg": 0.0}
    opts = {**BASE, "merge.name": method, **{k.replace("__", "."): v for k, v in options.items()}}
    return RunRecord(f"id{start:06d}", f"name{start}", experiment, "FINISHED", start, method, "tiny", "toy",
                     tuple(datasets), opts, metrics, {})


def test_latest_tells_experiments_apart_by_align_k_and_seed():
    runs = [record(1, 50), record(2, 51),  # a re-run: only the newer stays
            record(3, 52, seed="1"), record(4, 53, align__method="weight"), record(5, 54, data__num_co_models="2"),
            record(6, 55, experiment="other")]
    kept = keep_latest(runs)
    assert [r.start_time for r in kept] == [2, 3, 4, 5, 6]


def test_one_table_per_experiment_labelled_by_the_options_that_differ_within_it():
    runs = [record(1, 50), record(2, 60, merge__views="0"), record(3, 70, method="regmean"),
            record(4, 40, experiment="diverse", align__method="weight"), record(5, 45, experiment="diverse"),
            record(6, 30, datasets=("a", "c"))]
    tables = run_tables(runs)
    assert [(t.experiment, t.datasets) for t in tables] == [("diverse", ("a", "b")), ("study", ("a", "b")),
                                                            ("study", ("a", "c"))]
    labels = [[r.label for r in t.rows] for t in tables]
    assert labels[0] == ["Pre-trained", "portland (align.method=None)", "portland (align.method=weight)"]
    # regmean has one row: no option differs among its rows, so its label is the method alone
    assert labels[1] == ["Pre-trained", "portland (merge.views=0)", "portland (merge.views=2)", "regmean"]
    assert labels[2] == ["Pre-trained", "portland"]
    # the newest run of the table gives the reference row; a note says another run logged other values
    assert tables[1].rows[0].runs[0].start_time == 3 and tables[1].rows[0].cells["a"][0].mean == 13.0
    assert len(tables[1].notes) == 1 and "2 other run(s)" in tables[1].notes[0]


def test_seeds_of_one_experiment_make_one_row_with_mean_and_sample_sd():
    runs = [record(1, 50), record(2, 51, seed="1"), record(3, 55, seed="2"), record(4, 56, seed="2"),  # seed 2 re-run
            record(5, 70, seed="10"), record(6, 60, merge__views="0")]
    (table,) = seed_tables(runs)
    rows = {r.label: r for r in table.rows}
    assert list(rows) == ["Pre-trained", "portland (merge.views=0)", "portland (merge.views=2)"]
    default = rows["portland (merge.views=2)"]
    assert default.seeds == ("0", "1", "2", "10")  # one meaning: the seeds whose runs the row averages
    merged = [51.0, 52.0, 57.0, 71.0]  # acc/merged/avg of seeds 0, 1, 2 (newest run), 10
    mer = default.cells["avg"][0]
    assert mer.mean == statistics.fmean(merged) and mer.sd == statistics.stdev(merged)
    assert default.cells["a"][2].mean == 1.0 and default.cells["avg"][2].sd == 0.0
    assert rows["portland (merge.views=0)"].seeds == ("0",) and rows["portland (merge.views=0)"].cells["avg"][0].sd == 0.0
    reference = rows["Pre-trained"]  # per seed, the newest run holding it: starts 6 (seed 0), 2, 4, 5
    assert reference.seeds == ("0", "1", "2", "10")
    assert reference.cells["a"][0].mean == statistics.fmean([16.0, 12.0, 14.0, 15.0])


def test_a_metric_missing_for_one_seed_gives_no_mean():
    runs = [record(1, 50), record(2, 52, seed="1")]
    del runs[1].metrics["gap/a"]
    (table,) = seed_tables(runs)
    row = table.rows[-1]
    assert row.cells["a"][2].mean is None and row.cells["b"][2].mean == 1.0


def test_an_option_an_older_run_never_recorded_is_unknown_not_a_default():
    old = record(1, 50)
    del old.options["align.method"]  # recorded before align existed
    (table,) = run_tables([old, record(2, 51)])
    assert [r.label for r in table.rows[1:]] == ["portland (align.method=None)", "portland (align.method=–)"]
