"""Hostile code, one attack per test. After each: the host is unchanged, this process is alive,
the run ended within its limit, and no process of the run's uid is left."""

import os
import socket
import time
from pathlib import Path

import pytest

from r1lab.rewards.sandbox import _UID_BASE, Limits, run_python, uid_processes

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX sandbox")
FAST = Limits(wall_s=3.0, cpu_s=3, memory_bytes=512 << 20, processes=16, output_bytes=64 << 10)


def sandbox_processes() -> list[int]:
    """Live processes of any sandbox uid (zombies are dead, only waiting for their parent)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and d.stat().st_uid >= _UID_BASE:
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                pids += [int(d.name)] if state not in "ZX" else []
        except OSError:
            pass
    return pids


def contained(source: str, limits: Limits = FAST):
    start = time.monotonic()
    result = run_python(source, limits)
    elapsed = time.monotonic() - start
    assert elapsed < limits.wall_s + 2.0, elapsed
    assert sandbox_processes() == []
    return result


def test_plain_run():
    r = contained("print(6 * 7)")
    assert (r.returncode, r.stdout, r.timed_out) == (0, b"42\n", False)


def test_infinite_loop_is_cut_by_the_wall_clock():
    r = contained("while True: pass", Limits(wall_s=1.0, cpu_s=5))
    assert r.timed_out and r.wall_s < 2.5


def test_cpu_limit_kills_a_busy_loop():
    r = contained("while True: pass", Limits(wall_s=5.0, cpu_s=1))
    assert not r.timed_out and r.returncode != 0


def test_fork_bomb_is_contained():
    r = contained(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        Limits(wall_s=2.0, cpu_s=2, processes=16),
    )
    assert r.timed_out or r.returncode != 0
    assert len(os.listdir("/proc")) > 0  # the host can still fork and list processes


def test_memory_bomb_gets_memory_error():
    r = contained("x = bytearray(4 << 30)", Limits(wall_s=3.0, memory_bytes=256 << 20))
    assert b"MemoryError" in r.stderr


def test_huge_output_is_capped():
    r = contained(
        "import sys\nwhile True: sys.stdout.write('x' * 65536)",
        Limits(wall_s=1.0, output_bytes=4096),
    )
    assert r.truncated and len(r.stdout) == 4096


def test_writes_outside_the_temp_dir_and_into_home_do_not_reach_the_host(tmp_path):
    target = tmp_path / "pwned"
    home_probe = Path.home() / ".r1lab_sandbox_probe"
    r = contained(
        f"""
import os
for p in [{str(target)!r}, {str(home_probe)!r}, '/tmp/r1lab_pwned', '/var/tmp/r1lab_pwned',
          '/dev/shm/r1lab_pwned', os.path.expanduser('~/.bashrc'), {str(Path.cwd() / "pwned")!r}]:
    try:
        open(p, 'w').write('x'); print('wrote', p)
    except OSError as e:
        print('blocked', p)
"""
    )
    assert r.returncode == 0
    for p in [target, home_probe, Path("/tmp/r1lab_pwned"), Path("/var/tmp/r1lab_pwned"),
              Path("/dev/shm/r1lab_pwned"), Path.cwd() / "pwned"]:  # fmt: skip
        assert not p.exists(), p
    for p in [target, home_probe, Path.cwd() / "pwned"]:
        assert f"blocked {p}".encode() in r.stdout
    if r.isolated:  # /tmp, /var/tmp, /dev/shm and HOME were private tmpfs: the writes landed there
        assert b"wrote /tmp/work/.bashrc" in r.stdout


def test_reading_host_secrets_fails(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    secret.chmod(0o600)
    r = contained(
        f"""
for p in [{str(secret)!r}, '/etc/shadow', '/root/.bash_history', '/proc/1/environ']:
    try:
        print(open(p).read()[:100])
    except OSError:
        print('denied')
"""
    )
    assert b"TOPSECRET" not in r.stdout and b"root:" not in r.stdout
    assert r.stdout.count(b"denied") >= 3


def test_network_is_unreachable_even_on_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        r = contained(
            f"""
import socket
for host in ['127.0.0.1', '8.8.8.8']:
    try:
        socket.create_connection((host, {port} if host == '127.0.0.1' else 53), timeout=1)
        print('connected', host)
    except OSError as e:
        print('blocked', host)
