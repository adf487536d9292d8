"""The engine in its own process: faults (a killed engine, a killed or interrupted caller) end
cleanly and quickly, and data-parallel replicas survive one of them dying."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from sglc_runtime.engine import Engine
from sglc_runtime.errors import EngineClosedError, EngineDiedError

pytestmark = pytest.mark.model  # every test here builds or uses an engine
LONG = {"max_new_tokens": 600, "ignore_eos": True, "temperature": 0.8}


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


def _gone(pid: int, within: float) -> bool:
    end = time.time() + within
    while time.time() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie child of ours counts as gone
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_engine_runs_in_its_own_process(engine):
    import torch

    assert engine.pid != os.getpid()
    before = _threads(engine.pid)
    torch.zeros(4_000_000).add_(1)  # a parallel op here starts this process's own pool
    assert _threads(engine.pid) == before  # ... and none in the engine's process
    assert engine.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] > 0


def test_killed_engine_fails_every_waiting_caller_at_once():
    eng = Engine(dtype="float32")
    errors, done = [], threading.Event()

    def call(i):
        try:
            eng.generate(f"Story {i}:", LONG)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        if len(errors) == 3:
            done.set()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    it = eng.generate("Streamed story:", LONG, stream=True)
    next(it)
    os.kill(eng.pid, signal.SIGKILL)
    assert done.wait(20), "a caller still waits on a dead engine"
    assert all(isinstance(e, EngineDiedError) for e in errors), errors
    with pytest.raises(EngineDiedError):
        list(it)
    with pytest.raises(EngineDiedError, match="died"):
        eng.generate("Hi", {"max_new_tokens": 2})
    t = time.time()
    eng.shutdown()
    assert time.time() - t < 10
    fresh = Engine(dtype="float32", max_total_tokens=2048)  # a new one starts fine
    try:
        assert fresh.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"]
    finally:
        fresh.shutdown()


def test_shutdown_fails_requests_in_flight_with_closed_error():
    eng = Engine(dtype="float32", max_total_tokens=2048)
    errors = []
    th = threading.Thread(target=lambda: errors.append(
        pytest.raises(EngineClosedError, eng.generate, "Story:", LONG)))
    th.start()
    time.sleep(1.0)
    eng.shutdown()
    th.join(20)
    assert not th.is_alive() and errors and _gone(eng.pid, 5)


CALLER = """
import sys, time
from sglc_runtime.engine import Engine
eng = Engine(dtype="float32", max_total_tokens=2048)
print(eng.pid, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)  # no shutdown(): interpreter exit
eng.generate("Story:", {"max_new_tokens": 1500, "ignore_eos": True})
"""


@pytest.mark.parametrize("how", ["exit", "sigint", "sigkill"])
def test_no_orphan_engine_when_the_caller_ends(how):
    p = subprocess.Popen([sys.executable, "-c", CALLER, how], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    if how == "sigint":
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
    elif how == "sigkill":
        time.sleep(1.0)
        p.kill()
    p.wait(timeout=60)
    assert _gone(child, 20), f"engine process {child} outlived its caller ({how})"


def test_data_parallel_replica_dying_mid_request():
    eng = Engine(dtype="float32", dp_size=2)
    try:
        assert len(set(eng.pid)) == 2 and os.getpid() not in eng.pid
        prefix = "You are a helpful assistant. " * 8
        outs = eng.generate([prefix + f"Question {i}?" for i in range(6)],
                            {"max_new_tokens": 4, "temperature": 0})
        assert len(outs) == 6
        stats = eng.stats()
        assert len(stats["replicas"]) == 2
        results, errors = {}, {}

        def call(i):
            try:
                results[i] = eng.generate(f"Long story {i}:", LONG)
            except Exception as e:  # noqa: BLE001
                errors[i] = e

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        busy = [i for i, r in enumerate(eng.stats()["replicas"]) if r["num_running"]]
        assert len(busy) == 2  # four unrelated prompts: spread over both replicas
        os.kill(eng.pid[busy[0]], signal.SIGKILL)
        # the dead replica's requests fail clearly; the others keep running until aborted
        deadline = time.time() + 20
        while time.time() < deadline and not errors:
            time.sleep(0.1)
        assert errors and all(isinstance(e, EngineDiedError) for e in errors.values())
        out = eng.generate("After the crash:", {"max_new_tokens": 3, "temperature": 0})
        assert out["meta_info"]["completion_tokens"] == 3  # served by the live replica
    finally:
        eng.shutdown()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    assert set(results) | set(errors) == {0, 1, 2, 3}  # none lost silently


def test_the_engine_process_logs_through_the_callers_handlers(caplog):
    """At the caller's level, into the caller's handlers: the start-up plan at info (what runs,
    what is off), a line per step at debug; nothing below the caller's level crosses."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="sglc_runtime"):
        eng = Engine(max_total_tokens=4096)
        try:
            eng.generate("Hello", {"max_new_tokens": 3, "temperature": 0})
        finally:
            eng.shutdown()
    ours = [r for r in caplog.records if r.processName.startswith("sglc-engine-")]
    msgs = [r.getMessage() for r in ours]
    assert any(m.startswith("CPU features: ") for m in msgs), msgs
    assert any(m.startswith("linears: ") for m in msgs) and \
        any(m.startswith("attention: ") for m in msgs)
    assert any(m.startswith("step: decode of 1 requests") and m.endswith(" ms") for m in msgs)
    assert all(r.process == eng._driver.pid for r in ours)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sglc_runtime"):
        Engine(max_total_tokens=4096).shutdown()
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
