"""SIGTERM and Ctrl-C, in one place: what each kind of work does when stopped. Exit codes are the CLI's
(``adapt.cli``: 143 after SIGTERM, 130 after Ctrl-C); nothing here exits.

- **Training** (``adapt fit``) uses Lightning's own mechanism. The Trainer's signal connector turns SIGTERM into
  ``trainer.received_sigterm``; its loops finish the running step and raise ``SIGTERMException`` at the next step
  boundary, where ``adapt.callbacks.ResumableCheckpoints`` writes a resumable checkpoint. Lightning treats Ctrl-C
  differently: a ``KeyboardInterrupt`` raised wherever the program is (possibly half way through an optimizer step)
  is caught by the Trainer, which calls the callbacks' ``on_exception``, marks the run interrupted
  (``trainer.interrupted``) and exits with code 1: no consistent state to resume from. So during a fit
  ``CtrlCAsSigterm`` makes the first Ctrl-C a SIGTERM to this process (the path above); a second Ctrl-C is
  Lightning's own KeyboardInterrupt (abort now, no checkpoint).
- **Work outside Lightning** (``adapt predict``) runs inside ``sigterm_raises``: SIGTERM raises ``Interrupted``
  there as Ctrl-C raises KeyboardInterrupt, so the work cleans up in ``except`` / ``finally`` and re-raises
  ``Interrupted`` saying what it kept; the CLI prints that line and exits.
- **A fit in a child process** (``adapt run``): ``forward_to_child`` passes SIGTERM on to the child and leaves
  Ctrl-C to it (a terminal sends Ctrl-C to the whole process group), so a fit is never killed mid-write.

Python runs signal handlers in the main thread only: from any other thread these helpers change nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Work stopped by a signal. ``str()``: one line saying what was kept; ``signum``: SIGTERM or SIGINT (Ctrl-C);
    ``exit_code``: 128 + ``signum`` (143 or 130). A KeyboardInterrupt, so code that cleans up after Ctrl-C cleans
    up after SIGTERM too."""

    def __init__(self, message: str = "interrupted", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @classmethod
    def after(cls, interrupt: KeyboardInterrupt, message: str) -> Interrupted:
        """``message`` for the signal behind ``interrupt`` (a plain KeyboardInterrupt is Ctrl-C)."""
        return cls(message, getattr(interrupt, "signum", signal.SIGINT))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block SIGTERM raises ``Interrupted`` (``signum`` SIGTERM); the previous handler is back after."""
    if not _main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise Interrupted("SIGTERM", signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def forward_to_child(process: subprocess.Popen) -> Iterator[None]:
    """Inside the block a SIGTERM to this process is passed on to ``process``, and Ctrl-C does not stop this
    process (the terminal's Ctrl-C reaches ``process`` itself): it keeps reading ``process`` until that exits."""
    if not _main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum)),
                signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: None)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class CtrlCAsSigterm:
    """During a fit: the first Ctrl-C sends SIGTERM to this process (Lightning then finishes the step and stops
    resumably, see the module docstring); the second raises KeyboardInterrupt (abort at once, as Lightning does).
    ``install`` at the start of the fit, ``restore`` when it ends or fails."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous = None

    def install(self) -> None:
        if _main_thread() and self._previous is None:
            self.pressed = False
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
        # no SIGTERM handler yet (Lightning installs its own just after on_fit_start): a SIGTERM would kill outright
        if self.pressed or not callable(signal.getsignal(signal.SIGTERM)):
            raise KeyboardInterrupt
        self.pressed = True
        print("\nCtrl-C: finishing this step, then writing a resumable checkpoint (Ctrl-C again aborts without one)",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