"""
        )
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    if not r.isolated:
        pytest.skip("no network namespace on this host (the sandbox warned)")
    assert r.stdout == b"blocked 127.0.0.1\nblocked 8.8.8.8\n"


def test_spawned_shell_and_its_children_die_with_the_run(tmp_path):
    marker = tmp_path / "shell_was_here"
    r = contained(
        f"import subprocess\nsubprocess.Popen('sleep 30 & touch {marker}; sleep 30', shell=True)\n"
        "print('spawned')"
    )
    assert r.stdout == b"spawned\n"
    assert not marker.exists()


def test_killing_the_parent_or_its_group_hurts_nobody_outside():
    r = contained(
        "import os, signal\n"
        "for pid in (os.getppid(), 0, -1, os.getpgid(0)):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
        "try:\n    os.killpg(os.getpgid(0), signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "print('still here')"
    )
    assert r.returncode is not None  # we were not killed: this line runs
    assert os.getpid() > 0


def test_ignoring_sigterm_does_not_help():
    r = contained(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)",
        Limits(wall_s=1.0),
    )
    assert r.timed_out


def test_threads_and_daemons_that_outlive_main_are_killed():
    r = contained(
        "import os, threading, time\n"
        "threading.Thread(target=lambda: time.sleep(60)).start()\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
        "print('main done')",
        Limits(wall_s=1.5),
    )
    assert r.stdout == b"main done\n"


def test_without_namespaces_it_warns_loudly_and_still_contains_a_fork_bomb(capsys):
    from r1lab.rewards import sandbox

    sandbox._warned.discard("ns")
    r = run_python("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
                   Limits(wall_s=1.0, cpu_s=2, processes=8), namespaces=False)  # fmt: skip
    assert r.isolated is False and r.timed_out
    assert "namespaces unavailable" in capsys.readouterr().err
    assert sandbox_processes() == []


# ------------------------------------------------------------------ without root (a workstation)
NOBODY = 65534
_CALLER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("r1sandbox", sys.argv[1])
sb = importlib.util.module_from_spec(spec)
sys.modules["r1sandbox"] = sb
spec.loader.exec_module(sb)  # the sandbox module is standard library only
r = sb.run_python(sys.stdin.read(), sb.Limits(wall_s=float(sys.argv[2]), cpu_s=3, memory_bytes=512 << 20,
                                              processes=16, output_bytes=64 << 10))
print(json.dumps({"isolated": r.isolated, "timed_out": r.timed_out, "rc": r.returncode,
                  "out": r.stdout.decode(errors="replace"), "err": r.stderr.decode(errors="replace")}))
"""


