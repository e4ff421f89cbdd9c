"""interruptible(): SIGINT and SIGTERM raise Interrupted inside the block; the handlers are put back after."""
import os
import signal

import pytest

from neulig.utils.signals import Interrupted, interruptible, received


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raises_interrupted_with_its_exit_code_and_handlers_are_restored(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as caught:
        with interruptible():
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs at the next bytecode of the main thread
                pass
    assert caught.value.signum == signum and caught.value.exit_code == 128 + signum
    assert not isinstance(caught.value, (Exception, KeyboardInterrupt))  # Lightning does not swallow it
    assert {s: signal.getsignal(s) for s in before} == before
    assert received() is None  # the block's record of it ends with the block


def test_received_tells_which_signal_arrived_inside_the_block():
    with interruptible():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        except Interrupted:
            assert received() == signal.SIGTERM
