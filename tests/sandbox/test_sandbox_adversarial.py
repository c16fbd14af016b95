"""The adversarial suite of reference/sandbox.md: each hostile program gets its verdict, the
pool answers correctly afterwards, and no process of the sandbox is left running."""
from __future__ import annotations

import os
import secrets
import socket
import time

import pytest

from sandbox import IsolationUnavailable, Limits, Sandbox, TestCase, Verdict
from sandbox.cgroups import WorkerCgroup
from sandbox.procs import descendants, process_table

pytestmark = pytest.mark.timeout(120)

TL = Verdict.TIME_LIMIT
TL_S = 0.25   # CPU limit for the programs expected to time out (others get a loaded-machine 2 s)


def _limit(verdict: Verdict) -> float | None:
    return TL_S if verdict == TL else None

# name -> (program, stdin, expected output, verdict)
PROGRAMS: dict[str, tuple[str, str, str, Verdict]] = {
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                  "        pass\n", "", "", TL),
    "thread_bomb": ("import threading, time\nwhile True:\n    try:\n        threading.Thread("
                    "target=time.sleep, args=(100,), daemon=True).start()\n"
                    "    except Exception:\n        pass\n", "", "", TL),
    "infinite_loop": ("while True:\n    pass\n", "", "", TL),
    "sleep": ("import time\ntime.sleep(100)\n", "", "", TL),
    "print_then_loop": ("print(42, flush=True)\nwhile True:\n    pass\n", "", "42", TL),
    "sigterm_ignored": ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "while True:\n    time.sleep(0.01)\n", "", "", TL),
    "stack_overflow": ("import sys\nsys.setrecursionlimit(10**9)\nclass A:\n"
                       "    def __getattr__(self, k):\n        return getattr(self, k)\nA().x\n",
                       "", "", Verdict.RUNTIME_ERROR),
    "alloc_8gb": ("x = bytearray(8 << 30)\nprint(len(x))\n", "", "", Verdict.MEMORY_LIMIT),
    "endless_stdout": ("import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n", "", "",
                       Verdict.OUTPUT_LIMIT),
    "endless_stderr": ("import sys\nwhile True:\n    sys.stderr.write('x' * 4096)\n", "", "",
                       Verdict.OUTPUT_LIMIT),
    "kill_parent": ("import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError:\n    pass\n"
                    "print(42)\n", "", "42", Verdict.OK),
    "kill_everything": ("import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"
                        "print(42)\n", "", "42", Verdict.OK),
    "setsid_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                      "    if os.fork() == 0:\n        time.sleep(100)\n    os._exit(0)\n"
                      "print(42)\n", "", "42", Verdict.OK),
    "raise_own_limits": ("import resource\nfor r in (resource.RLIMIT_AS, resource.RLIMIT_CPU, "
                         "resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE):\n    try:\n"
                         "        resource.setrlimit(r, (resource.RLIM_INFINITY, "
                         "resource.RLIM_INFINITY))\n        print('raised')\n"
                         "    except (ValueError, OSError):\n        print('denied')\n"
                         "x = bytearray(4 << 30)\n", "", "", Verdict.MEMORY_LIMIT),
    "ctypes_null_dereference": ("import ctypes\nctypes.string_at(0)\n", "", "",
                                Verdict.RUNTIME_ERROR),
    "exit_without_flush": ("import os\nprint(42)\nos._exit(0)\n", "", "42",
                           Verdict.WRONG_ANSWER),   # buffered output is lost, as in python3
    "close_stdout": ("import sys\nprint(42)\nsys.stdout.close()\n", "", "42", Verdict.OK),
    "shell_out": ("import subprocess\nsubprocess.Popen(['sleep', '100'])\n"
                  "print(subprocess.run(['sh', '-c', 'echo 42'], capture_output=True, "
                  "text=True).stdout.strip())\n", "", "42", Verdict.OK),
    "syntax_error": ("def f(:\n    return 1\n", "", "", Verdict.COMPILE_ERROR),
    "stdin_10mb": ("import sys\nprint(len(sys.stdin.buffer.read()))\n", "x" * (10 << 20),
                   str(10 << 20), Verdict.OK),
    "deep_recursion_in_thread": ("import sys, threading\nsys.setrecursionlimit(300000)\n"
                                 "threading.stack_size(1 << 27)\ndef f(n):\n"
                                 "    return 0 if n == 0 else 1 + f(n - 1)\n"
                                 "t = threading.Thread(target=lambda: print(f(200000)))\n"
                                 "t.start()\nt.join()\n", "", "200000", Verdict.OK),
    "output_over_128kb": ("print('\\n'.join(map(str, range(40000))))\n", "",
                          "\n".join(map(str, range(40000))), Verdict.OK),
}


