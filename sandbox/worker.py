"""Sandbox worker: a pre-started process that forks one child per execution.

Runs as a script (``python -s -P worker.py '<json config>'``), usually inside bubblewrap, and
imports only the stdlib and ``protocol`` beside it. It never sees expected outputs: a request
carries a program and a stdin only. Per execution:

  worker ──fork──> child (in a fresh PID + mount namespace when available: it is PID 1 there, so
                   killing it kills everything it started; private tmpfs /tmp and /dev/shm; a
                   fresh /proc that shows only itself)
  child: stdio onto memfds (stdin read-only), all other fds closed, setsid, rlimits (AS, CPU,
         NPROC, NOFILE, FSIZE = output cap, CORE 0), drop to an unprivileged uid, no_new_privs,
         compile, run the program as ``__main__`` and finish like the interpreter does.
  worker: waits on a pidfd with the wall limit, SIGKILLs on timeout, reaps, reads stdout/stderr
          from the memfds (the kernel already capped them), replies.
"""
from __future__ import annotations

import atexit
import collections
import ctypes
import gc
import hashlib
import io
import json
import os
import resource
import select
import signal
import sys
import time
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import protocol  # noqa: E402

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_PRIVATE = 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
PR_SET_CHILD_SUBREAPER = 36
STDERR_TAIL = 4096
CODE_CACHE_SIZE = 512
CODE_CACHE_MAX_PROGRAM = 256 << 10
MAX_REQUEST_BLOB = 1 << 30

_libc = ctypes.CDLL(None, use_errno=True)


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
        self.rfd = os.dup(0)
        self.wfd = os.dup(1)
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        self.ns = False
        self.ns_error = ""
        self._files: list[int] = []
        self._code_cache: collections.OrderedDict[bytes, types.CodeType] = \
            collections.OrderedDict()
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

    def hello(self) -> dict:
        return {"op": "hello", "pid": os.getpid(), "namespaces": self.ns,
                "per_execution_namespaces": self.private,
                "ns_error": self.ns_error, "uid": self.uid if self.drop_uid else os.getuid(),
                "real_uid": os.getuid(), "refuse": self.refuse}

    def serve(self) -> None:
        protocol.write_frame(self.wfd, self.hello())
        while True:
            try:
                meta, program, stdin = protocol.read_frame(self.rfd, MAX_REQUEST_BLOB)
            except protocol.ProtocolError:
                return  # orchestrator went away
            op = meta.get("op")
            if op == "ping":
                protocol.write_frame(self.wfd, {"op": "pong"})
            elif op == "run":
                try:
                    reply, out, err = self.execute(meta, program, stdin)
                except OSError as e:   # e.g. fork() failed: an infrastructure failure
                    reply, out, err = {"op": "error", "detail": f"worker: {e}"}, b"", b""
                protocol.write_frame(self.wfd, reply, out, err)
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

    def execute(self, req: dict, program: bytes, stdin: bytes) -> tuple[dict, bytes, bytes]:
        # The files are reused between executions only where no process of the previous
        # program can have survived it (its PID namespace is gone, or its uid was swept).
        reuse = self.private or self.drop_uid
        files = self._files if reuse and self._files else self._fresh_files()
        fin, fin_ro, fout, ferr, status_r, status_w = files
        try:
            os.ftruncate(fin, 0)
            view = memoryview(stdin)
            off = 0
            while off < len(view):
                off += os.pwrite(fin, view[off:], off)
            for fd in (fin_ro, fout, ferr):   # reused files: the child writes from offset 0
                os.lseek(fd, 0, os.SEEK_SET)
            if self.ns:
                self._enter_fresh_pidns()
            t0 = time.perf_counter()
            try:
                pid = os.fork()
            except OSError:
                if self.ns:
                    self._leave_fresh_pidns()
                raise
            if pid == 0:  # child: never returns
                try:
                    if self.nested:
                        self._intermediate(req, program, fin_ro, fout, ferr, status_w)
                    self._child(req, program, fin_ro, fout, ferr, status_w)
                except BaseException as e:  # set-up failed: tell the orchestrator on stderr
                    try:
                        os.write(2, f"sandbox child set-up failed: {e!r}".encode()[-300:])
                    except OSError:
                        pass
                finally:
                    os._exit(111)
            if self.ns:
                self._leave_fresh_pidns()
            reply = self._supervise(req, pid, t0, fout, ferr, status_r, int(req["out_bytes"]))
            self._remember_code(program, reply[0].get("stage", ""))
            return reply
        finally:
            if reuse:
                self._files = files
                os.ftruncate(fin, 0)
                os.ftruncate(fout, 0)
                os.ftruncate(ferr, 0)
            else:
                for fd in files:
                    os.close(fd)

    def _supervise(self, req: dict, pid: int, t0: float, fout: int, ferr: int, status_r: int,
                   out_cap: int) -> tuple[dict, bytes, bytes]:
        timed_out = False
        pidfd = os.pidfd_open(pid)
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            deadline = t0 + float(req["wall_s"])
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    timed_out = True
                    break
                if poller.poll(max(1, int(left * 1000) + 1)):
                    break
            if timed_out:
                # PID 1 of the child's namespace: the kernel kills the whole namespace with it.
                _kill(pid)
                if not self.private:
                    _killpg(pid)
        finally:
            os.close(pidfd)
        _, status, ru = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
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
            stage = os.read(status_r, 8)
        except BlockingIOError:
            stage = b""
        reply = {"op": "result", "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                 "timed_out": timed_out, "maxrss_kb": ru.ru_maxrss, "stage": stage.decode() or ""}
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
        return reply, out, err

    def _remember_code(self, program: bytes, stage: str) -> None:
        """Cache the code object of a program that a child has just compiled successfully
        (stage "SR": it compiled within the limits, so compiling it here is safe too);
        later children inherit it through fork instead of compiling again."""
        key = _program_key(program)
        if key in self._code_cache:
            self._code_cache.move_to_end(key)
            return
        if stage != "SR" or len(program) > CODE_CACHE_MAX_PROGRAM:
            return
        try:
            self._code_cache[key] = compile(program, "main.py", "exec", dont_inherit=True)
        except Exception:
            return
        while len(self._code_cache) > CODE_CACHE_SIZE:
            self._code_cache.popitem(last=False)

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
    def _intermediate(self, req: dict, program: bytes, fin: int, fout: int, ferr: int,
                      status_w: int) -> None:
        """Nested mode: a fresh PID namespace whose PID 1 runs the program; we wait for it and
        exit as it did. When we are killed (timeout), its parent-death signal kills it, and the
        kernel the whole namespace with it. Never returns."""
        _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        pid = os.fork()
        if pid == 0:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            try:
                self._child(req, program, fin, fout, ferr, status_w)
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

    def _child(self, req: dict, program: bytes, fin: int, fout: int, ferr: int,
               status_w: int) -> None:
        """Set the child up, then run the program. Exit 111 (no stage byte) = setup failed."""
        os.setsid()
        if self.private:
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
        try:   # if memory runs out anywhere, the kernel kills programs first
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
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
        cpu_hard = int(float(req["cpu_s"])) + 1
        mem = int(req["mem_bytes"])
        for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu_hard),
                           (resource.RLIMIT_NPROC, int(req["nproc"]) + self.nproc_base),
                           (resource.RLIMIT_NOFILE, int(req["nofile"])),
                           (resource.RLIMIT_FSIZE, int(req["out_bytes"]) + 1),
                           (resource.RLIMIT_CORE, 0), (resource.RLIMIT_MSGQUEUE, 0)):
            resource.setrlimit(res, (value, value))
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
        _run_program(program, status_w, self._code_cache.get(_program_key(program)))


