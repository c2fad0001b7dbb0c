"""Runs one command as a child process and measures it alone: wall time,
CPU time (user + system) and peak RSS, from the kernel's accounting of that
child (`wait4`), without /usr/bin/time. Shared by the benchmark scripts."""
import os
import signal
import subprocess
import tempfile
import time


def measure(cmd, env=None, cwd=None, stop_after=None):
    """Runs `cmd`; with `stop_after` seconds, sends SIGINT then (sluice
    finishes and commits). Returns a dict with wall, cpu, rss_mb, code,
    stdout and stderr; raises if the command fails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        if stop_after:
            time.sleep(stop_after)
            p.send_signal(signal.SIGINT)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {p.returncode}:\n{stderr[-3000:]}")
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "stdout": stdout,
        "stderr": stderr,
    }
