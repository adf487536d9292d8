"""The engine in a process of its own (the default): the model, scheduler and engine loop run in
a child started as `python -m sglc_runtime.engine_process`, so its OpenMP thread pool is the only
one in that process and nothing the caller does with torch slows it down.

Transport: one `multiprocessing.connection.Connection` over a socketpair (pickled tuples).
Caller -> child: ("config", EngineConfig, log level), ("submit", [request fields]),
("abort", rid), ("call", id, name), ("shutdown",). Child -> caller: ("ready", info),
("init_error", error), ("updates", [update]), ("result", id, value, error),
("log", logger name, level, text, time): the child's `sglc_runtime` records at the caller's
level, which the caller hands to its own handlers (its format, its stream). Token ids go
in and text, ids and logprobs come out; tensors never cross. The child is started with
subprocess (not multiprocessing's spawn), so a caller's script needs no
`if __name__ == "__main__"` guard. It exits when the caller's end of the socket closes
(the caller died) and ignores Ctrl-C, which the caller handles."""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from . import errors
from .config import EngineConfig
from .errors import EngineClosedError, EngineDiedError, SglcError
from .request import Req, ReqStatus

logger = logging.getLogger("sglc_runtime.engine_process")  # (its own name when run as __main__)


def _emit_log(msg: tuple, pid: int) -> None:
    """A record of the engine process, through the caller's logger of that name."""
    _, name, level, text, created = msg
    lg = logging.getLogger(name)
    if lg.isEnabledFor(level):
        rec = lg.makeRecord(name, level, "(engine process)", 0, text, None, None)
        rec.created, rec.msecs = created, (created - int(created)) * 1000
        rec.process, rec.processName = pid, f"sglc-engine-{pid}"
        lg.handle(rec)


class _ToCaller(logging.Handler):
    """The engine process's log handler: each record goes to the caller as a "log" message."""

    def __init__(self, send):
        super().__init__()
        self.send = send
        self.setFormatter(logging.Formatter("%(message)s"))  # (and a traceback, if any)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.name, record.levelno, self.format(record), record.created))
        except Exception:  # noqa: BLE001 - logging's own report of a failed handler
            self.handleError(record)


def pack_error(e: BaseException) -> tuple[str, str]:
    return type(e).__name__, str(e)


def unpack_error(packed: tuple[str, str]) -> BaseException:
    """The same sglc error class where there is one (user errors stay `SglcError`s)."""
    name, msg = packed
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, SglcError):
        try:
            return cls(msg)
        except TypeError:
            pass
    return RuntimeError(f"{name} in the engine process: {msg}")


