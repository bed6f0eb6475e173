"""The code-execution sandbox's child: run as `python -I -S -B sandbox_child.py` (a script,
stdlib only, never imported by the buffer). It reads one JSON job from stdin, isolates itself,
sets its limits, runs the solution and the hidden tests, and reports one line per test on the
result fd, each prefixed with the job's nonce (the solution's own stdout/stderr go to
/dev/null).

Isolation, in this order (all of it works unprivileged; a root parent drops to `drop_uid`
first, because RLIMIT_NPROC never applies to uid 0):
- "userns": unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) through ctypes (Python 3.11
  has no os.unshare). The new network namespace has only a loopback that is down, so no
  packet can leave it, not even to 127.0.0.1 of the host. The tests run as PID 1 of the new
  PID namespace: when it exits or is killed, the kernel kills everything the solution
  started, and the solution cannot see or signal any process outside. RLIMIT_NPROC counts
  only the sandbox's own tasks there (per-user-namespace ucounts, Linux >= 5.14).
- "seccomp" (when the kernel or the container runtime refuses user namespaces, e.g. Docker's
  default seccomp profile or kernel.unprivileged_userns_clone=0): a seccomp filter that
  fails socket() for every family but AF_UNIX, and io_uring_setup (io_uring can open
  sockets), with EACCES. No PID namespace: the parent kills the process group, and
  RLIMIT_NPROC is set to the uid's current task count plus the sandbox's budget.
Neither works: the job fails (the reward is an error, not a silent run with network).
"""

import ctypes
import json
import os
import platform
import resource
import struct
import sys

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 4, 38, 22
SECCOMP_MODE_FILTER = 2
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYS_SOCKET = {"x86_64": 41, "aarch64": 198}
SYS_IO_URING_SETUP = 425  # same number on both
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO_EACCES = 0x7FFF0000, 0x80000000, 0x00050000 | 13

libc = ctypes.CDLL(None, use_errno=True)


def try_userns() -> bool:
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return False
    # Map our own ids, so files in the scratch directory can be created (unmapped: EOVERFLOW).
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    return True


def install_seccomp() -> None:
    arch = platform.machine()
    if arch not in AUDIT_ARCH:
        raise OSError(f"no seccomp filter for architecture {arch}")

    def ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    prog = b"".join(
        [
            ins(ld, 4),  # 0: arch
            ins(jeq, AUDIT_ARCH[arch], 1, 0),  # 1
            ins(ret, RET_KILL_PROCESS),  # 2: a foreign ABI (int 0x80 on x86_64)
            ins(ld, 0),  # 3: syscall number
            ins(jge, 0x40000000, 5, 0),  # 4: x32 ABI -> deny
            ins(jeq, SYS_IO_URING_SETUP, 4, 0),  # 5 -> deny
            ins(jeq, SYS_SOCKET[arch], 0, 2),  # 6: not socket -> allow
            ins(ld, 16),  # 7: args[0] (domain), low 32 bits
            ins(jeq, 1, 0, 1),  # 8: AF_UNIX -> allow, else deny
            ins(ret, RET_ALLOW),  # 9
            ins(ret, RET_ERRNO_EACCES),  # 10
        ]
    )
    buf = ctypes.create_string_buffer(prog)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Prog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def uid_tasks(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def set_limits(lim: dict, nproc: int) -> None:
    mb = 1 << 20
    cpu = int(lim["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def run_tests(job: dict, emit) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    ns: dict = {"__name__": "solution"}
    try:
        exec(compile(job["code"], "solution.py", "exec"), ns)
    except BaseException:  # noqa: BLE001 - anything the solution does is its failure
        return
    fn = ns.get(job.get("entry_point") or "")
    for i, test in enumerate(job["tests"]):
        ok = False
        try:
            if isinstance(test, str):
                exec(compile(test, f"test_{i}", "exec"), ns)
                ok = True
            elif callable(fn):
                got = fn(*test.get("args", []), **test.get("kwargs", {}))
                # Compared after a JSON round trip: plain values only, so an object whose
                # __eq__ always says True does not pass.
                ok = json.loads(json.dumps(got)) == test["expected"]
        except BaseException:  # noqa: BLE001
            ok = False
        emit("t", i, int(ok))


def main() -> None:
    job = json.loads(sys.stdin.read())
    out = job["result_fd"]
    nonce = job["nonce"]

    def emit(*parts) -> None:
        os.write(out, (" ".join([nonce, *map(str, parts)]) + "\n").encode())

    lim = job["limits"]
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(job["drop_uid"])
        os.setuid(job["drop_uid"])
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # setuid cleared it: /proc/self/*_map
    mode = job["network"]
    if mode == "auto" and try_userns():
        iso, nproc = "userns", lim["max_processes"]
    else:
        install_seccomp()  # raises: no isolation, no run
        iso, nproc = "seccomp", uid_tasks(os.getuid()) + lim["max_processes"]
    emit("iso", iso)
    set_limits(lim, nproc)
    if iso != "userns":
        run_tests(job, emit)
        os._exit(0)
    pid = os.fork()  # the first child of the unshare is PID 1 of the new namespace
    if pid == 0:
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        run_tests(job, emit)
        os._exit(0)
    emit("pid1", pid)
    os.waitpid(pid, 0)
    os._exit(0)


if __name__ == "__main__":
    main()
