"""The processes of one multi-process sweep: start, liveness, failure and exit, with no
device collective and no barrier that a process with less work could deadlock on.

Every process computes its own share of the units on its local devices and writes each
finished unit to the shared output directory (:mod:`repsim_jax.sweep.store`); that is the
only data they exchange. What they need to agree on goes through a small key-value store:
``jax.distributed``'s coordination service (:class:`JaxKV`: plain RPCs to process 0, no
Gloo/NCCL, nothing compiled), or a dict for processes simulated by threads in the tests
(:class:`MemoryKV`). Keys live under one namespace per sweep call::

    state/<i>    {"status": "loading" | "running" | "finished" | "failed", "error", host, pid}
    beat/<i>     a counter, increased every ``beat_s`` seconds by a daemon thread
    start        written by process 0 once the output directory is ready (manifest written,
                 unfinished units of an earlier run removed): its config hash and model
                 fingerprints, which every other process compares with its own

A process that waits - for ``start``, for the units an aggregate unit reads, or (process
0) for every unit before the report - polls the store and :meth:`Hosts.check_peers`: a peer
that says ``failed``, or whose heartbeat has not moved for ``peer_timeout`` seconds
(measured on the waiter's clock, so host clocks need not agree), ends the wait with a
:class:`~repsim_jax.sweep.config.SweepError` that names the process, what it left
unfinished, and that running the same command again resumes. Waiting has no other time
limit, so processes with very different amounts of work never time out on each other.

Exit: with ``jax_enable_recoverability`` (set by the sweep when it initialises
``jax.distributed`` itself) a process that dies does not take the others down, and the
processes leave in order - the others shut their client down first, process 0 (which hosts
the coordination service) waits for them (:meth:`Hosts.wait_for_exits`) and goes last, so
nobody's shutdown RPC meets a service that is already gone. If process 0 itself is killed,
JAX's coordination service ends the other processes at once with its own message ("another
task died"); no process hangs either way.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import threading
import time
from typing import Any, Callable, Iterable

from repsim_jax.sweep.config import SweepError

__all__ = ["Hosts", "JaxKV", "MemoryKV", "single_process"]


class MemoryKV:
    """A thread-safe in-process key-value store (processes simulated by threads)."""

    def __init__(self):
        self._d: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._d[key] = value

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._d.get(key)


class JaxKV:
    """The key-value store of ``jax.distributed``'s coordination service."""

    def __init__(self, client):
        self.client = client

    def set(self, key: str, value: str) -> None:
        self.client.key_value_set(key, value, allow_overwrite=True)

    def get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception:  # noqa: BLE001 - NOT_FOUND comes as a runtime error
            return None


@dataclasses.dataclass
class Hosts:
    """This process (``index``) among ``count`` processes of a sweep."""
    index: int
    count: int
    kv: Any = None
    namespace: str = "repsim"
    peer_timeout: float = 60.0
    beat_s: float = 1.0
    poll_s: float = 0.2
    client: Any = None          # the jax.distributed client, when the sweep owns it
    _beat: int = 0
    _seen: dict = dataclasses.field(default_factory=dict)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def multi(self) -> bool:
        return self.count > 1

    # -- the store ----------------------------------------------------------------------
    def publish(self, name: str, value: Any) -> None:
        if self.multi:
            self.kv.set(f"{self.namespace}/{name}", json.dumps(value))

    def read(self, name: str) -> Any:
        if not self.multi:
            return None
        raw = self.kv.get(f"{self.namespace}/{name}")
        return None if raw is None else json.loads(raw)

    def set_state(self, status: str, **extra) -> None:
        self.publish(f"state/{self.index}", {"status": status, "host": platform.node(),
                                             "pid": os.getpid(), **extra})

    # -- heartbeat ----------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        if not self.multi or self._thread is not None:
            return

        def beat():
            while not self._stop.is_set():
                self._beat += 1
                try:
                    self.kv.set(f"{self.namespace}/beat/{self.index}", str(self._beat))
                except Exception:  # noqa: BLE001 - the service is gone: nothing to tell
                    return
                self._stop.wait(self.beat_s)
        self._stop.clear()
        self._thread = threading.Thread(target=beat, name=f"repsim-heartbeat-{self.index}",
                                        daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- peers --------------------------------------------------------------------------
    def _describe(self, p: int) -> str:
        st = self.read(f"state/{p}") or {}
        where = ", ".join(x for x in (st.get("host"), f"pid {st['pid']}" if st.get("pid")
                                      else None) if x)
        return f"process {p}" + (f" ({where})" if where else "")

    def check_peers(self, processes: Iterable[int],
                    unfinished: str | Callable[[int], str] = "") -> None:
        """Raises SweepError when one of ``processes`` failed or stopped beating;
        ``unfinished`` (text, or process -> text) says what it leaves undone."""
        now = time.monotonic()
        what = unfinished if callable(unfinished) else (lambda p: unfinished)
        for p in processes:
            if p == self.index or not self.multi:
                continue
            st = self.read(f"state/{p}") or {}
            if st.get("status") == "failed":
                raise SweepError(
                    f"{self._describe(p)} stopped with an error: {st.get('error', '?')}"
                    f"{_unfinished(what(p))}. Finished units "
                    f"are kept: fix the cause and run the same command again on every "
                    f"process to resume")
            beat = self.kv.get(f"{self.namespace}/beat/{p}")
            last = self._seen.get(p)
            if last is None or last[0] != beat:
                self._seen[p] = (beat, now)
            elif now - last[1] > self.peer_timeout and st.get("status") != "finished":
                raise SweepError(
                    f"{self._describe(p)} stopped responding: no heartbeat for "
                    f"{now - last[1]:.0f} s (peer_timeout {self.peer_timeout:g} s)"
                    f"{_unfinished(what(p))}. The units "
                    f"finished so far are kept: run the same command again on every "
                    f"process to resume")

    def wait(self, done: Callable[[], tuple[bool, Iterable[int], str]]) -> None:
        """Polls ``done() -> (finished?, processes still owing work, what is missing)``
        until finished, checking those processes between polls."""
        while True:
            ok, owing, missing = done()
            if ok:
                return
            self.check_peers(owing, missing)
            time.sleep(self.poll_s)

    def wait_for_exits(self, grace_s: float = 30.0) -> None:
        """Process 0: waits until every other process has said finished/failed (or
        stopped beating), then until their clients have disconnected (``grace_s`` at
        most), so that the coordination service it hosts is shut down last."""
        if not self.multi or self.index != 0:
            return
        others = [p for p in range(self.count) if p != self.index]
        deadline = time.monotonic() + grace_s
        pending, dead = set(others), set()
        while pending and time.monotonic() < deadline:
            for p in list(pending):
                st = self.read(f"state/{p}") or {}
                if st.get("status") in ("finished", "failed"):
                    pending.discard(p)
                    continue
                try:
                    self.check_peers([p])
                except SweepError:
                    pending.discard(p)     # dead: nobody to wait for
                    dead.add(p)
            time.sleep(self.poll_s)
        if self.client is None or dead or pending:
            return     # (a dead process would hold get_live_nodes until JAX gives it up)
        # the others shut their clients down right after saying finished/failed;
        # get_live_nodes returns once every live process has called it or disconnected
        t = threading.Thread(target=lambda: self.client.get_live_nodes(list(range(
            self.count))), daemon=True)
        t.start()
        t.join(max(1.0, deadline - time.monotonic()))


def _unfinished(text: str) -> str:
    return f"; unfinished: {text}" if text else ""


def single_process() -> Hosts:
    return Hosts(0, 1)
