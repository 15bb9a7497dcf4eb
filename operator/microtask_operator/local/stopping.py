"""SIGINT, SIGTERM and SIGHUP during `microtask run`: the first stops gently, a second at once.

The first signal only sets a flag: the executor sees it within half a second, launches nothing
more, asks every runner to stop (the runners write their final reports), keeps what they report as
done and saves the state for `--resume`. A second signal kills every runner's process tree on the
spot. The command then exits 128 + the first signal's number, as a shell reports it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_code(signum: int) -> int:
    """130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Catches the stop signals while installed (a context manager, main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.forced = False
        self._on_first: list[Callable[[int], None]] = []
        self._on_force: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def on_first(self, callback: Callable[[int], None]) -> None:
        """Call `callback(signum)` (in the signal handler) when the first stop signal arrives."""
        self._on_first.append(callback)

    def on_force(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (in the signal handler) when a second stop signal arrives."""
        self._on_force.append(callback)

    def forget(self, callback: Callable[..., None]) -> None:
        for callbacks in (self._on_first, self._on_force):
            while callback in callbacks:
                callbacks.remove(callback)

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.received is None:
            self.received = signum
            for callback in list(self._on_first):
                callback(signum)
            return
        self.forced = True
        for force in list(self._on_force):
            force()
