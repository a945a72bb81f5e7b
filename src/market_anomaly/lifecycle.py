"""The life of a long-running part (the Spark stream, the decider): ``start()``, then ``close()``, and the
signals that stop it."""

from __future__ import annotations

import signal


class Started:
    """A part with ``start()`` (returns the part) and ``close()`` (releases whatever was built, also half of
    it); ``with Part(...) as part:`` starts it and always closes it, even when starting fails half-way."""

    def start(self):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info) -> None:
        self.close()


def on_stop_signals(stop) -> None:
    """SIGINT and SIGTERM call ``stop()`` once; later ones do nothing.

    A handler runs in the main thread between two of its bytecodes, so a second signal arriving while the
    first handler is inside ``Event.set`` would wait for ever on the lock that handler holds (a member of a
    group stopped by ``kill 0``, which sent it several, did).
    """
    stopped = []

    def handler(signum, frame) -> None:
        if not stopped:
            stopped.append(signum)
            stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)
