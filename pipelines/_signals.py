"""Stopping a command cleanly on SIGTERM or SIGINT (issue 20).

Batch systems stop jobs with SIGTERM (SLURM, Kubernetes, `timeout`, a Prefect worker). The CLI
(`pipelines.cli.main`) calls `install()` first. Then:

1. The first SIGTERM/SIGINT raises `Stopped` (a `BaseException`, so library code that catches
   `Exception` does not swallow it) in the main thread. While a Prefect flow runs, Prefect's own
   SIGTERM bridge gets the signal first: it marks the flow run Crashed and sends the signal again,
   which lands here. Either way the `finally` blocks run on the way out: the output folder's lock
   is released (`sciml._rundir`), half-written files are removed (`sciml._io.atomic_path`), and
   the checkpoint written after the last completed chunk stays where it is.
2. The CLI then marks this process's flow runs Cancelled with the reason (`mark_cancelled`),
   stops every descendant process (`stop_descendants`: the temporary Prefect API server, Dask
   workers, PySR's Julia workers; SIGTERM, a short wait, then SIGKILL) and exits 128 + the signal
   number (143 for SIGTERM, 130 for SIGINT).
3. A second signal while stopping, or a stop that takes longer than `SCIML_STOP_GRACE` seconds
   (default 20, under the 30 s that SLURM and Kubernetes wait before SIGKILL), ends at once:
   descendants are killed, this process's folder locks and temporary files are removed, and the
   process exits with the same code.

A helper thread watches the signals through `signal.set_wakeup_fd`, so the grace period starts
even while the main thread is busy in compiled code (XLA) and another handler (Prefect's runner
in `deploy --serve`) takes the signal. The process is also made a child subreaper (Linux), so a
grandchild whose parent dies (a Dask worker whose nanny went first) stays in its tree and is
stopped too, rather than being adopted by init.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_GRACE = 20.0
CHILD_GRACE = 3.0  # SIGTERM -> SIGKILL for descendants
CANCEL_TIMEOUT = 10.0  # marking flow runs Cancelled through the API

_lock = threading.RLock()  # a second signal's handler may run while the first holds it
_seen: int | None = None  # the first signal, as seen by the watcher thread or the handler
_handled = 0  # how many times the Python-level handler ran
_flow_runs: list[str] = []  # ids of the flow runs started in this process, oldest first
_at_signal: set[int] = set()  # this process's descendants when the first signal came
_installed = False
_wakeup: tuple[socket.socket, socket.socket] | None = None  # kept open while the process runs


class Stopped(BaseException):
    """Raised in the main thread by the first SIGTERM or SIGINT."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def grace() -> float:
    try:
        return max(0.0, float(os.environ.get("SCIML_STOP_GRACE", DEFAULT_GRACE)))
    except ValueError:
        return DEFAULT_GRACE


def requested() -> int | None:
    """The signal that asked this process to stop, if one has arrived."""
    return _seen


