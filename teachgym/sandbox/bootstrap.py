"""The program that runs first inside every sandbox and then becomes the untrusted one."""

from __future__ import annotations

#: Runs inside the sandbox as ``python -I -S -c``, then becomes the program in
#: the same interpreter (one interpreter start per run). Arguments: uid, nproc,
#: cpu, memory, fsize, nofile, keyctl syscall number (-1: none), the seccomp
#: program in hex, the descriptors to keep, the site directories, the program
#: file, then the program's own arguments. Limits are lowered to at most the
#: current hard limit, since an unprivileged caller cannot raise it.
_BOOTSTRAP = r"""
import sys
def _boot():
    import os, resource as R
    a = sys.argv
    def fail(what):
        sys.stderr.write("teachgym-sandbox: %s\n" % what)
        sys.stderr.flush()
        os._exit(125)
    uid, nproc, cpu, mem, fsize, nofile, keyctl = (int(v) for v in a[1:8])
    bpf, keep = bytes.fromhex(a[8]), {int(f) for f in a[9].split(",") if f}
    site, prog = a[10], a[11]
    try:
        for res, soft, hard in ((R.RLIMIT_CORE, 0, 0), (R.RLIMIT_CPU, cpu, cpu + 1),
                (R.RLIMIT_AS, mem, mem), (R.RLIMIT_FSIZE, fsize, fsize),
                (R.RLIMIT_NOFILE, nofile, nofile), (R.RLIMIT_NPROC, nproc, nproc)):
            cur = R.getrlimit(res)[1]
            if cur != R.RLIM_INFINITY:
                soft, hard = min(soft, cur), min(hard, cur)
            R.setrlimit(res, (soft, hard))
    except (OSError, ValueError) as e:
        fail("setrlimit: %s" % e)
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 and int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    L = ctypes.c_long
    if keyctl >= 0:
        libc.syscall(L(keyctl), L(1), ctypes.c_void_p(None))
    if uid >= 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as e:
            fail("cannot switch to user id %d: %s" % (uid, e))
    if bpf:
        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        buf = ctypes.create_string_buffer(bpf, len(bpf))
        fprog = Prog(len(bpf) // 8, ctypes.addressof(buf))
        if libc.prctl(38, L(1), L(0), L(0), L(0)) or libc.prctl(
                22, L(2), ctypes.byref(fprog), L(0), L(0)):
            fail("cannot install the seccomp filter: %s" % os.strerror(ctypes.get_errno()))
    sys.path.extend(p for p in site.split("\n") if p)
    import builtins
    builtins.exit = builtins.quit = sys.exit
    sys.argv = [prog, *a[12:]]
    with open(prog, "rb") as f:
        source = f.read()
    g = sys.modules["__main__"].__dict__
    del g["_boot"], g["sys"]
    g["__file__"] = prog
    return compile(source, prog, "exec")
exec(_boot())
"""
