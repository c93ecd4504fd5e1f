"""One progress convention for the whole library: ``progress: bool | None = None``.

Every long step (training a built-in model, a sweep over units, the chunks of an INVERT
search, RSM tiles, ClaDec steps, mask optimisation) takes ``progress=`` and reports through
:func:`bar`:

``None`` (default, "auto") or ``True``
    a tqdm bar with ETA when stderr is a terminal or inside a Jupyter/Colab kernel; in a
    log (stderr not a terminal) plain lines instead - one per :meth:`Progress.log` call
    (an epoch, a finished unit) and, for inner loops (RSM tiles, ClaDec steps, masks), one
    every ``interval`` seconds (30) plus a last one - so a short inner loop adds nothing to
    a log.
``False``
    nothing at all.

Global switch: :func:`set_enabled(False) <set_enabled>` / ``with disabled():`` (what
``repsim --no-progress`` does) or the environment variable ``REPSIM_PROGRESS=0`` (also
``TQDM_DISABLE=1``) silences everything, whatever ``progress=`` says;
``REPSIM_PROGRESS=lines`` / ``=bar`` forces a mode.
Output goes to ``sys.stderr`` (read at call time, so pytest's capture sees it).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Iterable, Iterator

__all__ = ["Progress", "bar", "track", "mode", "message", "set_enabled", "enabled",
           "disabled"]

_ENABLED: bool | None = None   # None: follow the environment


def set_enabled(on: bool | None) -> None:
    """Globally turns auto progress (``progress=None``) on/off; ``None`` resets to the env."""
    global _ENABLED
    _ENABLED = on


def enabled() -> bool:
    """Whether ``progress=None`` shows anything right now."""
    if _ENABLED is not None:
        return _ENABLED
    env = os.environ.get("REPSIM_PROGRESS", "").strip().lower()
    if env in ("0", "off", "false", "no", "none"):
        return False
    return os.environ.get("TQDM_DISABLE", "") not in ("1", "true", "True")


@contextlib.contextmanager
def disabled():
    """``with disabled(): ...`` silences auto progress inside the block."""
    global _ENABLED
    old, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = old


def _isatty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def mode(progress: bool | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for a ``progress=`` value (see the module doc)."""
    if progress is False or not enabled():
        return "off"
    env = os.environ.get("REPSIM_PROGRESS", "").strip().lower()
    if env in ("bar", "lines"):
        return env
    return "bar" if _isatty() or _in_kernel() else "lines"


def _in_kernel() -> bool:
    """Inside a Jupyter / Colab kernel (tqdm.auto draws a widget there)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
        return get_ipython() is not None and hasattr(get_ipython(), "kernel")
    except Exception:  # noqa: BLE001
        return False


def message(text: str, progress: bool | None = None) -> None:
    """One line on stderr unless progress is off (e.g. "training small_vgg on first use")."""
    if mode(progress) != "off":
        print(text, file=sys.stderr, flush=True)


def _fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class Progress:
    """A tqdm-like object: ``update(n)``, ``set_postfix(**kw)``, ``log(text)``, ``close()``.

    Built by :func:`bar`; in ``"bar"`` mode it drives a ``tqdm`` bar, in ``"lines"`` mode it
    prints ``desc: 3/10 unit (30%), 12 s elapsed, ETA 28 s[, postfix]`` lines, in ``"off"``
    mode it does nothing. ``log(text)`` prints one line in both visible modes (above the
    bar on a terminal) - used for one line per epoch / per finished unit.
    """

    def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it",
                 progress: bool | None = None, interval: float = 30.0, leave: bool = False,
                 auto_lines: bool = True):
        self.mode = mode(progress)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.interval = float(interval)
        self.auto_lines = auto_lines
        self.postfix: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._last = self._t0
        self._printed = False    # line mode: an interim line was printed
        self._closed = False
        self._tqdm = None
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self._tqdm = tqdm(total=total, desc=desc, unit=unit, leave=leave,
                              file=sys.stderr, dynamic_ncols=True)

    # -- tqdm-like --------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif self.mode == "lines" and self.auto_lines:
            now = time.perf_counter()
            if now - self._last >= self.interval and not (self.total and self.n >= self.total):
                self._last = now
                self._printed = True
                self._line(now)

    def set_postfix(self, **kw) -> None:
        self.postfix.update(kw)
        if self._tqdm is not None:
            self._tqdm.set_postfix({k: _short(v) for k, v in self.postfix.items()},
                                   refresh=True)

    def reset(self, total: int | None = None) -> None:
        """Starts over (tqdm's ``reset``), optionally with a new total."""
        self.n, self.total = 0, total if total is not None else self.total
        if self._tqdm is not None:
            self._tqdm.reset(total=total)

    def set_postfix_str(self, text: str) -> None:
        self.set_postfix(at=text)

    def log(self, text: str) -> None:
        """One line (an epoch, a finished unit): above the bar, or plain in a log."""
        if self.mode == "off":
            return
        if self._tqdm is not None:
            self._tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)
            self._last = time.perf_counter()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.mode == "lines" and self.auto_lines and self._printed:
            self._line(time.perf_counter(), final=True)   # a long loop ends with a last line; a short one is quiet

    # -- helpers ----------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the mean rate so far (None without a total or progress)."""
        if not self.total or not self.n:
            return None
        elapsed = (now if now is not None else time.perf_counter()) - self._t0
        return elapsed / self.n * max(self.total - self.n, 0)

    def _line(self, now: float, final: bool = False) -> None:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {done} {self.unit}{pct}, {_fmt_seconds(now - self._t0)} elapsed"
        eta = self.eta(now)
        if not final and eta is not None:
            text += f", ETA {_fmt_seconds(eta)}"
        if self.postfix:
            text += ", " + ", ".join(f"{k} {_short(v)}" for k, v in self.postfix.items())
        print(text, file=sys.stderr, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def bar(total: int | None = None, *, desc: str = "", unit: str = "it",
        progress: bool | None = None, interval: float = 30.0, leave: bool = False,
        auto_lines: bool = True) -> Progress:
    """A :class:`Progress` for ``total`` steps under the ``progress=`` convention.

    ``auto_lines=False``: in line mode print only what :meth:`Progress.log` is given (for
    loops that already log one line per step, e.g. per epoch or per unit).
    """
    return Progress(total, desc=desc, unit=unit, progress=progress, interval=interval,
                    leave=leave, auto_lines=auto_lines)


def track(iterable: Iterable, *, total: int | None = None, desc: str = "", unit: str = "it",
          progress: bool | None = None, interval: float = 30.0) -> Iterator:
    """Iterates ``iterable`` with a :func:`bar` (tqdm-style wrapper)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with bar(total, desc=desc, unit=unit, progress=progress, interval=interval) as p:
        for item in iterable:
            yield item
            p.update(1)
