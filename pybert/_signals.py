"""Stopping long jobs cleanly on Ctrl-C or SIGTERM (a kill, a scheduler's stop).

sigterm_as_interrupt: SIGTERM raises KeyboardInterrupt like Ctrl-C, for jobs whose state is
consistent at any point (the batch job commits after each durable chunk).
stop_requested: both only set a flag, for jobs that must stop between two steps (training).
"""

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


class StopRequest:
    """Set by stop_requested(): a signal asked the job to stop at its next safe point."""

    def __init__(self):
        self.requested = False


@contextlib.contextmanager
def stop_requested():
    """Inside the block, SIGINT and SIGTERM do not interrupt: they set ``.requested`` on the
    yielded StopRequest, and the job stops where its state is consistent (a training step's
    end). A second SIGINT interrupts at once. Outside the main thread this only yields."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if signum == signal.SIGINT and stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
