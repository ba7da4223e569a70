"""Run untrusted Python (code written by the model) confined, and always clean up after it.

What a run gets (as root, the usual case in CI and containers; without root, see below):

* its own session and process group, and a fresh pid namespace whose PID 1 is the code: when it
  ends, the kernel kills every process it left behind (threads, daemons, `setsid` escapees);
* a fresh network namespace with no interface up: no sockets out, not even to 127.0.0.1;
* a private mount namespace: every host mount read-only, empty tmpfs over /tmp, /var/tmp,
  /dev/shm, /run/lock, /root and /home (the interpreter's own directories are bound back
  read-only); the cwd, HOME and TMPDIR are a fresh 64 MiB tmpfs dir that vanishes with it;
* an unprivileged uid of its own (never 0, never shared with another run), no supplementary
  groups, `no_new_privs` (setuid binaries gain nothing), so RLIMIT_NPROC binds and a fork bomb
  stops at `processes`; root-only files (0600, /etc/shadow) are unreadable;
* rlimits: CPU seconds, address space, file size, open files, processes, no core dumps;
* a wall-clock timeout; stdout/stderr read up to a cap, the rest discarded;
* at the end, SIGKILL to the process group and then to every process of its uid (sent *as* that
  uid, so nothing else can be hit), until none is left;
* the same rlimits (memory, CPU, files) on its supervisor, the process that sets all this up and
  waits for the code: nothing of the run is outside the memory cap;
* its host-side scratch (`$TMPDIR/r1lab-sandbox-<pid>-*`) removed on every exit path: an
  exception raised into the caller mid-clean-up (the reward watchdog's timeout) still finishes
  it; if the host process itself is SIGKILLed, the run dies with it (a parent-death signal on
  the supervisor) and the next run in any process sweeps the dead host's scratch.

What it does not protect against: kernel exploits (no seccomp filter, shared kernel); reading
world-readable host files outside the hidden dirs (e.g. /etc/passwd, the r1lab source); CPU and
memory-bandwidth contention with the host; anything a run prints being trusted by the caller
(the code reward judges results itself). Where namespaces are not available (unprivileged
containers, some CI), the run still gets its uid, rlimits, timeout and kill-by-uid, but *can*
reach the network and write to world-writable dirs: a loud warning says so.

Without root (a workstation) the same namespaces and mounts are made inside a new user
namespace, where the caller's uid is mapped to root; before the code runs, every capability is
dropped for good (bounding set emptied, securebits locked), so it cannot undo the mounts. It
then runs under the caller's own uid, which has two consequences, each warned about once:
RLIMIT_NPROC counts all of the caller's processes (a fork bomb is still stopped, and the pid
namespace kills whatever it left), and there is no private uid: files the caller can read and
that the mounts do not hide (outside /home, /root, /tmp) are readable. Where user namespaces
are disabled (`kernel.unprivileged_userns_clone=0`, some AppArmor profiles) the run falls back
to rlimits, timeout and the process group kill, with the loud warning above.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_INIT = str(Path(__file__).with_name("_sandbox_init.py"))
_UID_BASE, _UID_SPAN = 1_000_000, 1_000_000  # far above any real account
_counter = itertools.count()
_warned: set[str] = set()
_swept: set[str] = set()
SCRATCH_PREFIX = "r1lab-sandbox-"


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    open_files: int = 64
    processes: int = 32
    output_bytes: int = 1 << 20


@dataclass
class RunResult:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    wall_s: float
    truncated: bool = False
    isolated: bool = True
    notes: list[str] = field(default_factory=list)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)
        print(f"WARNING: {message}", file=sys.stderr)


def _keep_paths() -> list[str]:
    """Directories the confined interpreter must still read (bound back under hidden dirs)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(str(Path(sys.executable).resolve().parent.parent))
    return sorted(os.path.realpath(p) for p in paths)


