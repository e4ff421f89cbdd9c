"""The static runner's validation grid (merge.grid): the selected value is the best on val, the run
reports the merge at that value, and each value of the grid is merged once."""
from __future__ import annotations

from neulig.methods import static
from tests.methods.toys import context, method, tiny_combination

VALUES = [0.0, 0.3, 1.0]
GRID = f"merge.grid={{scaling:{VALUES}}}"


def test_grid_selects_on_val_and_reports_that_merge():
    combination = tiny_combination()
    grid = static.run(combination, method("task_arithmetic", GRID), context())
    scores, chosen = grid.details["grid"], grid.details["selected"]["scaling"]
    assert list(scores) == [str(v) for v in VALUES]
    assert scores[str(chosen)] == max(scores.values())
    alone = static.run(combination, method("task_arithmetic", f"merge.hparams.scaling={chosen}"), context())
    assert grid.accuracy == alone.accuracy
    val = grid.accuracy["val_merged"]
    assert sum(val.values()) / len(val) == scores[str(chosen)]


def test_each_grid_value_is_merged_once(monkeypatch):
    config = method("task_arithmetic", GRID)
    merged_at, resolve = [], static.resolve

    def counting(path):
        fn = resolve(path)
        if path != config.fn:
            return fn
        return lambda *args, **kwargs: merged_at.append(kwargs["scaling"]) or fn(*args, **kwargs)

    monkeypatch.setattr(static, "resolve", counting)
    static.run(tiny_combination(), config, context())
    assert merged_at == VALUES  # the winner is not merged a second time