@pytest.fixture(scope="module", params=["auto", "rlimits"])
def sb(request):
    """The strongest isolation available, and the rlimits-only fallback (no bubblewrap)."""
    limits = Limits(time_s=2.0, wall_factor=2.0, memory_mb=512, output_mb=4)
    try:
        # e.g. root with our interpreter under /root (0700): the rlimits fallback then runs the
        # programs under the system interpreter, which an unprivileged uid can read
        box = Sandbox(workers=2, limits=limits, isolation=request.param)
    except IsolationUnavailable as e:
        pytest.skip(f"isolation {request.param!r} refused on this host: {e}")
    with box:
        yield box


def _settled_descendants(expected: set[int], timeout: float = 3.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        now = descendants()
        if now == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def _assert_clean_after(sb: Sandbox, before: set[int]) -> None:
    ex = sb.run("print(int(input()) * 3)", "14\n", expected="42")
    assert ex.verdict == Verdict.OK, f"pool unhealthy afterwards: {ex}"
    res = sb.run_matrix(["print(int(input()) + 1)"] * 2, [TestCase(str(i), str(i + 1))
                                                          for i in range(3)])
    assert res.passed.all(), res.verdicts
    after = _settled_descendants(before)
    assert after == before, f"leftover processes: {after - before}, gone: {before - after}"
    uids = sb.program_uids()
    stray = [pid for pid, (_, uid) in process_table().items() if uid in uids]
    assert not stray, f"processes still running as program uids {uids}: {stray}"


def _unseparated(sb: Sandbox) -> bool:
    """The rlimits fallback without root: programs run as the caller's own uid."""
    return sb.isolation == "rlimits" and not sb.program_uids()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_adversarial_program(sb, name):
    program, stdin, expected, verdict = PROGRAMS[name]
    if name in ("kill_parent", "kill_everything") and _unseparated(sb):
        pytest.skip("rlimits fallback without root: a program can signal its caller's processes")
    before = descendants()
    starts = sb.stats.worker_starts
    ex = sb.run(program, stdin, expected=expected, time_limit_s=_limit(verdict))
    assert ex.verdict == verdict, ex
    if verdict == TL:
        assert ex.wall_s < 5.0
    _assert_clean_after(sb, before)
    assert sb.stats.worker_starts == starts, "a worker had to be restarted"


def test_reading_host_files(sb, tmp_path):
    if _unseparated(sb):
        pytest.skip("rlimits fallback without root: programs can read what the caller can")
    secret = tmp_path / "secret.txt"
    token = secrets.token_hex(16)
    secret.write_text(token)
    secret.chmod(0o644)
    prog = ("import sys\nfound = []\nfor p in sys.stdin.read().split():\n    try:\n"
            "        found.append(open(p).read()[:100])\n    except OSError:\n        pass\n"
            "print(' '.join(found) or 'safe')\n")
    paths = f"{secret} /etc/shadow /root/.bashrc {os.path.abspath(__file__)}"
    before = descendants()
    ex = sb.run(prog, paths, expected="safe")
    assert token not in ex.stdout
    if sb.isolation != "rlimits":  # with namespaces no host file is readable at all
        assert ex.verdict == Verdict.OK, ex
    _assert_clean_after(sb, before)


def test_writing_to_root_and_dev_shm(sb):
    tag = "sbx_probe_" + secrets.token_hex(6)
    targets = [f"/{tag}", f"/usr/{tag}", f"/dev/shm/{tag}", f"/tmp/{tag}"]
    prog = ("import sys\nfor p in sys.stdin.read().split():\n    try:\n"
            "        open(p, 'w').write('x')\n    except OSError:\n        pass\nprint('done')\n")
    before = descendants()
    try:
        ex = sb.run(prog, " ".join(targets), expected="done")
        assert ex.verdict == Verdict.OK, ex
        assert not os.path.exists(targets[0]) and not os.path.exists(targets[1])
        if sb.isolation != "rlimits":   # private /tmp and /dev/shm, gone after the run
            assert not os.path.exists(targets[2]) and not os.path.exists(targets[3])
    finally:
        for t in targets:
            if os.path.exists(t):
                os.unlink(t)
    _assert_clean_after(sb, before)


@pytest.mark.parametrize("sb", ["auto"], indirect=True)  # the rlimits fallback has no network isolation
def test_network_internet_and_host_loopback(sb):
    if sb.isolation == "rlimits":
        pytest.skip("bubblewrap is missing, so there is no network isolation to test (make setup installs it)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    prog = ("import socket, sys\nport = int(input())\n"
            "for addr in [('127.0.0.1', port), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
            "    s = socket.socket()\n    s.settimeout(0.5)\n    try:\n        s.connect(addr)\n"
            "        print('connected')\n    except OSError:\n        print('blocked')\n")
    before = descendants()
    try:
        ex = sb.run(prog, str(port), expected="blocked\nblocked\nblocked")
        assert ex.verdict == Verdict.OK, ex
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    _assert_clean_after(sb, before)


def test_reading_expected_output_from_grader_memory(sb):
    """The expected output never leaves the orchestrator: a program that searches every object,
    frame, environment and command line it can reach finds nothing."""
    token = secrets.token_hex(16)
    prog = r'''
import gc, os, re, sys
pat = re.compile(r"[0-9a-f]{32}")
found = set()
def scan(v):
    if isinstance(v, bytes):
        v = v.decode("latin-1")
    if isinstance(v, str):
        found.update(pat.findall(v))
for o in gc.get_objects():
    try:
        vals = o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ()
        for v in vals:
            scan(v)
    except Exception:
        pass
f = sys._getframe()
while f is not None:
    for v in list(f.f_locals.values()):
        scan(v); scan(repr(v)[:100000])
    f = f.f_back
for pid in os.listdir("/proc"):
    for part in ("cmdline", "environ"):
        try:
            scan(open(f"/proc/{pid}/{part}", "rb").read())
        except OSError:
            pass
try:
    scan(open(f"/proc/{os.getppid()}/mem", "rb").read(1 << 20))
except (OSError, ValueError):
    pass
print("\n".join(sorted(found)) or "nothing")
'''
    before = descendants()
    ex = sb.run(prog, "", expected=token)
    assert ex.verdict == Verdict.WRONG_ANSWER and token not in ex.stdout, ex
    res = sb.run_matrix([prog], [TestCase("", token), TestCase("1", token)])
    assert not res.passed.any() and set(res.verdicts.ravel()) == {Verdict.WRONG_ANSWER}
    _assert_clean_after(sb, before)


def test_every_listed_program_in_one_matrix(sb):
    """All hostile programs at once over the pool: verdicts unchanged, nothing left behind."""
    before = descendants()
    names = [n for n in sorted(PROGRAMS) if n != "stdin_10mb" and not (
        _unseparated(sb) and n in ("kill_parent", "kill_everything"))]
    if not sb.program_uids():
        # Programs of all workers share the caller's uid (userns / non-root fallback), hence one
        # RLIMIT_NPROC count: a bomb running beside them can starve their forks. Documented.
        names = [n for n in names if n not in ("fork_bomb", "thread_bomb")]
    progs = [PROGRAMS[n][0] for n in names]
    res = sb.run_matrices([([p], [TestCase(PROGRAMS[n][1], PROGRAMS[n][2])],
                            _limit(PROGRAMS[n][3])) for n, p in zip(names, progs)])
    got = {n: r.verdicts[0, 0] for n, r in zip(names, res)}
    assert got == {n: PROGRAMS[n][3] for n in names}
    _assert_clean_after(sb, before)


@pytest.mark.parametrize("sb", ["auto"], indirect=True)  # IPC namespaces need bubblewrap
def test_sysv_ipc_does_not_outlive_an_execution(sb):
    """A SysV shared-memory segment left by one program is not visible to the next one."""
    if sb.isolation != "namespaces":
        pytest.skip(f"per-execution IPC namespaces need bubblewrap as root (running {sb.isolation!r})")
    prog = ("import ctypes\nlibc = ctypes.CDLL(None)\nkey = 0x5B0C\n"
            "found = libc.shmget(key, 4096, 0)\ncreated = libc.shmget(key, 4096, 0o1666)\n"
            "print('found' if found >= 0 else 'absent', 'created' if created >= 0 else 'failed')\n")
    before = descendants()
    outs = [sb.run(prog).stdout.strip() for _ in range(4)]
    assert outs == ["absent created"] * 4
    _assert_clean_after(sb, before)


def test_memory_of_all_processes_is_bounded_by_the_worker_cgroup():
    """RLIMIT_AS is per process: four processes of 200 MB each fit it, but not the cgroup.
    (A generous time limit: on a loaded machine the children once took longer than 4 s of wall
    clock to touch their pages, and the wall-clock kill came before the cgroup's.)"""
    limits = Limits(time_s=10.0, memory_mb=256, tmp_mb=8, output_mb=1, input_mb=1, processes=8)
    with Sandbox(workers=1, limits=limits) as box, Sandbox(workers=1, limits=limits) as other:
        assert box.memory_cgroups == other.memory_cgroups   # two pools get distinct cgroups
        probe = WorkerCgroup.create(f"cure-sandbox-{os.getpid()}-probe", 64 << 20, 8)
        if probe is not None:
            probe.remove()
            assert box.memory_cgroups, "cgroups work on this host but the pool has none"
        if not box.memory_cgroups:
            pytest.skip("memory cgroups unavailable (not root, or no writable memory controller)")
        dirs = [d for h in box._handles if h is not None for d in h.cgroup.dirs]
        prog = ("import os, time\nkids = []\nfor i in range(4):\n    pid = os.fork()\n"
                "    if pid == 0:\n        x = bytearray(200 << 20)\n"
                "        for j in range(0, len(x), 4096):\n            x[j] = 1\n"
                "        time.sleep(1)\n        os._exit(0)\n    kids.append(pid)\n"
                "codes = [os.waitpid(k, 0)[1] for k in kids]\nprint(codes)\n"
                "raise SystemExit(1 if any(codes) else 0)\n")
        before = descendants()
        ex = box.run(prog)
        assert ex.verdict == Verdict.MEMORY_LIMIT, ex
        assert "OOM" in ex.detail
        one = ("x = bytearray(150 << 20)\nfor j in range(0, len(x), 4096):\n    x[j] = 1\n"
               "print(len(x))\n")
        assert box.run(one, expected=str(150 << 20)).verdict == Verdict.OK
        assert _settled_descendants(before) == before
    assert not any(os.path.exists(d) for d in dirs), "cgroups left behind"


# ---------------------------------------------------------------- one worker, run after run
# Each execution has a fresh PID and IPC namespace and its own /proc, while /tmp and /dev/shm
# are per-worker mounts made fresh whenever a program touched them: these tests run programs
# back to back on ONE worker and check that nothing of one run reaches the next.
@pytest.fixture(scope="module")
def one():
    with Sandbox(workers=1, limits=Limits(time_s=2.0, tmp_mb=4)) as box:
        if box.isolation != "namespaces":
            pytest.skip(f"per-execution namespaces need bubblewrap as root (running "
                        f"{box.isolation!r})")
        yield box


_LEAVE_FILES = ("import os, sys\ntag = sys.stdin.read()\n"
                "for d in ('/tmp', '/dev/shm'):\n"
                "    os.makedirs(f'{d}/sub_{tag}/deeper', exist_ok=True)\n"
                "    open(f'{d}/{tag}', 'w').write(tag)\n"
                "    open(f'{d}/sub_{tag}/deeper/f', 'w').write(tag)\n"
                "print(sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/shm')))\n")
_LOOK = ("import os\nst = os.statvfs('/tmp')\n"
         "print(sorted(os.listdir('/tmp')), sorted(os.listdir('/dev/shm')), "
         "st.f_bfree == st.f_blocks)\n")


def test_files_in_tmp_and_dev_shm_do_not_reach_the_next_run(one):
    for k in range(3):
        tag = f"t{k}_{secrets.token_hex(4)}"
        ex = one.run(_LEAVE_FILES, tag)
        assert ex.verdict == Verdict.OK, ex
        assert ex.stdout == f"{sorted([tag, 'sub_' + tag])} {sorted([tag, 'sub_' + tag])}\n"
        after = one.run(_LOOK)
        assert after.stdout == "[] [] True\n", after
    # a file made and deleted again also leaves the next run a pristine tmpfs
    one.run("import os\nopen('/tmp/x', 'w').close()\nos.unlink('/tmp/x')\n"
            "os.mkdir('/dev/shm/d')\nos.rmdir('/dev/shm/d')\n")
    assert one.run(_LOOK).stdout == "[] [] True\n"


def test_tmp_size_limit_holds_and_a_full_tmp_is_not_inherited(one):
    prog = ("import os\ntry:\n    with open('/tmp/big', 'wb') as f:\n"
            "        for _ in range(16):\n            f.write(b'x' * (1 << 20))\n"
            "    print('wrote 16 MB')\nexcept OSError as e:\n    print('full')\n")
    assert one.run(prog).stdout == "full\n"        # Limits.tmp_mb=4
    assert one.run(_LOOK).stdout == "[] [] True\n"


def test_background_process_does_not_survive_into_the_next_run(one):
    """A setsid double-forked daemon of one run would, if alive, write into /tmp and show up
    in /proc; the next run sees neither, and the host sees no process of the program uid."""
    daemon = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        for i in range(200):\n            time.sleep(0.01)\n"
              "            open(f'/tmp/alive_{i}', 'w').close()\n"
              "    os._exit(0)\ntime.sleep(0.05)\nprint(sorted(os.listdir('/proc')).count('1'))\n")
    look = ("import os, time\ntime.sleep(0.1)\n"
            "print(sorted(p for p in os.listdir('/proc') if p.isdigit()), os.listdir('/tmp'))\n")
    before = descendants()
    for _ in range(2):
        assert one.run(daemon).verdict == Verdict.OK
        ex = one.run(look)
        assert ex.stdout == "['1'] []\n", ex
    _assert_clean_after(one, before)


