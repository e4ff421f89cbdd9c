"""Figures written by every run: the merged-vs-ensembled scatter and the accuracy-versus-steps curve."""
from PIL import Image

from neulig.plots import curve_png, run_scatter


def test_curve_is_drawn_from_val_and_test_points_only(tmp_path):
    history = [{"epoch": 0, "val/merged_avg": 50.0, "test/merged_avg": 48.0},
               {"epoch": 1, "train/loss": 1.0},
               {"epoch": 100, "val/merged_avg": 60.0, "test/merged_avg": 59.0}]
    path = curve_png({"a+b": history}, tmp_path / "curve.png", title="t")
    assert path == tmp_path / "curve.png" and Image.open(path).size[0] > 100
    assert curve_png({"a+b": [{"epoch": 1, "train/loss": 1.0}]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_scatter_of_one_run(tmp_path):
    path = run_scatter(tmp_path, "average", {"acc/merged/avg": 60.0, "acc/ensembled/avg": 66.0})
    assert path.name == "scatter.png" and Image.open(path).format == "PNG"
