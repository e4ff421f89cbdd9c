"""Reading the store: each run becomes a RunRecord made from its tags (params for older runs), never its name."""
from __future__ import annotations

import dataclasses

import pytest

from neulig.report.store import load_runs, open_client, pick_experiments
from tests.report.conftest import DATASETS, DIVERSE, KINDS, OLD, SINGLE, by


@pytest.fixture(scope="module")
def records(store):
    client = open_client(store["uri"])
    return {r.run_id: r for r in load_runs(client, pick_experiments(client, None), None, all_statuses=False)}


def test_every_finished_run_is_one_record_with_its_logged_numbers(store, records):
    assert set(records) == {r.run_id for r in store["runs"]}  # the failed run has no acc/merged/avg
    for logged in store["runs"]:
        record = records[logged.run_id]
        assert (record.experiment, record.method, record.model, record.data, record.seed) == (
            logged.experiment, logged.merge, "tiny", "embedded", str(logged.seed))
        assert record.datasets == tuple(DATASETS)
        assert dict(record.metrics) == logged.metrics  # exact doubles
        assert dict(record.kinds) == (KINDS if logged.kinds else {})
        assert record.status == "FINISHED"
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.method = "x"


def test_options_are_read_from_tags(store, records):
    k2 = records[by(store["runs"], "data.num_co_models=2")[0].run_id]
    assert k2.options["data.num_co_models"] == "2" and k2.options["merge.views"] == "2"
    weight = records[by(store["runs"], "align=weight", "seed=1")[0].run_id]
    assert (weight.options["align.method"], weight.options["model.origins"]) == ("weight", "['0', '1']")
    assert weight.experiment == DIVERSE
    assert not any(k.startswith(("paths.", "logger.")) or k == "data.root" for k in weight.options)


def test_a_run_without_option_tags_is_read_from_params_not_from_its_name(store, records):
    old = next(r for r in store["runs"] if r.overrides == OLD)
    record = records[old.run_id]
    assert record.run_name == "ties-shapes-rn50-s7"  # what the name claims is ignored
    assert (record.method, record.model, record.seed, record.experiment) == ("portland", "tiny", "2", SINGLE)
    new = records[by(store["runs"], "merge=portland", "seed=1")[0].run_id]
    assert {k: v for k, v in record.options.items() if k != "seed"} == \
        {k: v for k, v in new.options.items() if k != "seed"}  # the same text as the tags of a new run


def test_all_statuses_reads_the_failed_run_but_it_has_no_accuracy(store):
    client = open_client(store["uri"])
    experiments = pick_experiments(client, [SINGLE])
    assert list(experiments.values()) == [SINGLE]
    everything = client.search_runs(list(experiments), filter_string="attributes.status = 'FAILED'")
    assert len(everything) == 1 and everything[0].data.tags["config.merge.name"] == "ties"
    shown = load_runs(client, experiments, None, all_statuses=True)
    assert "ties" not in {r.method for r in shown}