def test_proc_shows_only_the_processes_of_this_run(one):
    """/proc is the execution's own: pid 1 is the program, its children are 2, 3...; nothing
    of the worker or of earlier runs. The /proc mounts of earlier runs (hidden under this
    one's) are dropped in batches: their number stays bounded."""
    prog = ("import os\nkid = os.fork()\nif kid == 0:\n    import time\n    time.sleep(5)\n"
            "    os._exit(0)\n"
            "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "cmd = open('/proc/1/cmdline', 'rb').read().split(b'\\0')[0].decode()\n"
            "procs = sum(1 for line in open('/proc/self/mountinfo') if ' - proc ' in line)\n"
            "print(os.getpid(), kid, pids, os.path.basename(cmd), procs)\n"
            "os.kill(kid, 9)\n")
    from sandbox.isolation import PROC_BATCH
    outs = [one.run(prog).stdout.split() for _ in range(PROC_BATCH + 20)]
    py = os.path.basename(one.python)
    assert {" ".join(o[:5]) for o in outs} == {f"1 2 [1, 2] {py}"}, outs[:3]
    mounts = [int(o[5]) for o in outs]
    assert max(mounts) <= PROC_BATCH + 8 and min(mounts[PROC_BATCH:]) < max(mounts), mounts


def test_posix_message_queues_do_not_outlive_a_run(one):
    prog = ("import ctypes, os\nrt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
            "rt.mq_open.restype = ctypes.c_int\n"
            "found = rt.mq_open(b'/sbx_probe', os.O_RDWR)\n"
            "made = rt.mq_open(b'/sbx_probe', os.O_RDWR | os.O_CREAT, 0o600, None)\n"
            "print('found' if found >= 0 else 'absent', 'made' if made >= 0 else 'refused')\n")
    outs = [one.run(prog).stdout for _ in range(3)]
    assert all(o.startswith("absent ") for o in outs), outs


def test_fallback_with_a_mount_namespace_per_run_isolates_too(monkeypatch):
    """Where the per-worker mounts cannot be made, each run gets its own mount namespace
    (private /tmp, /dev/shm and /proc) instead: the same guarantees."""
    orig = Sandbox._worker_config
    monkeypatch.setattr(Sandbox, "_worker_config",
                        lambda self, i: dict(orig(self, i), per_worker_mounts=False))
    with Sandbox(workers=1, limits=Limits(time_s=2.0, tmp_mb=4)) as box:
        if box.isolation != "namespaces":
            pytest.skip(f"per-execution namespaces need bubblewrap as root (running "
                        f"{box.isolation!r})")
        assert not box._handles[0].hello["shared_mounts"]
        tag = secrets.token_hex(4)
        assert box.run(_LEAVE_FILES, tag).verdict == Verdict.OK
        assert box.run(_LOOK).stdout == "[] [] True\n"
        ex = box.run("import os\nprint(os.getpid(), sorted(p for p in os.listdir('/proc') "
                     "if p.isdigit()))\n")
        assert ex.stdout == "1 ['1']\n", ex