# ---- the caller's side ---------------------------------------------------------------------------
class ProcessDriver:
    """Starts the engine process and mirrors its requests: each submitted Req is updated from the
    child's messages (on a reader thread) and its `on_update` called, as the loop would."""

    def __init__(self, config: EngineConfig, name: str = "engine"):
        self.name = name
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sglc_runtime.engine_process", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.pid = self.proc.pid
        self._send_lock = threading.Lock()
        self._reqs: dict[int, Req] = {}
        self._calls: dict[int, tuple[threading.Event, list]] = {}
        self._call_ids = itertools.count()
        self._dead: BaseException | None = None
        self._closing = False
        try:
            self.conn.send(("config", config,
                            logging.getLogger("sglc_runtime").getEffectiveLevel()))
            msg = self.conn.recv()
            while msg[0] == "log":  # (the model load's lines come before "ready")
                _emit_log(msg, self.pid)
                msg = self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.wait(timeout=30)
            raise EngineDiedError(f"the {name} process exited during startup (exit code "
                                  f"{code}); its log is above") from None
        if msg[0] == "init_error":
            self.proc.wait(timeout=30)
            raise unpack_error(msg[1])
        info = msg[1]
        self.tokenizer = pickle.loads(info["tokenizer"])
        self.context_length = info["context_length"]
        self.max_total_tokens = info["max_total_tokens"]
        self.eos_ids = info["eos_ids"]
        self._reader = threading.Thread(target=self._read, name=f"sglc-{name}-reader",
                                        daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._dead is None

    def _send(self, msg) -> None:
        with self._send_lock:
            if self._dead is not None:
                raise self._dead
            try:
                self.conn.send(msg)
            except OSError:
                raise EngineDiedError(f"the {self.name} process (pid {self.pid}) is gone") \
                    from None

    def submit(self, reqs: list[Req]) -> None:
        if self._closing:
            raise EngineClosedError("the engine was shut down")
        for r in reqs:
            self._reqs[r.rid] = r
        try:
            self._send(("submit", [(r.rid, r.input_ids, r.params, r.return_logprob,
                                    r.logprob_start_len, r.top_logprobs_num, r.continuation)
                                   for r in reqs]))
        except BaseException:
            for r in reqs:
                self._reqs.pop(r.rid, None)
            raise

    def abort(self, req: Req) -> None:
        try:
            self._send(("abort", req.rid))
        except SglcError:
            pass  # gone already: its requests were failed

    def call(self, name: str, timeout: float = 60.0) -> Any:
        cid = next(self._call_ids)
        done, box = threading.Event(), []
        self._calls[cid] = (done, box)
        self._send(("call", cid, name))
        if not done.wait(timeout):
            raise EngineDiedError(f"the {self.name} process did not answer {name!r} in "
                                  f"{timeout:.0f} s")
        value, err = box
        if err is not None:
            raise err
        return value

    def _read(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                try:  # a bad message must not end the only thread that delivers results
                    self._handle(msg)
                except Exception:
                    logger.exception("could not handle the engine process's %r message", msg[0])
        except (EOFError, OSError):
            pass
        code = self.proc.wait()
        err = (EngineClosedError("the engine was shut down") if self._closing else
               EngineDiedError(f"the {self.name} process (pid {self.pid}) died (exit code "
                               f"{code}); requests in flight failed"))
        self._fail_everything(err)

    def _handle(self, msg: tuple) -> None:
        if msg[0] == "updates":
            self._apply(msg[1])
        elif msg[0] == "log":
            _emit_log(msg, self.pid)
        elif msg[0] == "result":
            _, cid, value, err = msg
            done, box = self._calls.pop(cid)
            box.extend([value, None if err is None else unpack_error(err)])
            done.set()

    def _apply(self, updates: list) -> None:
        for rid, keep, delta, num_ids, lps_kept, new_lps, new_tops, final in updates:
            r = self._reqs.get(rid)
            if r is None:
                continue
            r.text = r.text[:keep] + delta
            r.output_ids[num_ids:] = []
            r.output_ids.extend([0] * (num_ids - len(r.output_ids)))  # counts only until final
            del r.output_token_logprobs[lps_kept:], r.output_top_logprobs[lps_kept:]
            r.output_token_logprobs.extend(new_lps)
            r.output_top_logprobs.extend(new_tops)
            if final is not None:
                kind, payload = final
                if kind == "ok":
                    r.result = payload
                    r.finish_reason = payload["meta_info"]["finish_reason"]
                    r.output_ids[:] = payload["output_ids"]
                else:
                    r.error = unpack_error(payload)
                    r.finish_reason = {"type": "abort", "message": str(r.error)}
                r.status = ReqStatus.FINISHED
                del self._reqs[rid]
            self._notify(r)

    @staticmethod
    def _notify(r: Req) -> None:
        if r.on_update is not None:
            try:
                r.on_update(r)
            except Exception:
                logger.exception("update callback of request %d failed", r.rid)

    def _fail_everything(self, err: BaseException) -> None:
        with self._send_lock:
            self._dead = err
        for r in list(self._reqs.values()):
            r.error = err
            r.finish_reason = {"type": "abort", "message": str(err)}
            r.status = ReqStatus.FINISHED
            self._notify(r)
        self._reqs.clear()
        for done, box in list(self._calls.values()):
            box.extend([None, err])
            done.set()
        self._calls.clear()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the engine process (its requests in flight fail with EngineClosedError)."""
        self._closing = True
        try:
            self._send(("shutdown",))
        except SglcError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=timeout)
        self.conn.close()


# ---- the engine process --------------------------------------------------------------------------
def _updates(reqs: list[Req], sent: dict[int, list]) -> list[tuple]:
    """What the caller's mirrors lack: text (with how much of the old text stands), the number of
    output ids, new logprob entries (with how many of those sent stand: jump-forward's
    re-tokenization can take back the last ones), and the result once finished."""
    from .outputs import make_result

    out = []
    for r in reqs:
        text_sent, num_lps = sent.setdefault(r.rid, ["", 0])
        keep = len(os.path.commonprefix([text_sent, r.text]))
        num_lps = min(num_lps, len(r.output_token_logprobs))  # (each step sends: see above)
        final = None
        if r.finished:
            final = ("error", pack_error(r.error)) if r.error is not None \
                else ("ok", make_result(r))
            sent.pop(r.rid)
        else:
            sent[r.rid] = [r.text, len(r.output_token_logprobs)]
        tops = r.output_top_logprobs[num_lps:] if r.top_logprobs_num else []
        out.append((r.rid, keep, r.text[keep:], len(r.output_ids), num_lps,
                    r.output_token_logprobs[num_lps:], tops, final))
    return out


def main(fd: int) -> None:
    """The engine process: build the core, answer "ready", run the loop on the main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    conn = Connection(fd)
    lock = threading.Lock()  # (the loop, the receiver and log records all send)

    def send(msg) -> None:
        with lock:
            conn.send(msg)

    _, config, level = conn.recv()
    root = logging.getLogger("sglc_runtime")
    root.setLevel(level)
    root.addHandler(_ToCaller(send))
    root.propagate = False
    from .engine_core import EngineCore
    from .engine_loop import EngineLoop

    try:
        core = EngineCore(config)
    except BaseException as e:  # noqa: BLE001 - reported to the caller's constructor
        send(("init_error", pack_error(e)))
        return
    sent: dict[int, list] = {}
    loop = EngineLoop(core, lambda reqs: send(("updates", _updates(reqs, sent))),
                      config.check_invariants)
    send(("ready", {"tokenizer": pickle.dumps(core.tokenizer),
                    "context_length": core.runner.context_length,
                    "max_total_tokens": core.runner.kv_pool.size,
                    "eos_ids": tuple(core.eos_ids)}))
    threading.Thread(target=_receive, args=(conn, send, loop, core), name="sglc-receiver",
                     daemon=True).start()
    loop.run()


def _receive(conn: Connection, send, loop, core) -> None:
    """Requests in (constraints are built here, off the loop thread), until the caller goes."""
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "shutdown":
                break
            try:  # one bad message fails its requests, never the engine
                _handle(msg, send, loop, core)
            except Exception:
                logger.exception("could not handle the caller's %r message", msg[0])
    except (EOFError, OSError):
        pass  # the caller is gone
    loop.stop()


def _handle(msg: tuple, send, loop, core) -> None:
    if msg[0] == "submit":
        loop.submit([_request(core, *fields) for fields in msg[1]])
    elif msg[0] == "abort":
        loop.abort(msg[1])
    elif msg[0] == "call":
        cid, name = msg[1], msg[2]
        loop.call(name, lambda v, e: send(
            ("result", cid, v, None if e is None else pack_error(e))))


def _request(core, rid, input_ids, params, return_logprob, start, top, continuation) -> Req:
    from .constrained import build_constraint
    from .request import new_request

    req = new_request(input_ids, params, return_logprob, start, top, rid=rid)
    req.continuation = continuation
    try:  # every gen's constraint (a program segment's too) is built here, off the loop
        if params.constraint is not None:
            req.constraint = build_constraint(core.tokenizer, **params.constraint)
            req.fsm_state = req.constraint.initial_state
        if continuation is not None:
            continuation.constraints = [
                None if p.constraint is None else build_constraint(core.tokenizer, **p.constraint)
                for _, p in continuation.steps]
    except Exception as e:  # noqa: BLE001 - the request fails with it, the engine goes on
        req.error = e
    return req


if __name__ == "__main__":
    main(int(sys.argv[1]))
