"""Which isolation the workers get, and the command line that starts one worker.

Modes, strongest first:
  namespaces  root + bubblewrap: the worker runs in its own PID/network/IPC/UTS namespaces on a
              read-only root that holds only /usr and the Python installation; every execution gets
              a fresh PID + IPC namespace with its own /proc, an unprivileged uid, and /tmp and
              /dev/shm that no earlier execution touched (per-worker tmpfs, replaced after a
              program wrote there; see ``worker``).
  userns      non-root + bubblewrap: the same worker namespaces and read-only root through an
              unprivileged user namespace; each execution again gets fresh PID/mount/IPC
              namespaces (through one more fork) and drops every capability, but all programs
              share the caller's uid (so one RLIMIT_NPROC count across workers).
  rlimits     no bubblewrap: rlimits, a new session, and as root an unprivileged uid per
              worker (refused, rather than run as root, when that uid cannot read the
              interpreter: pass ``python=`` another one); leftovers are killed by uid (root) or
              as orphans of the worker (non-root). No filesystem or network isolation.

Whatever the mode, a program never runs as uid 0 and never sees an expected output.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import threading

log = logging.getLogger("sandbox")

MODES = ("namespaces", "userns", "rlimits")
WORKER_DIR = "/sandbox_worker"
PROC_HOLDER = "/sandbox_proc"   # the same as worker.PROC_HOLDER
PROC_BATCH = 64                 # children's /proc mounts a worker drops with one unmount
_BOOT = "import sys; sys.path.insert(0, {dir!r}); import worker; worker.main()"
_announced: set[str] = set()
_announce_lock = threading.Lock()


def announce(mode: str, detail: str = "") -> None:
    """Log once per process which isolation is in force (a warning when it is weak)."""
    with _announce_lock:
        if mode in _announced:
            return
        _announced.add(mode)
    msg = f"sandbox isolation in force: {mode}" + (f" ({detail})" if detail else "")
    if mode == "namespaces":
        log.info(msg)
    else:
        log.warning(msg + "; programs are less isolated than in 'namespaces' mode")


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def default_mode() -> str:
    if sys.platform != "linux" or bwrap_path() is None:
        return "rlimits"
    return "namespaces" if os.geteuid() == 0 else "userns"


_info_cache: dict[str, tuple[str, str, tuple[str, ...], str]] = {}
_info_lock = threading.Lock()
_QUERY = ("import json, sys, py_compile\n"
          "for f in sys.argv[1:]:\n"
          "    py_compile.compile(f, doraise=True)\n"
          "print(json.dumps([sys.prefix, sys.base_prefix, sys.path]))\n")
WORKER_FILES = ("worker.py", "protocol.py")


def _interpreter_info(python: str) -> tuple[str, str, tuple[str, ...], str]:
    """Asked once per interpreter: its sys.prefix and sys.base_prefix, the site-packages
    directories on the sys.path its programs would have without ``-S``, and a private
    directory with the worker's modules and their bytecode compiled by that interpreter (so
    that a worker imports them instead of compiling them: a compile leaves megabytes of heap
    behind, which every fork would copy)."""
    with _info_lock:
        if python not in _info_cache:
            import json
            import subprocess
            import tempfile
            here = os.path.dirname(os.path.abspath(__file__))
            _sweep_worker_dirs(tempfile.gettempdir())
            wdir = tempfile.mkdtemp(prefix=f"{_WDIR_PREFIX}{os.getpid()}-")
            atexit.register(shutil.rmtree, wdir, True)
            for name in WORKER_FILES:
                shutil.copyfile(os.path.join(here, name), os.path.join(wdir, name))
            what = f"python {python!r} cannot prepare a sandbox worker (Python >= 3.11 needed)"
            try:
                done = subprocess.run([python, "-s", "-P", "-c", _QUERY] +
                                      [os.path.join(wdir, n) for n in WORKER_FILES],
                                      capture_output=True, text=True, timeout=60,
                                      env=worker_env(), check=False)
            except (OSError, subprocess.SubprocessError) as e:
                raise RuntimeError(f"{what}: {e}") from None
            try:
                prefix, base, path = json.loads(done.stdout)
            except ValueError:
                err = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                raise RuntimeError(f"{what}: {err}") from None
            site = tuple(p for p in path if os.path.basename(p.rstrip("/")) in
                         ("site-packages", "dist-packages") and os.path.isdir(p))
            _info_cache[python] = (prefix, base, site, wdir)
        return _info_cache[python]


_WDIR_PREFIX = "cure-sandbox-worker-"


def _sweep_worker_dirs(parent: str) -> None:
    """Remove the worker directories of processes that died without cleaning up."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name[len(_WDIR_PREFIX):].split("-")[0]
        if name.startswith(_WDIR_PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _prefixes(python: str) -> tuple[str, str]:
    """sys.prefix and sys.base_prefix of an interpreter."""
    prefix, base, _, _ = _interpreter_info(python)
    return prefix, base


def site_packages(python: str | None = None) -> list[str]:
    """The site-packages directories that ``site`` puts on sys.path for ``python`` (default:
    this interpreter). Workers run with ``-S`` (no site, no .pth imports: a smaller heap to
    fork) and hand these to programs, so that installed packages stay importable."""
    return list(_interpreter_info(python or sys.executable)[2])


# Each worker mounts its own tmpfs on /tmp, which hides an interpreter or venv living under /tmp
# (a CI checkout, say) from the programs. Such roots are also bound here, outside /tmp.
TMP_MIRROR = "/run/cure-sandbox-tmp"


def program_path(path: str) -> str:
    """Where a host path of the interpreter's installation is seen by programs in the
    namespace sandbox: the path itself, or its mirror when it lies under /tmp."""
    if path == "/tmp" or path.startswith("/tmp/"):
        return TMP_MIRROR + path[len("/tmp"):]
    return path


def _python_roots(python: str) -> list[str]:
    """Directories the interpreter needs: its installation, the venv, their site-packages."""
    prefix, base = _prefixes(python)
    roots = {os.path.realpath(base), os.path.realpath(prefix), prefix}
    exe = os.path.realpath(python)
    roots.add(os.path.dirname(os.path.dirname(exe)))
    out = []
    for r in sorted(roots, key=len):
        if r.startswith("/usr") or not os.path.isdir(r):
            continue
        if any(r == o or r.startswith(o + "/") for o in out):
            continue
        out.append(r)
    return out


def _root_entries() -> list[str]:
    """bwrap arguments that mirror the host's /usr layout (merged-/usr symlinks or binds)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/alternatives"):
        args += ["--ro-bind-try", f, f]
    return args


def worker_env() -> dict[str, str]:
    """A clean environment; a fixed hash seed keeps set/dict order the same in every worker."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": "/tmp", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8"}


def worker_command(mode: str, config_json: str, python: str | None = None) -> list[str]:
    """argv that starts one worker in ``mode``; programs run under ``python`` (default: the
    interpreter running this code)."""
    python = python or sys.executable
    wdir = _interpreter_info(python)[3]
    py = [python, "-S", "-s", "-P", "-B", "-c"]   # -S: see site_packages()
    if mode == "rlimits":
        return py + [_BOOT.format(dir=wdir), config_json]
    bw = bwrap_path()
    if bw is None:
        raise RuntimeError("bubblewrap (bwrap) is not installed")
    args = [bw, "--die-with-parent", "--new-session",
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox"]
    if mode == "namespaces":
        # Root: no user namespace, so children can drop to real unprivileged uids; the worker
        # keeps the capabilities it needs to create per-execution namespaces and drop privileges.
        for cap in ("CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"):
            args += ["--cap-add", cap]
    elif mode == "userns":
        # CAP_SYS_ADMIN inside the new user namespace only: to give each execution its own
        # PID/mount/IPC namespaces; programs drop every capability before they start.
        args += ["--unshare-user", "--cap-add", "CAP_SYS_ADMIN"]
    else:
        raise ValueError(f"unknown isolation mode {mode!r}; expected one of {MODES}")
    args += _root_entries()
    # The private /tmp first: an interpreter or venv that lives under /tmp (a CI checkout, say)
    # is bound on top of it below, instead of being hidden by it.
    args += ["--tmpfs", "/tmp"]
    parents: set[str] = set()
    for root in _python_roots(python):
        for dest in {root, program_path(root)}:
            args += ["--ro-bind", root, dest]
            parent = os.path.dirname(dest)
            while parent != "/":
                parents.add(parent)
                parent = os.path.dirname(parent)
    # bwrap copies the modes of host parents (e.g. /root is 0700): open them for the
    # unprivileged program, they are empty directories in the sandbox.
    for parent in sorted(parents):
        args += ["--chmod", "0755", parent]
    args += ["--ro-bind", wdir, WORKER_DIR,
             # /proc is a symlink to a proc mount one level down: the worker can then drop
             # the children's /proc mounts in batches (see worker.PROC_HOLDER)
             "--perms", "0755", "--dir", PROC_HOLDER,
             "--proc", PROC_HOLDER + "/cur", "--symlink", PROC_HOLDER + "/cur", "/proc",
             "--dev", "/dev", "--dir", "/dev/shm",
             "--remount-ro", "/", "--chdir", "/tmp"]
    return args + ["--"] + py + [_BOOT.format(dir=WORKER_DIR), config_json]
