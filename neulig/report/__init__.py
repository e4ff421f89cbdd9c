"""``python -m neulig.report``: compare recorded runs as the paper's Table 2 (and its Figure 3 scatter).

Reads the runs that ``python -m neulig.run`` recorded in MLflow and prints one table per experiment: per
run (or, ``--over-seeds``, per experiment over its seeds), for every dataset the merged accuracy, the
ensembled accuracy and the gap between them (``Mer. / Ens. / Gap``), then the same three for the
average (``Avg``; the Avg gap is ``gap/avg`` = |Avg Ens. - Avg Mer.|, as in the paper, not the mean
of the per-dataset gaps). Every number is a run's logged metric, the value in its ``results.json``.

- :mod:`~neulig.report.tags`: the tags a run is recorded with (written by ``neulig.run``), read back here;
- :mod:`~neulig.report.store`: the MLflow store read into typed :class:`~neulig.report.store.RunRecord`\\ s;
- :mod:`~neulig.report.tables`: runs grouped into tables and labelled rows, means and spreads over seeds;
- :mod:`~neulig.report.render`: markdown, csv and the scatter's points;
- :mod:`~neulig.report.cli`: the options and ``main``.

Nothing here imports mlflow or matplotlib at import time, so ``--help`` is instant.
"""
from neulig.report.cli import main
from neulig.report.tags import KINDS_TAG

__all__ = ["KINDS_TAG", "main"]
