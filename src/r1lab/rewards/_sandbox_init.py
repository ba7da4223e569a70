"""Runs inside a fresh session: confine this process, then execute the source from stdin.

Started by `r1lab.rewards.sandbox.run_python` as `python -I -B _sandbox_init.py CONFIG_JSON`;
standard library only, because it runs before anything is confined and must not import r1lab.
Order matters: namespaces and mounts need privilege, so it is given up last, just before the
untrusted code runs (in this same interpreter, to save a second start-up). As root the process
drops to the run's own uid. Without root it first enters a new user namespace (its uid mapped
to root there, which is what lets it create the other namespaces and mounts), and at the end
drops every capability, for good (bounding set emptied, securebits locked), so the code cannot
undo the mounts.
"""

import contextlib
import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUSER = 0x20000000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
#: securebits: no root privileges on exec, no fixups on uid changes, no ambient raise; each locked
SECUREBITS_LOCKED_DOWN = 0b11101111
#: statvfs f_flag bits -> mount flags a remount must keep (a mount inherited into a user
#: namespace is locked: dropping one of these flags fails with EPERM)
ST_TO_MS = {1: 1, 2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}
WRITABLE = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]  # world-writable on most hosts
HIDDEN = ["/root", "/home"]  # other users' files: hidden behind an empty tmpfs

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = [x.encode() if isinstance(x, str) else x for x in (src, target, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {target}")


def _kept_flags(path: str) -> int:
    try:
        f = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(ms for st, ms in ST_TO_MS.items() if f & st)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]


def confine_filesystem(keep: list[str]) -> str:
    """Everything read-only, fresh empty tmpfs on the shared writable dirs; returns the workdir."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for mp in _mount_points():
        if mp == "/proc" or mp.startswith(("/proc/", "/dev")):
            continue
        # a mount we may not touch (locked) stays as it is; the uid drop still protects its files
        with contextlib.suppress(OSError):
            _mount(None, mp, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | _kept_flags(mp))
    tmpfs = MS_NOSUID | MS_NODEV
    for d in WRITABLE:
        if os.path.isdir(d):
            _mount("tmpfs", d, "tmpfs", tmpfs, "size=64m,mode=1777")
    for d in HIDDEN:
        if not os.path.isdir(d):
            continue
        inside = [k for k in keep if k == d or k.startswith(d + "/")]
        fds = [(k, os.open(k, os.O_RDONLY | os.O_DIRECTORY)) for k in inside]
        _mount("tmpfs", d, "tmpfs", tmpfs | MS_NOEXEC, "size=1m,mode=755")
        for k, fd in fds:  # the interpreter may live under /root (pyenv): put it back, read-only
            os.makedirs(k, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
            _mount(None, k, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | _kept_flags(k))
            os.close(fd)
        _mount(None, d, None, MS_REMOUNT | MS_RDONLY | tmpfs | MS_NOEXEC, "size=1m,mode=755")
    os.makedirs("/tmp/work", mode=0o700)
    return "/tmp/work"


def map_to_root(uid: int, gid: int) -> None:
    """In a new user namespace: this uid/gid becomes 0 inside it."""
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                       ("/proc/self/gid_map", f"0 {gid} 1")):
        with open(path, "w") as f:
            f.write(text)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_all_capabilities() -> None:
    """No capability now or after any exec: securebits locked, bounding and ambient sets emptied,
    effective/permitted/inheritable cleared (in that order: the first two need CAP_SETPCAP)."""
    _check(libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, 0, 0, 0), "securebits")
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability this kernel knows
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    _check(libc.capset(ctypes.byref(header), data), "capset")


def set_limits(lim: dict, nproc: bool = True) -> None:
    """The run's rlimits. The supervisor gets them all but RLIMIT_NPROC (which, without root,
    counts the caller's own processes and could stop the supervisor's one fork)."""
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"], lim["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))


def main() -> None:
    # the supervisor dies with the host process (a SIGKILLed trainer leaves no run behind:
    # its child, PID 1 of the pid namespace, has the same death signal on the supervisor)
    cfg = json.loads(sys.argv[1])
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if cfg.get("host") is not None and os.getppid() != cfg["host"]:
        os._exit(1)  # the host died before the death signal was set
    source = sys.stdin.buffer.read()
    uid, workdir = cfg["uid"], cfg.get("workdir")
    isolated = False
    userns = cfg.get("userns") is not None  # not root: namespaces under a user namespace
    in_userns = False
    if cfg["namespaces"]:
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        try:
            if userns:
                _check(libc.unshare(flags | CLONE_NEWUSER), "unshare (user namespace)")
                in_userns = True  # from here on its capabilities are dropped before the code runs
                map_to_root(*cfg["userns"])
            else:
                _check(libc.unshare(flags), "unshare")
            workdir = confine_filesystem(cfg["keep"])
            isolated = True
        except OSError as e:
            print(f"R1LAB_SANDBOX_DEGRADED {e}", file=sys.stderr, flush=True)
    set_limits(cfg["limits"], nproc=False)  # the supervisor too runs under the memory cap
    pid = os.fork()  # the child is PID 1 of the new pid namespace: when it exits, all of it dies
    if pid:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    if isolated:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if uid is not None:
        os.chown(workdir, uid, uid)
    set_limits(cfg["limits"])
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif in_userns:
        drop_all_capabilities()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")  # after setuid
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(HOME=workdir, TMPDIR=workdir, PATH="/usr/local/bin:/usr/bin:/bin")
    os.environ.update(LANG="C.UTF-8", PYTHONDONTWRITEBYTECODE="1")
    os.closerange(3, 65536)
    sys.argv = ["main.py"]
    code = compile(source, "main.py", "exec")
    del cfg, source
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
