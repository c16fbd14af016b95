"""Sandbox worker: a pre-started process that forks one child per execution.

Started by the pool as ``python -S -s -P -B -c "import worker; worker.main()" '<json config>'``
(from a private copy of this file with its bytecode precompiled), usually inside bubblewrap; it
imports only the stdlib and ``protocol`` beside it. It never sees expected outputs: a request
carries a program and a stdin only.

Namespaces mode (root + bubblewrap; the worker already has its own mount, IPC, PID, network and
UTS namespaces from bubblewrap). Once per worker: private tmpfs /tmp and /dev/shm (sized, mode
1777), and a small "holder" tmpfs at PROC_HOLDER that /proc (a symlink) leads into. Per
execution:

  worker ──fork──> child: PID 1 of a fresh PID namespace (killing it kills everything it
                   started), in a fresh IPC namespace, with a /proc of that PID namespace
                   mounted at /proc (it sees its own processes only, numbered from 1)
  child: stdio onto memfds (stdin read-only), all other fds closed, setsid, rlimits (AS, CPU,
         NPROC, NOFILE, FSIZE = output cap, CORE 0, MSGQUEUE 0), drop to an unprivileged uid,
         no_new_privs, the seccomp filter (``sandbox.syscall_filter``), compile, run the
         program as ``__main__`` and finish like the interpreter does.
  worker: waits on a pidfd with the wall limit, SIGKILLs on timeout, reaps, reads stdout/stderr
          from the memfds (the kernel already capped them), replies. Then, with no process of
          the program left (the kernel has killed its whole PID namespace), it gives /tmp or
          /dev/shm a fresh tmpfs if the program changed them in any way; every ``proc_batch``
          executions it detaches the holder, and with it every child's /proc, in one go.

Why not a fresh mount namespace per execution: creating one copies the whole mount tree, and
the last exit from it unmounts every copy behind an RCU grace period before the child counts as
exited, a large share of an execution's cost. So an execution makes one mount (its /proc), and
unmounts are batched. A /proc mounted once per worker would not do: it shows the worker's PID
namespace, with other pid numbers, and hiding the worker there (hidepid) hides a program's own
children too (they are not dumpable after the uid change).

Other modes: ``nested`` (a user namespace, non-root) gives each execution its own PID, mount and
IPC namespaces through an intermediate process, as does namespaces mode if the per-worker mounts
cannot be made; without namespaces (rlimits mode) leftovers are killed by uid or as orphans.

Every page that the worker or a child writes after a fork is a page fault, and a copy while
both live; fork and exit also copy and free the page tables of all the worker's memory. Hence a
lean worker (``-S``: no site and no .pth imports; no json/re/traceback/hashlib of its own; code
precompiled; only the ``preload`` modules the pool asks for), libc functions looked up before
forking, stdio objects built once, and a worker that only waits while a child lives. Programs
still get the interpreter's site-packages on sys.path (passed in the config) and the
``exit``/``quit`` builtins.
"""
from __future__ import annotations

import atexit
import collections
import ctypes
import gc
import io
import os
import resource
import select
import signal
import sys
import time
import types

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path[0] != _HERE:   # run as a script (the pool imports us from _HERE, at the front)
    sys.path.insert(0, _HERE)
import protocol

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME = 2, 4, 8, 1024
MS_REC, MS_PRIVATE = 0x4000, 0x40000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
STDERR_TAIL = 4096
CODE_CACHE_SIZE = 64                 # programs whose code objects a worker keeps
CODE_CACHE_BYTES = 1 << 20           # ... and their total source size (the heap is forked)
CODE_CACHE_MAX_PROGRAM = 256 << 10
MAX_REQUEST_BLOB = 1 << 30
TMP_DIRS = ("/tmp", "/dev/shm")
# Where bubblewrap points the /proc symlink (see isolation.worker_command): a tmpfs "holder"
# here carries the children's /proc mounts on its "cur" directory, so that one lazy unmount
# of the holder drops a batch of them at once (one RCU grace period, not one each).
PROC_HOLDER = "/sandbox_proc"
# trace mode: when a child started, had its namespaces and /proc, its fds, its rlimits, its
# uid (set-up done), and its stdio (about to compile/run)
CHILD_STAMPS = ("t_child", "t_ns", "t_fds", "t_limits", "t_setup", "t_ready")

