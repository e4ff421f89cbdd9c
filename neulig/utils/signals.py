"""SIGINT and SIGTERM during a run: one exception, :class:`Interrupted`, raised in the main thread.

``python -m neulig.run`` enters :func:`interruptible` around each job (and leaves the previous handlers in
place afterwards). Inside it, Ctrl-C (SIGINT) and SIGTERM (what Slurm sends on preemption, and what
``kill`` sends by default) both raise ``Interrupted(signum)`` at the next Python bytecode of the main thread.

Why not ``KeyboardInterrupt``: Lightning catches ``KeyboardInterrupt`` inside ``Trainer.fit`` and turns it
into ``sys.exit(1)``, ignoring SIGINT for the rest of the process. ``Interrupted`` derives from
``BaseException`` only, so Lightning runs its ``on_exception`` callback hooks with it, tears down, and
re-raises it; ``except Exception`` blocks never swallow it. Code that must act before the stack unwinds
hooks in either way:

- a Lightning callback's ``on_exception(trainer, module, exception)`` with
  ``isinstance(exception, Interrupted)`` (e.g. save a checkpoint on preemption);
- ``try: ... except Interrupted: ...; raise`` around the work.

:func:`received` tells, after the fact, which signal arrived (None when none did), for code that only sees
a translated exception. The CLI ends with exit status ``128 + signum`` (130 for SIGINT, 143 for SIGTERM),
as a shell reports a process killed by that signal.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was interrupted by ``signum`` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []


def received() -> int | None:
    """The first signal that arrived inside the current :func:`interruptible` block, or None."""
    return _received[0] if _received else None


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` in this process's main thread;
    the previous handlers (and an empty :func:`received`) are restored on the way out.

    A process forked inside the block (a DataLoader worker) keeps the default behaviour: SIGINT raises
    ``KeyboardInterrupt``, SIGTERM ends it. Outside the main thread this is a no-op (signals are the main
    thread's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame) -> None:
        if os.getpid() != owner:  # a forked child: behave as if no handler were installed
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        _received.clear()
