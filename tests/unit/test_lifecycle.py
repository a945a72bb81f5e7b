"""The signals that stop a long-running part."""

from __future__ import annotations

import os
import signal
import threading

from market_anomaly.lifecycle import on_stop_signals


def test_a_second_stop_signal_inside_the_first_handler_does_nothing():
    lock, stops, blocked = threading.Lock(), [], []

    def stop():  # holds a lock, as Event.set does, when the next signal comes
        if not lock.acquire(timeout=2):
            blocked.append(True)
            return
        try:
            stops.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs at the next bytecode, inside this one
            sum(range(1000))
        finally:
            lock.release()

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        on_stop_signals(stop)
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))
        os.kill(os.getpid(), signal.SIGINT)  # later ones too
        sum(range(1000))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert stops == [True] and blocked == []
