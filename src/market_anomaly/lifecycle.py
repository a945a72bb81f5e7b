"""The life of a long-running part (the Spark stream, the decider): ``start()``, then ``close()``."""

from __future__ import annotations


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
