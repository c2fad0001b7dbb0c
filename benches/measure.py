"""Runs one command as a child process and measures it alone: wall time,
CPU time (user + system) and peak RSS, from the kernel's accounting of that
child (`wait4`). Shared by the benchmark scripts.

The command is started by a small helper Python process, not by the caller:
Linux carries a process's peak RSS across `exec` (it is inherited from the
forked parent), so a child forked straight from a harness that has grown to
700 MB (DuckDB checks, imported peers) would report at least 700 MB."""
import json
import os
import subprocess
import sys
import tempfile

_HELPER = r"""
import json, os, signal, subprocess, sys, time
out, err, stop_after, cmd = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
with open(out, "wb") as o, open(err, "wb") as e:
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=o, stderr=e)
    if stop_after > 0:
        time.sleep(stop_after)
        p.send_signal(signal.SIGINT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss,
                  "code": os.waitstatus_to_exitcode(status)}))
"""


def measure(cmd, env=None, cwd=None, stop_after=None):
    """Runs `cmd`; with `stop_after` seconds, sends SIGINT then (sluice
    finishes and commits). Returns a dict with wall, cpu, rss_mb, stdout and
    stderr; raises if the command fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        helper = [sys.executable, "-c", _HELPER, out, err, str(stop_after or 0), *map(str, cmd)]
        r = json.loads(subprocess.run(helper, env=env, cwd=cwd, check=True, capture_output=True, text=True).stdout)
        stdout = open(out, errors="replace").read()
        stderr = open(err, errors="replace").read()
    if r["code"] != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {r['code']}:\n{stderr[-3000:]}")
    return {"wall": r["wall"], "cpu": r["cpu"], "rss_mb": r["rss_kb"] / 1024, "stdout": stdout, "stderr": stderr}
