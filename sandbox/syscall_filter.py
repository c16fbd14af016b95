"""The seccomp filter every program runs under: a deny list in the spirit of container runtimes'
default profiles (Docker's, nsjail's), built with libseccomp and loaded by each execution's
child just before the program starts.

What is refused, and why: the system calls that are the usual routes of kernel privilege
escalation or that reach outside the execution, none of which a stdin/stdout program needs:
new namespaces (``unshare``, and ``clone`` with a namespace flag; ``clone3`` passes its flags in
a struct a filter cannot read, so it fails with ENOSYS and libc falls back to ``clone``, as
container runtimes do), ``setns``, the kernel keyring, ``userfaultfd``, io_uring, ``bpf``,
``perf_event_open``, ``ptrace`` and reading other processes' memory, every mount call, kernel
modules, ``kexec``, ``reboot``, swap, process accounting, quotas, setting the clocks,
``personality`` beyond Linux's defaults, and the obsolete calls container profiles drop. A
refused call fails with EPERM (ENOSYS for ``clone3``): the program sees an error, not a kill,
and its verdict stays its own. Syscalls of another ABI (int 0x80, x32) fail with EPERM too.

The filter is compiled once per orchestrator process (``bpf_program``) into a classic BPF
program, handed to each worker in its config, and installed by each child with
``prctl(PR_SET_SECCOMP)`` after the sandbox's own set-up (namespaces, mounts, rlimits, uid,
``no_new_privs``), so it binds the program and everything it starts. Without libseccomp
(``libseccomp.so.2`` and its ctypes binding ``pyseccomp``, installed by ``make setup``) programs
run without a syscall filter, and the sandbox says so once, as a warning.
"""
from __future__ import annotations

import errno
import logging
import tempfile
import threading

log = logging.getLogger("sandbox")

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                   CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET)

# Refused outright (EPERM), grouped by why. Names the architecture lacks are skipped.
DENIED: dict[str, tuple[str, ...]] = {
    "namespaces": ("setns",),
    "keyring": ("keyctl", "add_key", "request_key"),
    "kernel attack surface": ("userfaultfd", "io_uring_setup", "io_uring_enter",
                              "io_uring_register", "bpf", "perf_event_open"),
    "other processes": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp"),
    "mounts": ("mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
               "fspick", "move_mount", "open_tree", "mount_setattr", "open_by_handle_at"),
    "kernel modules": ("init_module", "finit_module", "delete_module"),
    "the machine": ("kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
                    "quotactl", "quotactl_fd", "syslog", "vhangup", "iopl", "ioperm"),
    "clocks": ("settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime"),
    "obsolete": ("uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "lookup_dcookie", "vm86",
                 "vm86old", "create_module", "get_kernel_syms", "query_module", "afs_syscall",
                 "tuxcall", "security", "getpmsg", "putpmsg", "vserver", "bdflush"),
}
# Refused when a namespace flag is set in the first argument (EPERM).
DENIED_WITH_NAMESPACE_FLAGS = ("unshare", "clone")
# Fails with ENOSYS so that libc falls back to clone(), whose flags the filter can read.
ENOSYS_CALLS = ("clone3",)
# personality(): Linux's defaults only (PER_LINUX, PER_LINUX32, UNAME26 and both), as Docker.
# libseccomp compares an argument once per rule, so: refused above the largest allowed value,
# and below it whenever a bit outside the allowed ones is set. The query (0xffffffff) is refused
# too.
PERSONALITY_ALLOWED = (0x0, 0x0008, 0x20000, 0x20008)

_lock = threading.Lock()
_cache: dict[str, tuple[bytes | None, str]] = {}
_warned = False


def denied_calls() -> tuple[str, ...]:
    """Every call name the filter refuses in some way (for documentation and tests)."""
    names = [n for group in DENIED.values() for n in group]
    return tuple(names) + DENIED_WITH_NAMESPACE_FLAGS + ENOSYS_CALLS + ("personality",)


def _build() -> bytes:
    import pyseccomp as sc  # ctypes over libseccomp.so.2; ImportError/RuntimeError if absent

    f = sc.SyscallFilter(sc.ALLOW)
    # Syscalls of any other ABI (int 0x80 on x86-64, x32) fail rather than kill the program.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.EPERM))
    try:   # a binary tree of syscall numbers instead of a linear scan (libseccomp >= 2.5)
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    except OSError:
        pass
    eperm = sc.ERRNO(errno.EPERM)

    def number(name: str) -> int | None:
        nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
        return nr if nr >= 0 else None   # unknown here, or a pseudo-number of another arch

    for group in DENIED.values():
        for name in group:
            nr = number(name)
            if nr is not None:
                f.add_rule(eperm, nr)
    for name in DENIED_WITH_NAMESPACE_FLAGS:
        nr = number(name)
        if nr is None:
            continue
        for flag in NAMESPACE_FLAGS:   # one rule per flag: (flags & flag) == flag
            f.add_rule(eperm, nr, sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for name in ENOSYS_CALLS:
        nr = number(name)
        if nr is not None:
            f.add_rule(sc.ERRNO(errno.ENOSYS), nr)
    nr = number("personality")
    if nr is not None:
        top = max(PERSONALITY_ALLOWED)
        allowed_bits = 0
        for v in PERSONALITY_ALLOWED:
            allowed_bits |= v
        f.add_rule(eperm, nr, sc.Arg(0, sc.GT, top))
        for bit in range(top.bit_length()):
            if not allowed_bits & (1 << bit):
                f.add_rule(eperm, nr, sc.Arg(0, sc.MASKED_EQ, 1 << bit, 1 << bit))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def bpf_program() -> tuple[bytes | None, str]:
    """(the filter as classic BPF, "") or (None, why it is unavailable); built once per process."""
    with _lock:
        if "bpf" not in _cache:
            try:
                prog = _build()
                if not prog or len(prog) % 8:
                    raise RuntimeError(f"libseccomp exported {len(prog)} bytes of BPF")
                _cache["bpf"] = (prog, "")
            except (ImportError, OSError, RuntimeError, AttributeError, ValueError) as e:
                _cache["bpf"] = (None, f"{type(e).__name__}: {e}")
        return _cache["bpf"]


def warn_unfiltered(why: str) -> None:
    """Say once per process that programs run without a syscall filter."""
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    log.warning("sandbox runs programs without a syscall filter (seccomp): %s; install "
                "libseccomp2 and pyseccomp (`make setup`) to refuse namespaces, keyrings, "
                "io_uring, bpf, mounts and the other calls of sandbox.syscall_filter", why)



def filter_hex() -> str:
    """The filter as hex for a worker's config, or "" (after the warning) without libseccomp."""
    bpf, why = bpf_program()
    if bpf is None:
        warn_unfiltered(why)
        return ""
    return bpf.hex()
