"""Presets (``conf/preset/``): a setting such as ``+experiment=diverse_origin`` selects method options for
the methods that have some (``conf/preset_merge/<preset>_<merge>.yaml``) and leaves the others as they are;
the command line still wins."""
import pytest

from neulig.config import load
from tests.config.test_schema import preset_and_method
from tests.conftest import CONF, compose


def merge_of(tmp_path, *overrides: str):
    return load(compose(list(overrides), tmp_path)).merge


def test_diverse_origin_runs_portland_with_the_variance_regulariser(tmp_path):
    portland = merge_of(tmp_path, "+experiment=diverse_origin", "merge=portland")
    assert (portland.regularizer, portland.scaling) == ("variance", 1.0)
    single = merge_of(tmp_path, "merge=portland")
    assert (single.regularizer, single.scaling) == ("reference", 100.0)  # the paper's code stays the default


@pytest.mark.parametrize("method", ["average", "ties", "adamerging"])
def test_a_method_without_a_preset_is_unchanged(tmp_path, method):
    assert merge_of(tmp_path, "+experiment=diverse_origin", f"merge={method}") == merge_of(tmp_path, f"merge={method}")


def test_the_command_line_wins_over_the_preset(tmp_path):
    portland = merge_of(tmp_path, "+experiment=diverse_origin", "merge=portland", "merge.scaling=10",
                        "merge.regularizer=fisher_variance")
    assert (portland.regularizer, portland.scaling) == ("fisher_variance", 10.0)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "preset_merge").glob("*.yaml")))
def test_every_preset_file_names_a_preset_and_a_method_and_is_selected_by_them(tmp_path, option):
    preset, method = preset_and_method(option)  # a misspelt file name would never be selected
    chosen = load(compose([f"preset={preset}", f"merge={method}"], tmp_path)).merge
    assert chosen != load(compose([f"merge={method}"], tmp_path)).merge