_libc = ctypes.CDLL(None, use_errno=True)
for _name in ("setns", "unshare", "mount", "umount2", "prctl", "capset"):
    try:   # look each up now (CDLL caches it): not by dlsym in every child
        getattr(_libc, _name)
    except AttributeError:
        pass
_now = time.perf_counter_ns


class _SockFprog(ctypes.Structure):   # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _seccomp_program(bpf: bytes) -> tuple[ctypes.Array, _SockFprog]:
    """The filter (classic BPF, 8 bytes an instruction, from ``sandbox.syscall_filter``) as
    the struct ``prctl(PR_SET_SECCOMP)`` takes; the buffer must outlive it."""
    if not bpf or len(bpf) % 8 or len(bpf) // 8 > 4096:
        raise ValueError(f"not a BPF program: {len(bpf)} bytes")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    return buf, _SockFprog(len(bpf) // 8, ctypes.addressof(buf))


def _install_seccomp(prog: _SockFprog) -> None:
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0),
           "seccomp filter")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class Worker:
    def __init__(self, config: dict) -> None:
        self.uid = config.get("uid")          # run programs as this uid (when we are root)
        # RLIMIT_NPROC counts every task of a uid: where programs keep the caller's uid, its
        # existing tasks (counted by the orchestrator, outside our namespaces) are added.
        self.nproc_base = int(config.get("nproc_base", 0))
        self.want_ns = bool(config.get("namespaces"))
        self.tmp_bytes = int(config.get("tmp_bytes", 32 << 20))
        for d in config.get("sys_path", ()):   # what site would add (we run with -S)
            if d not in sys.path:
                sys.path.append(d)
        self.rfd = os.dup(0)
        self.wfd = os.dup(1)
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        self.ns = False
        self.ns_error = ""
        self.shared_mounts = False   # per-worker /tmp, /dev/shm and /proc stack (see top)
        self._tmp_state: dict[str, tuple[int, int, int]] = {}
        self._proc_dev = -1          # st_dev of the worker's own /proc
        self._proc_holder = False    # /proc -> PROC_HOLDER/cur: batched unmounts
        self._proc_mounts = 0        # children's /proc mounts on the holder
        self._proc_batch = max(1, int(config.get("proc_batch", 64)))
        self._code_cache: collections.OrderedDict[bytes, types.CodeType] = \
            collections.OrderedDict()
        self._code_bytes = 0
        self.own_pidns = -1
        if self.want_ns:
            try:
                self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
                self._enter_fresh_pidns()
                self._leave_fresh_pidns()
                self.ns = True
            except OSError as e:
                self.ns_error = str(e)
        # Without the setns() trick (an unprivileged user namespace), each execution can still
        # get its namespaces through an intermediate process (one more fork).
        self.nested = bool(config.get("nested")) and not self.ns and self._nested_works()
        self.private = self.ns or self.nested   # each execution in its own PID/mount/IPC ns
        if not self.private:
            # Orphans of a program are re-parented to us so that we can reap them.
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if os.getuid() == 0 and self.uid is None:
            self.uid = 65534
        self.drop_uid = os.getuid() == 0
        self.refuse = ""
        if self.drop_uid and not self._uid_can_run_python():
            # e.g. the interpreter lives under /root (0700) on a host without bubblewrap:
            # programs cannot drop root, and a program running as root is never acceptable.
            self.refuse = ("programs cannot run unprivileged: an unprivileged uid cannot read "
                           "the Python installation, and programs never run as root")
        # Memfds for stdin/stdout/stderr, reused between executions only where no process of
        # the previous program can have survived it (its PID namespace is gone, or its uid was
        # swept).
        self.reuse_files = self.private or self.drop_uid
        self._files = self._fresh_files() if self.reuse_files else []
        if self.ns and config.get("per_worker_mounts", True):
            try:
                self._mount_worker_dirs()
                self.shared_mounts = True
            except OSError as e:   # executions then get their own mount namespace each
                self.ns_error = f"per-worker mounts failed: {e}"
        # The program's sys.stdin/stdout/stderr, built once here on fds 0-2 (which a child
        # points at its memfds): never used by the worker, so every child gets them pristine.
        self._stdio = (
            io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "rb", closefd=False)),
                             encoding="utf-8"),
            io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "wb", closefd=False)),
                             encoding="utf-8"),
            io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "wb", closefd=False)),
                             encoding="utf-8", errors="backslashreplace", line_buffering=True))
        # The interpreter's own streams stay referenced here: a child replacing them must not
        # deallocate them (tearing down three stream objects touches many pages to copy).
        self._own_stdio = (sys.stdin, sys.stdout, sys.stderr)
        self._poller = select.poll()   # waits for each child's pidfd
        # The syscall filter each child installs last thing before the program (see
        # sandbox.syscall_filter); tried once here, so that a kernel without seccomp shows in
        # the hello instead of failing every execution.
        self._seccomp: tuple[ctypes.Array, _SockFprog] | None = None
        self.seccomp_error = ""
        if config.get("seccomp"):
            try:
                self._seccomp = _seccomp_program(bytes.fromhex(config["seccomp"]))
                self._seccomp_works()
            except (OSError, ValueError) as e:
                self._seccomp = None
                self.seccomp_error = str(e)

    def _seccomp_works(self) -> None:
        pid = os.fork()
        if pid == 0:
            try:
                _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
                _install_seccomp(self._seccomp[1])
                os._exit(0)
            except BaseException:
                os._exit(1)
        if os.waitpid(pid, 0)[1] != 0:
            raise OSError("prctl(PR_SET_SECCOMP) failed: the kernel lacks seccomp filters?")

    def _nested_works(self) -> bool:
        pid = os.fork()
        if pid == 0:
            try:
                _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC), "unshare")
                _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "private")
                _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                                   b"size=1m"), "tmpfs")
                inner = os.fork()
                if inner == 0:
                    os._exit(0 if os.getpid() == 1 else 1)
                os._exit(os.waitpid(inner, 0)[1] >> 8)
            except BaseException:
                os._exit(1)
        return os.waitpid(pid, 0)[1] == 0

    def _uid_can_run_python(self) -> bool:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
                os.stat(os.path.join(os.path.dirname(os.__file__), "threading.py"))
                os.listdir(os.path.dirname(os.__file__))
                os._exit(0)
            except BaseException:
                os._exit(1)
        return os.waitpid(pid, 0)[1] == 0

    # A fresh PID namespace per child: re-target pid_for_children to our own namespace (the
    # previous child's namespace is dead) and unshare a new one; the next fork() is its PID 1.
    def _enter_fresh_pidns(self) -> None:
        _check(_libc.setns(self.own_pidns, CLONE_NEWPID), "setns(pid)")
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")

    def _leave_fresh_pidns(self) -> None:
        _check(_libc.setns(self.own_pidns, CLONE_NEWPID), "setns(pid)")

    # ------------------------------------------------------------------ per-worker mounts
    def _mount_worker_dirs(self) -> None:
        os.chdir("/")   # never keep a replaced tmpfs busy
        for target in TMP_DIRS:
            self._fresh_tmpfs(target, replace=False)
        self._proc_dev = os.stat("/proc").st_dev
        if os.path.islink("/proc") and os.readlink("/proc") == PROC_HOLDER + "/cur":
            self._fresh_proc_holder(replace=False)
            self._proc_holder = True

    def _fresh_proc_holder(self, replace: bool) -> None:
        """An empty holder on PROC_HOLDER (the previous one, with every /proc mounted on it,
        detached); it hides the worker's own /proc, which the worker no longer needs."""
        path = PROC_HOLDER.encode()
        if replace:
            _check(_libc.umount2(path, MNT_DETACH), f"umount {PROC_HOLDER}")
        _check(_libc.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           b"size=64k,mode=0755"), f"mount tmpfs on {PROC_HOLDER}")
        os.mkdir(PROC_HOLDER + "/cur", 0o755)
        self._proc_mounts = 0

    def _fresh_tmpfs(self, target: str, replace: bool) -> None:
        """A new, empty tmpfs on ``target`` (the previous one detached: no process uses it)."""
        path = target.encode()
        if replace:
            _check(_libc.umount2(path, MNT_DETACH), f"umount {target}")
        opts = f"size={self.tmp_bytes},mode=1777".encode()
        _check(_libc.mount(b"tmpfs", path, b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOATIME, opts),
               f"mount tmpfs on {target}")
        st = os.stat(target)
        self._tmp_state[target] = (st.st_ctime_ns, st.st_mtime_ns, st.st_nlink)

    def _tmp_touched(self, target: str) -> bool:
        """Whether a program changed ``target`` since its tmpfs was mounted. Any entry made
        or removed, and any chmod/utime, moves ctime; ctime ticks coarsely, so a directory
        that is not empty counts as touched too."""
        st = os.stat(target)
        if (st.st_ctime_ns, st.st_mtime_ns, st.st_nlink) != self._tmp_state[target]:
            return True
        return bool(os.listdir(target))

    def after_execution(self) -> None:
        """Between executions (no program process is alive): detach the children's /proc
        mounts (every ``proc_batch`` executions with the holder, else this child's: each proc
        mount has a device of its own, unmount until ours is on top again), and make /tmp and
        /dev/shm pristine again where a program touched them. A /proc left stacked is hidden
        under the next child's and shows a dead PID namespace: no process, nothing to read."""
        if not self.shared_mounts:
            return
        if self._proc_holder:
            self._proc_mounts += 1
            if self._proc_mounts >= self._proc_batch:
                self._fresh_proc_holder(replace=True)
        else:
            for _ in range(8):
                if os.stat("/proc").st_dev == self._proc_dev:
                    break
                _check(_libc.umount2(b"/proc", MNT_DETACH), "umount /proc")
            else:
                raise OSError("the /proc of earlier executions would not go")
        for target in TMP_DIRS:
            if self._tmp_touched(target):
                self._fresh_tmpfs(target, replace=True)

    def _resize_tmp(self, tmp_bytes: int) -> None:
        if tmp_bytes != self.tmp_bytes:
            self.tmp_bytes = tmp_bytes
            if self.shared_mounts:
                for target in TMP_DIRS:
                    self._fresh_tmpfs(target, replace=True)

    # ------------------------------------------------------------------ requests
    def hello(self) -> dict:
        return {"op": "hello", "pid": os.getpid(), "namespaces": self.ns,
                "per_execution_namespaces": self.private, "shared_mounts": self.shared_mounts,
                "ns_error": self.ns_error, "uid": self.uid if self.drop_uid else os.getuid(),
                "real_uid": os.getuid(), "refuse": self.refuse,
                "seccomp": self._seccomp is not None, "seccomp_error": self.seccomp_error}

    def serve(self) -> None:
        protocol.write_frame(self.wfd, self.hello())
        cleanup_ns = 0
        while True:
            try:
                meta, program, stdin = protocol.read_frame(self.rfd, MAX_REQUEST_BLOB)
            except protocol.ProtocolError:
                return  # orchestrator went away
            op = meta.get("op")
            if op == "ping":
                protocol.write_frame(self.wfd, {"op": "pong"})
            elif op == "run":
                t_req = _now()
                try:
                    reply, out, err = self.execute(meta, program, stdin, t_req)
                except OSError as e:   # e.g. fork() failed: an infrastructure failure
                    reply, out, err = {"op": "error", "detail": f"worker: {e}"}, b"", b""
                if "trace" in reply:   # the clean-up after the previous execution
                    reply["trace"]["cleanup_ns"] = cleanup_ns
                protocol.write_frame(self.wfd, reply, out, err)
                t_clean = _now()
                try:
                    self.after_execution()
                except OSError as e:   # the next program must not see this one's files
                    os.write(2, f"sandbox worker: cleaning up failed: {e}\n".encode())
                    os._exit(1)
                cleanup_ns = _now() - t_clean
            else:
                protocol.write_frame(self.wfd, {"op": "error", "detail": f"unknown op {op!r}"})

    def _fresh_files(self) -> list[int]:
        """[stdin (rw), stdin (read-only, for the child), stdout, stderr, status r, status w]."""
        fin = os.memfd_create("stdin", os.MFD_CLOEXEC)
        fin_ro = os.open(f"/proc/self/fd/{fin}", os.O_RDONLY | os.O_CLOEXEC)
        fout = os.memfd_create("stdout", os.MFD_CLOEXEC)
        ferr = os.memfd_create("stderr", os.MFD_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        return [fin, fin_ro, fout, ferr, status_r, status_w]

    def execute(self, req: dict, program: bytes, stdin: bytes, t_req: int = 0
                ) -> tuple[dict, bytes, bytes]:
        files = self._files if self.reuse_files else self._fresh_files()
        fin, fin_ro, fout, ferr, status_r, status_w = files
        trace = bool(req.get("trace"))
        try:
            self._resize_tmp(int(req["tmp_bytes"]))
            view = memoryview(stdin)
            off = 0
            while off < len(view):
                off += os.pwrite(fin, view[off:], off)
            for fd in (fin_ro, fout, ferr):   # reused files: the child writes from offset 0
                os.lseek(fd, 0, os.SEEK_SET)
            code = self._code_cache.get(program)
            wall_ns = int(float(req["wall_s"]) * 1e9)
            out_cap = int(req["out_bytes"])
            if self.ns:
                self._enter_fresh_pidns()
            t_fork = _now()
            try:
                pid = os.fork()
            except OSError:
                if self.ns:
                    self._leave_fresh_pidns()
                raise
            if pid == 0:  # child: never returns
                try:
                    if self.nested:
                        self._intermediate(req, program, code, fin_ro, fout, ferr, status_w,
                                           trace)
                    self._child(req, program, code, fin_ro, fout, ferr, status_w, trace)
                except BaseException as e:  # set-up failed: tell the orchestrator on stderr
                    try:
                        os.write(2, f"sandbox child set-up failed: {e!r}".encode()[-300:])
                    except OSError:
                        pass
                finally:
                    os._exit(111)
            t_forked = _now()
            # Until the child is gone, every page we write is copied (it still shares them):
            # only wait for it here, and tidy up (pid_for_children...) afterwards.
            try:
                reply, out, err = self._supervise(pid, t_fork + wall_ns, t_fork, fout, ferr,
                                                  status_r, out_cap, trace)
            finally:
                if self.ns:
                    self._leave_fresh_pidns()
            if code is None:
                self._remember_code(program, reply.get("stage", ""))
            else:
                self._code_cache.move_to_end(program)
            if trace:
                reply["trace"]["t_req"] = t_req
                reply["trace"]["t_forked"] = t_forked
                reply["trace"]["t_reply"] = _now()
            return reply, out, err
        finally:
            if self.reuse_files:
                os.ftruncate(fin, 0)
                os.ftruncate(fout, 0)
                os.ftruncate(ferr, 0)
            else:
                for fd in files:
                    os.close(fd)

    def _supervise(self, pid: int, deadline: int, t_fork: int, fout: int, ferr: int,
                   status_r: int, out_cap: int, trace: bool) -> tuple[dict, bytes, bytes]:
        timed_out = False
        pidfd = os.pidfd_open(pid)
        self._poller.register(pidfd, select.POLLIN)
        try:
            while True:
                left = deadline - _now()
                if left <= 0:
                    timed_out = True
                    break
                if left < 1_000_000:  # poll() counts whole milliseconds: sleep the rest exactly
                    if self._poller.poll(0):
                        break
                    time.sleep(left / 1e9)
                    continue
                if self._poller.poll(left // 1_000_000):
                    break
            if timed_out:
                # PID 1 of the child's namespace: the kernel kills the whole namespace with it.
                _kill(pid)
                if not self.private:
                    _killpg(pid)
        finally:
            self._poller.unregister(pidfd)
            os.close(pidfd)
        t_exited = _now()
        _, status, ru = os.wait4(pid, 0)
        t_reaped = _now()
        wall = (t_reaped - t_fork) / 1e9
        if timed_out and not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            timed_out = False  # it finished on its own just as the deadline passed
        if not self.private:
            _killpg(pid)           # leftovers in the program's process group
            if self.drop_uid:
                self._kill_uid()   # and anything else running as the program's uid
                self._reap_orphans(block=True)
            else:
                self._kill_orphans()
        try:
            stage = os.read(status_r, 64)
        except BlockingIOError:
            stage = b""
        stamps = b""
        if stage[:1] == b"T":   # trace: the child's own timestamps come first
            n = 8 * len(CHILD_STAMPS)
            stamps, stage = stage[1:1 + n], stage[1 + n:]
        reply = {"op": "result", "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                 "timed_out": timed_out, "maxrss_kb": ru.ru_maxrss, "stage": stage.decode()}
        if os.WIFSIGNALED(status):
            reply["signal"] = os.WTERMSIG(status)
            reply["exit_code"] = None
        else:
            reply["signal"] = None
            reply["exit_code"] = os.WEXITSTATUS(status)
        out_size = os.fstat(fout).st_size
        err_size = os.fstat(ferr).st_size
        reply["out_over"] = out_size > out_cap
        reply["err_over"] = err_size > out_cap
        out = b"" if out_size > out_cap else os.pread(fout, out_size, 0)
        start = max(0, err_size - STDERR_TAIL)
        err = os.pread(ferr, err_size - start, start)
        if trace:
            reply["trace"] = {"t_fork": t_fork, "t_exited": t_exited, "t_reaped": t_reaped,
                              "minflt": ru.ru_minflt}
            for k, name in enumerate(CHILD_STAMPS):
                reply["trace"][name] = int.from_bytes(stamps[8 * k:8 * k + 8], "little")
        return reply, out, err

    def _remember_code(self, program: bytes, stage: str) -> None:
        """Cache the code object of a program that a child has just compiled successfully
        (stage "SR": it compiled within the limits, so compiling it here is safe too);
        later children inherit it through fork instead of compiling again."""
        if stage != "SR" or len(program) > CODE_CACHE_MAX_PROGRAM:
            return
        try:
            self._code_cache[program] = compile(program, "main.py", "exec", dont_inherit=True)
        except Exception:
            return
        self._code_bytes += len(program)
        while len(self._code_cache) > CODE_CACHE_SIZE or self._code_bytes > CODE_CACHE_BYTES:
            old, _ = self._code_cache.popitem(last=False)
            self._code_bytes -= len(old)

    def _kill_uid(self) -> None:
        """Without namespaces: a helper with the program's uid sends SIGKILL to every process
        it may signal (kill(-1) spares only itself), i.e. to all that the program started."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
                if os.getuid() == 0 or os.geteuid() == 0:
                    os._exit(1)  # never kill(-1) as root
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    def _kill_orphans(self) -> None:
        """Same uid as the program, no namespaces: we are the subreaper, so whatever the program
        left running (a setsid daemon...) becomes our child once its parent is gone; kill and
        reap our children until there are none."""
        path = f"/proc/self/task/{os.getpid()}/children"
        for _ in range(100):
            try:
                with open(path) as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                kids = []
            if not kids:
                break
            for k in kids:
                _kill(k)
            for k in kids:
                try:
                    os.waitpid(k, 0)
                except ChildProcessError:
                    pass
        self._reap_orphans(block=False)

    def _reap_orphans(self, block: bool) -> None:
        """Reap the program's orphans (we are their subreaper). Blocking only when they were
        all just killed, so that none can keep us waiting."""
        while True:
            try:
                pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # ------------------------------------------------------------------ child side
    def _intermediate(self, req: dict, program: bytes, code: types.CodeType | None, fin: int,
                      fout: int, ferr: int, status_w: int, trace: bool) -> None:
        """Nested mode: a fresh PID namespace whose PID 1 runs the program; we wait for it and
        exit as it did. When we are killed (timeout), its parent-death signal kills it, and the
        kernel the whole namespace with it. Never returns."""
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        pid = os.fork()
        if pid == 0:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            try:
                self._child(req, program, code, fin, fout, ferr, status_w, trace)
            except BaseException as e:
                try:
                    os.write(2, f"sandbox child set-up failed: {e!r}".encode()[-300:])
                except OSError:
                    pass
            finally:
                os._exit(111)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _, status, _ = os.wait4(pid, 0)   # its CPU time is folded into ours
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)
        os._exit(os.WEXITSTATUS(status))

    def _child(self, req: dict, program: bytes, code: types.CodeType | None, fin: int,
               fout: int, ferr: int, status_w: int, trace: bool) -> None:
        """Set the child up, then run the program. Exit 111 (no stage byte) = setup failed."""
        marks = [_now()] if trace else None   # CHILD_STAMPS
        os.setsid()
        if self.shared_mounts:
            # A private SysV IPC / POSIX mqueue namespace, so that no IPC object outlives the
            # execution; a /proc of our own PID namespace on top of the previous one (the
            # worker unmounts them, in batches when /proc leads to its holder).
            _check(_libc.unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")
            _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                               None), "mount proc")
        elif self.private:
            tmp_opts = f"size={int(req['tmp_bytes'])},mode=1777".encode()
            # private mounts, and a private SysV IPC / POSIX mqueue namespace so that no IPC
            # object outlives the execution or reaches the next program of this worker
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
            for target in (b"/tmp", b"/dev/shm"):
                _check(_libc.mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV, tmp_opts),
                       "mount tmpfs")
            _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
                   "mount proc")
        if marks is not None:
            marks.append(_now())
        try:   # if memory runs out anywhere, the kernel kills programs first
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, b"1000")
            finally:
                os.close(fd)
        except OSError:
            pass
        os.dup2(fin, 0)
        os.dup2(fout, 1)
        os.dup2(ferr, 2)
        if status_w != 3:
            os.dup2(status_w, 3)
            status_w = 3
        os.set_inheritable(3, False)
        os.closerange(4, 1 << 16)
        if marks is not None:
            marks.append(_now())
        cpu_hard = int(float(req["cpu_s"])) + 1
        mem = int(req["mem_bytes"])
        for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu_hard),
                           (resource.RLIMIT_NPROC, int(req["nproc"]) + self.nproc_base),
                           (resource.RLIMIT_NOFILE, int(req["nofile"])),
                           (resource.RLIMIT_FSIZE, int(req["out_bytes"]) + 1),
                           (resource.RLIMIT_CORE, 0), (resource.RLIMIT_MSGQUEUE, 0)):
            resource.setrlimit(res, (value, value))
        if marks is not None:
            marks.append(_now())
        if self.drop_uid:
            uid = int(self.uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)  # drops every capability
        if self.nested:
            _drop_capabilities()
        if os.getuid() == 0 or os.geteuid() == 0 or self.refuse:
            raise OSError("refusing to run a program as root")
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.chdir("/tmp")
        if self._seccomp is not None:   # last: binds the program and all it starts
            _install_seccomp(self._seccomp[1])
        if marks is not None:
            marks.append(_now())
        _run_program(program, status_w, code, self._stdio, marks)


def _drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable sets (and so the ambient set)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)      # _LINUX_CAPABILITY_VERSION_3, self
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_program(program: bytes, status_w: int, code: types.CodeType | None,
                 stdio: tuple[io.TextIOWrapper, io.TextIOWrapper, io.TextIOWrapper],
                 marks: list[int] | None = None) -> None:
    """Compile (unless ``code`` is given) and run ``program`` as ``python3 main.py`` would,
    then exit. Never returns. ``stdio``: fresh text streams on fds 0, 1 and 2."""
    sys.stdin = sys.__stdin__ = stdio[0]
    sys.stdout = sys.__stdout__ = stdio[1]
    sys.stderr = sys.__stderr__ = stdio[2]
    if marks is not None:   # trace: CHILD_STAMPS
        marks.append(_now())
        os.write(status_w, b"T" + b"".join(t.to_bytes(8, "little") for t in marks))
    os.write(status_w, b"S")
    try:
        if code is None:
            code = compile(program, "main.py", "exec", dont_inherit=True)
    except BaseException as e:  # SyntaxError, ValueError (NUL bytes), MemoryError, RecursionError
        _print_exception(e, None)
        _flush_stderr()
        os.write(status_w, b"C")
        os._exit(1)
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    main.__dict__["__file__"] = "main.py"
    sys.modules["__main__"] = main
    sys.argv[:] = ["main.py"]
    del sys.path[0]  # our own directory
    os.write(status_w, b"R")
    os.close(status_w)
    exit_code = 0
    try:
        exec(code, main.__dict__)
    except SystemExit as e:
        exit_code = _exit_code(e)
    except BaseException as e:
        exit_code = 1
        tb = e.__traceback__
        _print_exception(e, tb.tb_next if tb is not None else None)  # without our frame
    exit_code = _finalize(exit_code)
    os._exit(exit_code)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    try:
        print(e.code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _print_exception(e: BaseException, tb: types.TracebackType | None) -> None:
    """Print ``e`` to sys.stderr as the interpreter does at exit (its C display code: no
    traceback module to import or to fork)."""
    try:
        e.__traceback__ = tb   # the display code prints the exception's own traceback
        sys.__excepthook__(type(e), e, tb)
    except BaseException:
        pass


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except BaseException:
        pass


def _finalize(exit_code: int) -> int:
    """What the interpreter does at exit: join non-daemon threads, atexit, flush stdio."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except SystemExit as e:
        exit_code = _exit_code(e)
    except BaseException as e:
        _print_exception(e, e.__traceback__)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except BaseException:
            if name == "stdout":
                exit_code = 120
    return exit_code


def _site_builtins() -> None:
    """The builtins that ``site`` adds and programs use (``exit``, ``quit``, ``help``...):
    importing site under -S defines its helpers without processing any .pth file."""
    import site
    site.setquit()
    site.setcopyright()
    site.sethelper()


def _preload(names: list[str]) -> None:
    """Import modules that programs commonly use, so that each child inherits them instead of
    importing them again (``import re`` alone is milliseconds); each costs every fork a
    little memory to copy. Missing ones are skipped."""
    for name in names:
        try:
            __import__(name)
        except ImportError:
            pass


def main() -> None:
    config = protocol.decode_json(sys.argv[1].encode()) if len(sys.argv) > 1 else {}
    sys.set_int_max_str_digits(0)  # python3's digit limit is lifted for programs (and here)
    _site_builtins()
    worker = Worker(config)
    _preload(list(config.get("preload", ())))
    gc.collect()
    gc.freeze()  # children inherit a frozen heap: fewer copy-on-write faults after fork
    _libc.malloc_trim(0)   # hand back what compiling this file took: less memory to fork
    worker.serve()


if __name__ == "__main__":
    main()