# -- installing ------------------------------------------------------------------------------
def install() -> None:
    """Handle SIGTERM and SIGINT in this (main) thread; idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    _become_subreaper()
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)
    _watch_wakeup_fd()
    # registered before Prefect registers the temporary server's `stop`: runs after it
    atexit.register(_at_exit)


def _at_exit() -> None:
    """After a stop: whatever is still running once Prefect has stopped its server."""
    if _seen is not None:
        stop_descendants(timeout=2.0)


def api_servers() -> set[int]:
    """Process ids of the temporary Prefect API servers this process started.

    They are left to Prefect's own exit handler (which stops them after its log and event
    services have flushed into them; killed first, the flush waits on a dead server), and the
    handler registered by `install` stops whatever is left after that.
    """
    module = sys.modules.get("prefect.server.api.server")
    servers = getattr(getattr(module, "SubprocessASGIServer", None), "_instances", {})
    pids = set()
    for server in list(servers.values()):
        process = getattr(server, "server_process", None)
        if process is not None and process.poll() is None:
            pids.add(process.pid)
    return pids


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _watch_wakeup_fd() -> None:
    """A thread that sees every signal at C level, whichever Python handler then runs."""
    global _wakeup
    try:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (OSError, ValueError):
        return

    def watch() -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS:
                    _observe(signum)

    _wakeup = (reader, writer)
    threading.Thread(target=watch, name="sciml-signal-watch", daemon=True).start()


def _observe(signum: int) -> None:
    """Record the first stop signal and start the grace period."""
    global _seen
    with _lock:
        if _seen is not None:
            return
        _seen = signum
    with contextlib.suppress(Exception):
        _at_signal.update(descendants())
    timer = threading.Timer(grace(), _deadline, args=(signum,))
    timer.daemon = True
    timer.start()


def _on_signal(signum: int, frame: object) -> None:
    global _handled
    _observe(signum)
    _handled += 1
    if _handled == 1:
        raise Stopped(signum)
    _say(f"{signal_name(signum)} again while stopping: stopping now")
    hard_stop(_seen or signum)


def stopping() -> None:
    """Called when the stop is under way: from now on a signal ends the process at once (also
    after another handler, such as Prefect's runner in `deploy --serve`, took the first one)."""
    global _handled
    _handled = max(_handled, 1)
    with contextlib.suppress(ValueError):  # not the main thread
        for signum in SIGNALS:
            signal.signal(signum, _on_signal)


def _deadline(signum: int) -> None:
    _say(f"still stopping {grace():g} s after {signal_name(signum)}: stopping now")
    thread = threading.Thread(target=mark_cancelled, args=(_reason(signum),), daemon=True)
    thread.start()
    thread.join(3.0)
    hard_stop(signum)


def _say(message: str) -> None:
    with contextlib.suppress(Exception):
        os.write(2, f"sciml: {message}\n".encode())


def _reason(signum: int) -> str:
    return f"stopped by {signal_name(signum)} (process {os.getpid()})"


# -- flow runs -------------------------------------------------------------------------------
def note_flow_run() -> None:
    """Remember the current flow run (called first thing in each flow of `pipelines.flows`)."""
    with contextlib.suppress(Exception):
        from prefect.runtime import flow_run

        if flow_run.id and flow_run.id not in _flow_runs:
            _flow_runs.append(flow_run.id)


def mark_cancelled(reason: str, flow_runs: Iterable[str] | None = None) -> list[str]:
    """Set this process's unfinished (or Crashed) flow runs to Cancelled with `reason`.

    Best effort, within `CANCEL_TIMEOUT` seconds: the API may already be gone (a signal sent to
    the whole process group also stops the temporary API server). Returns the ids it changed.
    """
    ids = list(flow_runs if flow_runs is not None else _flow_runs)
    if not ids:
        return []
    changed: list[str] = []

    def run() -> None:
        from prefect import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            for flow_run_id in reversed(ids):  # subflows first
                try:
                    state = client.read_flow_run(flow_run_id).state
                    if state is not None and (state.is_completed() or state.is_cancelled()):
                        continue
                    client.set_flow_run_state(flow_run_id, Cancelled(message=reason), force=True)
                    changed.append(flow_run_id)
                except Exception:  # noqa: BLE001, S112 - best effort, one run at a time
                    continue

    def guarded() -> None:
        with contextlib.suppress(Exception):
            run()

    thread = threading.Thread(target=guarded, name="sciml-cancel", daemon=True)
    thread.start()
    thread.join(CANCEL_TIMEOUT)
    return changed


# -- descendant processes --------------------------------------------------------------------
def descendants(pid: int | None = None) -> list[int]:
    """Process ids of every descendant of `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    try:
        import psutil
    except ImportError:
        return _proc_descendants(pid)
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _proc_descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _reap(pid: int) -> bool:
    """True when `pid` was a child of this process that had ended (now reaped)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return False
    return done == pid


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie that is our child is reaped here)."""
    from sciml.io import pid_alive

    if _reap(pid) or not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        try:
            import psutil

            zombie = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except Exception:  # noqa: BLE001 - no /proc and no psutil: trust kill(0)
            zombie = False
    if zombie:
        _reap(pid)
    return not zombie


def _send(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def stop_descendants(timeout: float = CHILD_GRACE, keep: Iterable[int] = ()) -> list[int]:
    """SIGTERM every descendant but `keep`, SIGKILL those left after `timeout` s; returns their
    ids, and those of the descendants there were when the first signal came.

    The tree is listed before any signal is sent and again while waiting, so a process that a
    dying parent leaves behind (adopted by this subreaper) or starts at the last moment is
    stopped too.
    """
    keep = set(keep)
    seen: list[int] = []
    pending: set[int] = set()
    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        _send(pending, signum)
        end = time.monotonic() + wait
        while True:
            new = [p for p in descendants() if p not in seen and p not in keep]
            seen += new
            pending |= set(new)
            _send(new, signum)
            pending = {p for p in pending if _running(p)}
            if not pending or time.monotonic() >= end:
                break
            time.sleep(0.05)
        if not pending:
            break
    for pid in seen:  # reap what is left as zombies
        _running(pid)
    return seen + sorted(_at_signal - set(seen))


def release_locks(root: str | os.PathLike[str], pids: Iterable[int], depth: int = 2) -> list[Path]:
    """Drop the output-folder locks under `root` (itself and `depth` levels of subfolders) held
    by `pids`, processes of this run that were stopped (a sweep's Dask workers: killed while
    training, they could not run their own `finally` blocks), with their temporary files.

    Returns the folders released. A lock of a live process, or of any other process, is kept.
    """
    from sciml.io import LOCK, TEMPORARY

    pids = set(pids)
    root = Path(root)
    released = []
    for level in range(depth + 1):
        for lock in root.glob("/".join(["*"] * level + [LOCK])):
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                continue
            if pid not in pids or _running(pid):
                continue
            for tmp in lock.parent.glob(TEMPORARY):
                tmp.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            released.append(lock.parent)
    return released


def hard_stop(signum: int) -> None:
    """Kill every descendant now, drop this process's folder locks and temporary files, exit."""
    with contextlib.suppress(Exception):
        pids = descendants()
        _send(pids, signal.SIGKILL)
        for _ in range(40):
            if not [p for p in pids if _running(p)]:
                break
            time.sleep(0.05)
    for module, cleanup in (("sciml._io", "discard_pending"), ("sciml._rundir", "release_all")):
        with contextlib.suppress(Exception):
            loaded = sys.modules.get(module)
            if loaded is not None:
                getattr(loaded, cleanup)()
    os._exit(128 + signum)
