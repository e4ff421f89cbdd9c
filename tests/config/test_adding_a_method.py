"""Adding a merge method is a module and a yaml (docs/architecture.md, "Adding a merge method"): a throwaway
method in a temporary config dir runs through the real pipeline, and its options are checked like any other."""
from __future__ import annotations

import sys
import textwrap

import pytest

from tests.conftest import CONF, FAST_RUN, compose, execute

MODULE = '''
"""Halfway: theta = theta_0 + alpha * (mean_t theta_t - theta_0), a throwaway method for the test."""
from neulig.merging.state_dict import StateDict, check_compatible, classify_keys, finish_merge


def merge(base: StateDict, experts: list[StateDict], alpha: float = 0.5) -> StateDict:
    check_compatible(base, experts)
    merged = {}
    for key in classify_keys(base).params:
        mean = sum(e[key].float() for e in experts) / len(experts)
        merged[key] = base[key].float() + alpha * (mean - base[key].float())
    return finish_merge(merged, base, experts)
'''
YAML = """
# Halfway between the backbone and the experts' average (a throwaway method).
defaults:
  - /schema/merge/static@_here_
  - _self_

name: halfway
kind: static
runner: neulig.methods.static.run
fn: halfway_merge.merge
hparams:
  alpha: 0.5
"""


@pytest.fixture
def method_dir(tmp_path, monkeypatch):
    (tmp_path / "halfway_merge.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "conf" / "merge").mkdir(parents=True)
    (tmp_path / "conf" / "merge" / "halfway.yaml").write_text(YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("halfway_merge", None)


def test_a_new_method_is_its_module_and_its_yaml(method_dir, tmp_path):
    assert not (CONF / "merge" / "halfway.yaml").exists()
    search = f"hydra.searchpath=[file://{method_dir / 'conf'}]"
    halfway = execute(compose([search, "merge=halfway", "merge.hparams.alpha=1.0", *FAST_RUN], tmp_path / "root"),
                      tmp_path / "run1")["metrics"]
    assert {"acc/merged/avg", "acc/ensembled/avg", "gap/avg"} <= set(halfway)
    average = execute(compose(["merge=average", *FAST_RUN], tmp_path / "root"), tmp_path / "run2")["metrics"]
    assert halfway["acc/merged/avg"] == average["acc/merged/avg"]  # alpha = 1 is the plain average


@pytest.mark.parametrize("override,message", [
    ("merge.hparams.alpha=abc", "merge.hparams.alpha=abc: a value of type float"),
    ("merge.hparams.beta=1", "merge.hparams.beta=1: not an option"),
    ("merge.fn=halfway_merge.nosuch", "merge.fn=halfway_merge.nosuch: the dotted path of a function"),
])
def test_its_options_are_checked_like_any_other(method_dir, tmp_path, override, message, capsys):
    from neulig.run import check_command_line

    search = f"hydra.searchpath=[file://{method_dir / 'conf'}]"
    with pytest.raises(SystemExit) as exit_info:
        check_command_line([search, f"paths.root_dir={tmp_path}", "merge=halfway", override])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"neulig: error: {message}")


def test_a_keyword_the_function_lacks_is_refused(method_dir, tmp_path):
    """``+merge.hparams.<new>`` appends a key that Hydra accepts; fn's signature refuses it."""
    from neulig.config import ConfigError, load

    search = f"hydra.searchpath=[file://{method_dir / 'conf'}]"
    with pytest.raises(ConfigError, match=r"merge.hparams.beta=1: a parameter of halfway_merge.merge: alpha"):
        load(compose([search, "merge=halfway", "+merge.hparams.beta=1"], tmp_path))
