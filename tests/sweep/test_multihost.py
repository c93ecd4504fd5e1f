"""A real 2-process ``jax.distributed`` sweep on localhost (CPU, one device per process):
the built-in model's cache read by both processes, results equal to a 1-process sweep, the
report written by process 0 only, and a killed process: the other stops with a clear
message (no hang), and the same command run again completes with equal results.

Every subprocess has a deadline, so a regression can fail this test but never hang CI.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 240      # seconds for any one sweep command

TOML = """methods = ["invert"]
layers = ["features.11", "features.15", "globalpool"]
batch_size = 8
seed = 0
models = ["small_vgg"]
[data]
source = "repsim_shapes"
split = "test"
n_images = 12
[invert]
L = 1
B = 2
[distributed]
peer_timeout = 3.0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env():
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    return env


def _command(toml, out, port=None, pid=None):
    cmd = [sys.executable, "-m", "repsim_jax.cli", "sweep", "--config", str(toml),
           "--out", str(out), "--no-progress"]
    if port is not None:
        cmd += ["--coordinator", f"localhost:{port}", "--num-processes", "2",
                "--process-id", str(pid)]
    return cmd


def _start(cmd, log: Path):
    f = open(log, "w")
    return subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True), f


def _finish(procs, timeout=DEADLINE):
    """Waits for every process (killing all of them at the deadline)."""
    end = time.time() + timeout
    codes = []
    try:
        for p, f in procs:
            codes.append(p.wait(timeout=max(1, end - time.time())))
    except subprocess.TimeoutExpired:
        for p, _ in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("a sweep process did not finish in time (hang)")
    finally:
        for p, f in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            f.close()
    return codes


def _two(toml, out, logs):
    port = _free_port()
    return [_start(_command(toml, out, port, i), logs[i]) for i in (0, 1)]


def _arrays(out: Path) -> dict:
    res = {}
    for f in sorted((out / "arrays").glob("*.npz")):
        with np.load(f) as z:
            res.update({f"{f.stem}:{k}": z[k] for k in z.files})
    rows = json.loads((out / "tables" / "invert_neurons.json").read_text())
    res["formulas"] = [r["formula"] for r in rows]
    return res


@pytest.mark.slow
def test_two_process_sweep_matches_one_process_and_survives_a_killed_peer(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(TOML)
    # the reference: one process, same device count per process
    ref = tmp_path / "ref"
    (code,) = _finish([_start(_command(toml, ref), tmp_path / "ref.log")])
    assert code == 0, (tmp_path / "ref.log").read_text()[-3000:]

    # two processes; process 1 is killed as soon as it starts computing
    out = tmp_path / "two"
    logs = [tmp_path / "p0.log", tmp_path / "p1.log"]
    procs = _two(toml, out, logs)
    end = time.time() + DEADLINE
    while time.time() < end and procs[1][0].poll() is None:
        if "process 1/2" in logs[1].read_text():
            break
        time.sleep(0.05)
    assert procs[1][0].poll() is None, logs[1].read_text()[-3000:]
    os.killpg(procs[1][0].pid, signal.SIGKILL)
    codes = _finish(procs)
    text0 = logs[0].read_text()
    assert codes[0] == 2, text0[-3000:]                    # a clean error, not a crash
    assert "repsim: error: process 1" in text0 and "stopped responding" in text0
    assert "unfinished: invert__small_vgg__features.15" in text0
    assert "run the same command again on every process to resume" in text0
    assert "Topology mismatch" not in text0 and "retraining" not in text0
    assert not (out / "report.html").exists()
    done_before = {p.name: p.read_text() for p in (out / "units").glob("*.done.json")}
    assert "invert__small_vgg__features.15.done.json" not in done_before

    # the same command again: resumes and completes
    logs = [tmp_path / "q0.log", tmp_path / "q1.log"]
    codes = _finish(_two(toml, out, logs))
    texts = [l.read_text() for l in logs]
    assert codes == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    assert "report written by this process" in texts[0]
    assert "process 0 writes the report" in texts[1] and "report written" not in texts[1]
    for name, text in done_before.items():                  # nothing recomputed
        assert (out / "units" / name).read_text() == text
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    ran = [r["unit"] for r in log if r["status"] == "ran"]
    assert len(ran) == len(set(ran)) == 4                   # each unit once, in all
    by = {r["unit"]: r["process"] for r in log if r["status"] == "ran"}
    assert by["invert__small_vgg__features.15"] == 1 and set(by.values()) == {0, 1}
    run_log = json.loads((out / "run_log.json").read_text())
    assert run_log["devices"]["process_index"] == 0
    assert run_log["devices"]["process_count"] == 2
    a, b = _arrays(ref), _arrays(out)
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k]


def test_peer_checks_name_failed_and_silent_processes():
    """The rules behind the messages above, on simulated processes (no subprocess)."""
    from repsim_jax.sweep.config import SweepError
    from repsim_jax.sweep.hosts import Hosts, MemoryKV
    kv = MemoryKV()
    me = Hosts(0, 3, kv, peer_timeout=0.3, poll_s=0.02)
    alive, silent = Hosts(1, 3, kv, beat_s=0.05), Hosts(2, 3, kv, beat_s=0.05)
    for h in (alive, silent):
        h.set_state("running")
        h.start_heartbeat()
    try:
        time.sleep(0.2)
        me.check_peers([1, 2])                              # both beat: fine
        silent.stop_heartbeat()                             # "killed"
        t0 = time.time()
        with pytest.raises(SweepError, match=r"process 2 \(.*pid \d+\) stopped responding: "
                                             r"no heartbeat for \d+ s.*unfinished: u7"):
            me.wait(lambda: (False, [1, 2], "u7"))
        assert 0.3 <= time.time() - t0 < 5                  # not before peer_timeout
        me.check_peers([1])                                 # the live one is still fine
        silent.set_state("finished")                        # a finished process may be silent
        me.check_peers([1, 2])
        alive.set_state("failed", error="SweepError: unit u3 failed: boom")
        with pytest.raises(SweepError, match=r"process 1 .*stopped with an error: SweepError: "
                                             r"unit u3 failed: boom"):
            me.check_peers([1, 2])
        # a wait that is satisfied returns at once, whatever the peers do
        me.wait(lambda: (True, [1, 2], ""))
    finally:
        alive.stop_heartbeat()
        silent.stop_heartbeat()