def run_python(source: str, limits: Limits = Limits(), namespaces: bool = True) -> RunResult:
    """Run `source` as `__main__` in a confined interpreter; never raises for what the code does.

    >>> run_python("print(6 * 7)").stdout
    b'42\\n'
    """
    is_root = os.geteuid() == 0
    uid = _UID_BASE + (os.getpid() * 4096 + next(_counter)) % _UID_SPAN if is_root else None
    if not is_root:
        _warn_once("uid", "r1lab sandbox: not root, so the code runs under your own uid (in a user "
                   "namespace where available); a fork bomb is limited by RLIMIT_NPROC on your "
                   "uid, and your other processes count against it")  # fmt: skip
    _sweep_stale_scratch()
    workdir = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    proc = None
    try:
        cfg = {
            "uid": uid,
            "host": os.getpid(),
            "userns": None if is_root else [os.geteuid(), os.getegid()],
            "workdir": workdir,
            "namespaces": namespaces,
            "keep": _keep_paths(),
            "limits": {k: getattr(limits, k) for k in ("cpu_s", "memory_bytes", "file_bytes")}
            | {"open_files": limits.open_files, "processes": limits.processes},
        }
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", _INIT, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        out, err, truncated, timed_out = _communicate(proc, source.encode(), limits, start)
    finally:
        _clean_up(proc, uid, workdir)
    result = RunResult(proc.returncode, out, err, timed_out, time.monotonic() - start, truncated)
    if b"R1LAB_SANDBOX_DEGRADED" in err or not cfg["namespaces"]:
        result.isolated = False
        _warn_once("ns", "r1lab sandbox: namespaces unavailable, model code CAN use the network "
                   "and write to world-writable dirs: " + err.decode(errors="replace")[:200])  # fmt: skip
    return result


def _clean_up(proc: subprocess.Popen | None, uid: int | None, workdir: str) -> None:
    """Kill the run and remove its scratch, even when an exception is raised into this thread
    meanwhile (the reward watchdog's `RewardTimeout`): the first one is re-raised at the end."""
    pending: BaseException | None = None
    steps = [lambda: _kill_everything(proc, uid)] if proc is not None else []
    steps.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    for step in steps:
        for _ in range(5):
            try:
                step()
                break
            except BaseException as e:  # noqa: BLE001 - finish the clean-up, then re-raise
                pending = pending or e
    if pending is not None:
        raise pending


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_scratch() -> None:
    """Once per process: remove scratch dirs left by a process that was killed (SIGKILL runs no
    `finally`); a dir is stale when the pid in its name is gone.

    A scratch dir is `r1lab-sandbox-<pid>-<random>` in the temp dir."""
    tmp = tempfile.gettempdir()
    if tmp in _swept:
        return
    _swept.add(tmp)
    with contextlib.suppress(OSError):
        for name in os.listdir(tmp):
            if not name.startswith(SCRATCH_PREFIX):
                continue
            pid = name[len(SCRATCH_PREFIX):].split("-", 1)[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def _communicate(proc, data: bytes, limits: Limits, start: float):
    """Feed stdin, read both pipes up to the cap until exit or the wall-clock deadline."""
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    bufs = {"out": bytearray(), "err": bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    truncated = timed_out = False
    deadline = start + limits.wall_s
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(timeout=min(left, 0.5)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = bufs[key.data]
            room = limits.output_bytes - len(buf)
            truncated |= len(chunk) > room
            buf += chunk[: max(room, 0)]
    sel.close()
    if not timed_out:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            timed_out = True
    return bytes(bufs["out"]), bytes(bufs["err"]), truncated, timed_out


def _kill_everything(proc: subprocess.Popen, uid: int | None) -> None:
    """SIGKILL the process group, then every process of the run's uid, then reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if uid is not None:
        deadline = time.monotonic() + 2.0
        _kill_uid(uid)
        while uid_processes(uid) and time.monotonic() < deadline:
            time.sleep(0.01)  # a fork bomb may still be dying; keep sweeping
            _kill_uid(uid)
    proc.wait()
    for pipe in (proc.stdout, proc.stderr, proc.stdin):
        if pipe is not None:
            pipe.close()


def uid_processes(uid: int) -> list[int]:
    """Live (not zombie) processes owned by `uid`, from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in "ZX":
            pids.append(int(name))
    return pids


def _kill_uid(uid: int) -> None:
    """kill(-1, SIGKILL) as `uid`: reaches exactly the processes of that uid, forked or not."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(1000):
                os.kill(-1, signal.SIGKILL)  # ESRCH once nothing of this uid is left
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
