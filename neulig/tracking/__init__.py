"""Talking to an MLflow tracking store: the HTTP policy (``http``), the processes behind open runs
(``liveness``), a run's record kept locally when the store is out of reach (``record``), and sending that
record later (``upload``, the ``python -m neulig.report --upload <run dir>`` command)."""