@pytest.fixture
def as_nobody():
    """run_python(source) called by a process of uid/gid 65534, as on a workstation without root.
    Needs root here (to become that uid), user namespaces, and an interpreter and a copy of the
    sandbox module that uid can read."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    from r1lab.rewards import sandbox

    if os.geteuid() != 0:
        pytest.skip("needs root to run a caller as uid 65534")
    if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
        pytest.skip("user namespaces are disabled on this host")
    home = Path(tempfile.mkdtemp(prefix="r1lab-nobody-"))
    home.chmod(0o755)
    for name in ("sandbox.py", "_sandbox_init.py"):
        shutil.copy(Path(sandbox.__file__).with_name(name), home / name)
        (home / name).chmod(0o644)
    (home / "caller.py").write_text(_CALLER)
    (home / "caller.py").chmod(0o644)

    def run(args, **kw):
        return subprocess.run(args, user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                              capture_output=True, text=True, timeout=60, **kw)

    python = None
    for cand in (sys.executable, getattr(sys, "_base_executable", None), "/usr/bin/python3"):
        try:
            ok = cand and run([cand, "-c", "import sys; assert sys.version_info >= (3, 9)"])
        except (OSError, subprocess.SubprocessError):
            continue
        if ok and ok.returncode == 0:
            python = cand
            break
    if python is None:
        shutil.rmtree(home)
        pytest.skip("no Python interpreter that uid 65534 can execute")

    def call(source: str, wall_s: float = 5.0) -> dict:
        out = run([python, str(home / "caller.py"), str(home / "sandbox.py"), str(wall_s)], input=source)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.splitlines()[-1])

    yield call
    shutil.rmtree(home, ignore_errors=True)


def test_without_root_a_user_namespace_confines_the_run(as_nobody):
    """Write, network, namespace-escape and capability attacks from code run by a non-root caller."""
    target = Path(os.getcwd()) / f".r1lab-nobody-target-{os.getpid()}"
    target.mkdir(mode=0o777)
    target.chmod(0o777)  # the caller's uid may write here: only the read-only mount stops the code
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    try:
        r = as_nobody(f"""
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
print("pid", os.getpid())
print([l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm", "CapBnd"))])
for p in [{str(target / "pwned")!r}, "/tmp/in_private_tmp"]:
    try:
        open(p, "w").write("x"); print("wrote", p)
    except OSError as e:
        print("blocked", p)
try:
    socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=1); print("connected")
except OSError:
    print("network blocked")
print("umount", libc.umount2(b"/tmp", 2))
print("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
""")
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
        leaked = (target / "pwned").exists()
        (target / "pwned").unlink(missing_ok=True)
        target.rmdir()
    assert not leaked
    assert r["isolated"] and r["rc"] == 0, r
    assert r["out"].splitlines() == [
        "pid 1",  # PID 1 of its own pid namespace
        "['0000000000000000', '0000000000000000', '0000000000000000']",  # no capability at all
        f"blocked {target / 'pwned'}",  # the host file system is read-only
        "wrote /tmp/in_private_tmp",  # into a private tmpfs that vanishes with the run
        "network blocked",
        "umount -1",  # the mounts cannot be undone
        "mount -1",
    ], r
    assert not Path("/tmp/in_private_tmp").exists()


def test_without_root_a_fork_bomb_and_daemons_die_with_the_run(as_nobody):
    before = set(uid_processes(NOBODY))  # anything else of that uid on the host is not ours
    r = as_nobody("import os, time\n"
                  "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
                  "while True:\n    try: os.fork()\n    except OSError: pass", wall_s=1.5)
    assert r["isolated"] and r["timed_out"], r
    deadline = time.monotonic() + 3
    while set(uid_processes(NOBODY)) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(uid_processes(NOBODY)) - before == set()


# --- clean-up: no scratch left in the host's temp dir on any exit path; the supervisor capped ---

import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

from r1lab.rewards import sandbox as sandbox_mod  # noqa: E402

LITTER = (
    "import os\n"
    "open('in_cwd.txt', 'w').write('x')\n"
    "open(os.path.join(os.environ['TMPDIR'], 'in_tmp.txt'), 'w').write('x')\n"
    "os.makedirs('deep/er', exist_ok=True)\n"
    "if os.fork() == 0:\n    os.setsid()\n"  # a daemon that outlives its parent
    "while True: pass\n"
)


@pytest.fixture
def host_tmp(monkeypatch):
    """The host's temp dir, as tempfile sees it, is an empty folder of this test (in the real
    temp dir: a run without namespaces must be able to reach its scratch under its own uid)."""
    import shutil

    d = Path(tempfile.mkdtemp(prefix="r1lab-test-host-tmp-"))
    d.chmod(0o711)
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    monkeypatch.setattr(sandbox_mod, "_swept", set())
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "degraded"])
def test_a_timed_out_program_leaves_nothing_in_the_host_temp_dir(host_tmp, namespaces):
    r = run_python(LITTER, Limits(wall_s=1.0, cpu_s=5), namespaces=namespaces)
    assert r.timed_out
    assert list(host_tmp.iterdir()) == []
    assert sandbox_processes() == []


def test_a_reward_timeout_raised_into_the_run_still_cleans_up(host_tmp):
    from r1lab.rewards.compose import RewardComposer

    # the sandbox would wait 5 s; the reward watchdog raises RewardTimeout into it after 0.5 s
    composer = RewardComposer([{"name": "code", "kwargs": {"timeout_s": 5.0}}], timeout_s=0.5)
    start = time.monotonic()
    batch = composer(["```python\nwhile True: pass\n```"], [{"tests": ["assert f() == 1"]}])
    composer.close()
    assert batch.errors == 1 and time.monotonic() - start < 4.0
    assert list(host_tmp.iterdir()) == []
    assert sandbox_processes() == []


def test_a_killed_host_leaves_no_run_and_its_scratch_is_swept(host_tmp):
    host = subprocess.Popen([sys.executable, "-c",
        "import tempfile, sys; tempfile.tempdir = sys.argv[1]\n"
        "from r1lab.rewards.sandbox import run_python, Limits\n"
        "run_python('import time; time.sleep(60)', Limits(wall_s=60, cpu_s=60))", str(host_tmp)])  # fmt: skip
    deadline = time.monotonic() + 30
    while not sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(), "the sandboxed program never started"
    assert [p.name.split("-")[2] for p in host_tmp.iterdir()] == [str(host.pid)]
    host.kill()  # SIGKILL: no finally runs in the host
    host.wait()
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []  # the supervisor and the program died with their host
    assert run_python("print(1)").stdout == b"1\n"  # the next run sweeps the dead host's dir
    assert list(host_tmp.iterdir()) == []


def test_the_supervisor_runs_under_the_memory_cap():
    cap = 300 << 20
    seen: list[str] = []
    done = threading.Event()

    def watch():  # the supervisor's limits, as last seen while the program sleeps
        while not done.is_set():
            for d in Path("/proc").iterdir():
                try:
                    if d.name.isdigit() and "_sandbox_init.py" in (d / "cmdline").read_text() and \
                            int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        seen.append((d / "limits").read_text())
                except (OSError, ValueError, IndexError):
                    pass
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    run_python("import time; time.sleep(2)", Limits(wall_s=10, cpu_s=5, memory_bytes=cap))
    done.set()
    t.join()
    assert seen, "the supervisor was not found"
    line = next(x for x in seen[-1].splitlines() if x.startswith("Max address space"))
    assert line.split()[3] == str(cap)
