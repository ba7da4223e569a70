"""Stop a training loop cleanly on SIGINT / SIGTERM: finish the step, checkpoint, exit.

>>> with GracefulStop() as stop:
...     for step in range(3):
...         if stop.requested:
...             break
>>> stop.requested is None
True

The first signal only sets `requested` (the loop checks it between steps, so no step is cut in
half and no file is left half-written); a second one raises KeyboardInterrupt at once, for a
user who will not wait. Handlers are installed only in the main thread (Python delivers
signals there) and the previous ones are restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    def __init__(self) -> None:
        self.requested: str | None = None  # "SIGINT" / "SIGTERM" once asked to stop
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.signum, self.requested = signum, signal.Signals(signum).name

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