def _drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable sets (and so the ambient set)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)      # _LINUX_CAPABILITY_VERSION_3, self
    data = (ctypes.c_uint32 * 6)()
    _check(_libc.capset(header, data), "capset")


def _program_key(program: bytes) -> bytes:
    return hashlib.blake2b(program, digest_size=16).digest()


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


def _run_program(program: bytes, status_w: int, code: types.CodeType | None = None) -> None:
    """Compile (unless ``code`` is given) and run ``program`` as ``python3 main.py`` would,
    then exit. Never returns."""
    sys.set_int_max_str_digits(0)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "rb", closefd=False)), encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "wb", closefd=False)), encoding="utf-8")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "wb", closefd=False)), encoding="utf-8",
        errors="backslashreplace", line_buffering=True)
    os.write(status_w, b"S")
    try:
        if code is None:
            code = compile(program, "main.py", "exec", dont_inherit=True)
    except BaseException as e:  # SyntaxError, ValueError (NUL bytes), MemoryError, RecursionError
        sys.stderr.write("".join(traceback.format_exception_only(type(e), e)))
        sys.stderr.flush()
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
        _print_exception(e)
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


def _print_exception(e: BaseException) -> None:
    tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # drop our frame
    try:
        sys.stderr.write("".join(traceback.format_exception(type(e), e, tb)))
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
        _print_exception(e)
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except BaseException:
            if name == "stdout":
                exit_code = 120
    return exit_code


def main() -> None:
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    sys.set_int_max_str_digits(0)  # so that compiling here matches compiling in a child
    worker = Worker(config)
    gc.collect()
    gc.freeze()  # children inherit a frozen heap: fewer copy-on-write faults after fork
    worker.serve()


if __name__ == "__main__":
    main()
