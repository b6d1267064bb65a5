"""SIGTERM (a kill, a scheduler's stop) handled like Ctrl-C, so long jobs save their state."""

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block, SIGTERM raises Terminated (a KeyboardInterrupt). Only the main thread
    can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
