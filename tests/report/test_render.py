"""Rendering: the numbers of the table model, only formatted; one meaning per column."""
from __future__ import annotations

import csv
import io

from neulig.report.render import csv_text, markdown
from neulig.report.tables import run_tables, seed_tables
from tests.report.test_tables import record


def test_markdown_rounds_and_shows_the_spread_only_over_seeds_and_only_for_avg():
    runs = [record(1, 50.004), record(2, 52.0, seed="1")]
    plain = markdown(run_tables(runs), 2)
    assert "| portland (seed=0) | 50.00 / 51.00 / 1.00 | 52.00 / 51.00 / 1.00 | 51.00 / 51.00 / 0.00 |" in plain
    assert "±" not in plain and "seeds" not in plain and "| run |" not in plain
    over = markdown(seed_tables(runs), 3, over_seeds=True)
    assert "| portland | 51.002 / 52.002 / 1.000 | 53.002 / 52.002 / 1.000 | " \
           "52.002 ± 1.411 / 52.002 ± 1.411 / 0.000 ± 0.000 | 0,1 |" in over
    assert "| Pre-trained | 11.500 | 20.000 | 15.750 ± 0.354 | 0,1 |" in over  # seeds listed, never counted


def test_rerun_rows_get_a_run_column_and_csv_keeps_full_precision():
    runs = [record(1, 50.1), record(2, 50.123456789012345)]  # a re-run: same label
    text = markdown(run_tables(runs), 2)
    assert "| run |" in text and "id000002" in text and "id000001" in text
    rows = list(csv.DictReader(io.StringIO(csv_text(run_tables(runs), None))))
    assert [r["row"] for r in rows] == ["reference", "method", "method"]
    assert rows[1]["a Mer."] == repr(50.123456789012345) and rows[1]["seed"] == "0"
    assert rows[0]["a Mer."] == "12.0" and rows[0]["a Ens."] == rows[0]["a Gap"] == ""
