"""The Flight server of a stage, and :func:`serve`."""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import threading
import time
from typing import Any

import pyarrow.flight as flight

from ._errors import Code, StageError, to_flight_error
from ._exchange import Cancelled, Exchange
from ._manifest import PROTOCOLS, Manifest, negotiate
from ._security import ENV_TLS_CERT, security_from_env
from ._stage import Stage

log = logging.getLogger("sluice_stage")

ENV_SOCKET = "SLUICE_STAGE_SOCKET"
"""The unix socket path the engine starts a child stage with."""

ENV_ADDR = "SLUICE_STAGE_ADDR"
"""host:port to listen on with TCP (a remote stage), when there is no socket."""

SHUTDOWN_TIMEOUT = 4.0
"""Seconds :func:`serve` lets running exchanges finish after SIGTERM: inside
the 5 s the engine waits before it sends SIGKILL."""


class StageServer(flight.FlightServerBase):
    """A pyarrow Flight server serving ``stage``: the ``describe`` and
    ``health`` actions and ``DoExchange``. Every other Flight method answers
    UNIMPLEMENTED.

    It listens as soon as it is built. :func:`serve` builds one on the
    engine's address; build one yourself to run a stage inside a test
    (``StageServer(stage)`` listens on a free local TCP port, ``.port``).
    Raises ValueError when the manifest is invalid.
    """

    def __init__(self, stage: Stage, location: Any = "grpc://127.0.0.1:0", **kwargs: Any):
        try:
            manifest = stage.manifest()
        except Exception as e:
            raise ValueError(f"manifest() raised {type(e).__name__}: {e}") from e
        problems = manifest.problems() if isinstance(manifest, Manifest) else ["manifest() must return a Manifest"]
        if problems:
            raise ValueError(f"invalid manifest of {getattr(manifest, 'name', '?')!r}: " + "; ".join(problems))
        self.stage = stage
        self.manifest = manifest
        # computed once: describe answers are the same for the life of the process
        self._describe = {p: manifest.to_json(p) for p in PROTOCOLS}
        super().__init__(location, **kwargs)

    def do_action(self, context: Any, action: Any) -> list[bytes]:
        try:
            if action.type == "describe":
                body = action.body.to_pybytes() if action.body is not None else b""
                return [self._describe[negotiate(body)]]
            if action.type == "health":
                try:
                    self.stage.health()
                except Exception as e:
                    # protocol.md: a stage that cannot serve fails with UNAVAILABLE, whatever the cause
                    msg = e.message if isinstance(e, StageError) else f"{type(e).__name__}: {e}"
                    raise StageError(Code.UNAVAILABLE, msg) from None
                return [b'{"status":"ok"}']
            raise StageError(
                Code.INVALID_ARGUMENT,
                f"unknown action {action.type!r}; actions are describe and health",
            )
        except StageError as e:
            raise to_flight_error(e) from None
        except Exception as e:
            log.exception("sluice_stage: action %r failed", getattr(action, "type", "?"))
            raise to_flight_error(StageError(Code.INTERNAL, f"{type(e).__name__}: {e}")) from None

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [
            ("describe", "the stage manifest, JSON (" + ", ".join(PROTOCOLS) + ")"),
            ("health", '{"status":"ok"} when the stage can serve'),
        ]

    def do_exchange(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        x = Exchange(self, context, descriptor, reader, writer)
        try:
            x.run()
        except Cancelled:
            log.info("sluice_stage: exchange cancelled by the engine (stage %r, %s)", self.manifest.name, _where(x))
            # nobody reads this status; protocol.md: treat it as an aborted input
            raise to_flight_error(StageError(Code.INVALID_ARGUMENT, "the engine cancelled the exchange")) from None
        except StageError as e:
            log.warning("sluice_stage: exchange failed (stage %r, %s): %s", self.manifest.name, _where(x), e)
            raise to_flight_error(e) from None
        except Exception as e:
            # a bug of the SDK itself: still a clean INTERNAL status, never a dead server
            log.exception("sluice_stage: exchange failed (stage %r, %s)", self.manifest.name, _where(x))
            raise to_flight_error(StageError(Code.INTERNAL, f"{type(e).__name__}: {e}")) from None
        log.debug("sluice_stage: exchange flushed (stage %r, %s, %d rows)", self.manifest.name, _where(x), x.rows)


def _where(x: Exchange) -> str:
    r = x.request
    if r is None:
        return "before the open request"
    return f"pipeline stage {r.stage!r}, epoch {r.epoch}, partition {r.partition}"


def listen_location(environ: Any = None, tls: bool = False) -> str:
    """The Flight location to listen on, from the environment: the unix
    socket ``SLUICE_STAGE_SOCKET`` (the engine sets it for a child stage; a
    stale socket file left by an earlier process is removed), else TCP
    ``SLUICE_STAGE_ADDR`` (host:port), with TLS when ``tls``. Raises
    ValueError when neither is set, or for TLS on a unix socket (pyarrow
    serves TLS on TCP only; a child stage needs none)."""
    env = os.environ if environ is None else environ
    path = env.get(ENV_SOCKET, "")
    if path.startswith("unix://"):
        path = path[len("unix://"):]
    if path and tls:
        raise ValueError(
            f"{ENV_TLS_CERT} is set, and this SDK serves TLS on TCP ({ENV_ADDR}) only: "
            f"a child stage on {ENV_SOCKET} needs no TLS"
        )
    if path:
        path = os.path.abspath(path)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                # the engine restarts a stage that exits; the old socket file
                # would make the new listen fail
                os.remove(path)
        except FileNotFoundError:
            pass
        return f"grpc+unix://{path}"
    addr = env.get(ENV_ADDR, "")
    if addr:
        return f"grpc+tls://{addr}" if tls else f"grpc+tcp://{addr}"
    raise ValueError(
        f"nowhere to listen: set {ENV_SOCKET} (a unix socket path; the engine does) or {ENV_ADDR} (host:port)"
    )


def _default_logging() -> None:
    # a child stage's stderr lines are logged by the engine, tagged with the
    # stage's name; keep them one line each
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def serve(stage: Stage, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Serves ``stage`` until SIGTERM or SIGINT, then stops gracefully.

    Listens where :func:`listen_location` says. On the signal it stops
    accepting exchanges and lets running ones finish for at most
    ``shutdown_timeout`` seconds, then returns (or, when some are still
    running, exits the process with status 0 at once: pyarrow cannot cut
    a running call off). Exits with a message (SystemExit, status 1) when
    it has nowhere to listen, cannot listen, or the manifest is invalid.
    Signals are only handled when it is called from the main thread.
    """
    _default_logging()
    location = f"${ENV_SOCKET} or ${ENV_ADDR}"
    try:
        security = security_from_env()
        location = listen_location(tls=security.tls)
        if security.token is not None and not security.tls and location.startswith("grpc+tcp://"):
            log.warning("the stage checks a token over plain TCP: anyone on the path can read it; serve TLS too")
        server = StageServer(stage, location, **security.server_options())
    except ValueError as e:
        raise SystemExit(f"sluice_stage: {e}") from None
    except Exception as e:
        raise SystemExit(f"sluice_stage: cannot listen on {location}: {_one_line(e)}") from None

    # a plain flag, polled: a signal handler must not take a lock the
    # interrupted main thread may hold (threading.Event would)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills the default way
        stopping.append(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    m = server.manifest
    log.info("sluice stage serving: %s %s (%s) on %s", m.name, m.version, m.language, location)
    while not stopping:
        time.sleep(0.1)
    log.info("sluice stage stopping: %s", m.name)

    stopped = threading.Event()

    def shutdown() -> None:
        server.shutdown()  # refuses new calls, waits for running ones
        stopped.set()

    threading.Thread(target=shutdown, name="sluice-stage-shutdown", daemon=True).start()
    if not stopped.wait(shutdown_timeout):
        log.warning("sluice stage: exchanges still running after %.1f s; exiting", shutdown_timeout)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
