"""The package logger (rank-zero aware through Lightning's env vars)."""
from __future__ import annotations

import logging
import os


def is_rank_zero() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


log = logging.getLogger("neulig")
if not log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[neulig] %(message)s"))
    log.addHandler(_handler)
    # a DDP child repeats rank 0's stages: only its warnings are news
    log.setLevel(logging.INFO if is_rank_zero() else logging.WARNING)
    log.propagate = False


LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")


def quiet_lightning() -> None:
    """Keep Lightning's INFO banners ("GPU available", tips, "fit stopped") off stderr.

    Importing ``lightning`` sets its loggers back to INFO and gives them console handlers, which undoes
    any earlier ``setLevel``; so this runs after the import, right before a Trainer is built.
    """
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)



def quiet_libraries() -> None:
    """No warning spam on a normal run: Lightning's banners and tips are not news to our users.

    Only these known messages are silenced (a new FutureWarning is news); ``python -m neulig.run`` undoes the
    filters when its job ends (``run.isolated``)."""
    import warnings

    quiet_lightning()  # again before every Trainer: a later first import of lightning resets the levels
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")  # trainer=cpu is a choice
