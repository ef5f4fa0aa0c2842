#!/usr/bin/env python3
"""The disk's own cost of one durable append, the physical limit under Jetway's
journal (docs/benchmarks.md, "The twenty-second session"). Usage:
    scripts/fsync-limits.py [DIR] [GAP_SECONDS] [COUNT]
Writes a scratch file in DIR (default: the current directory), COUNT times (default
200), GAP_SECONDS apart (default 0.05, the lone change's idle disk; 0.001 is the
loaded case), in four ways, and prints the p50 and p90 of each. Stops by itself."""
import mmap, os, sys, time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
GAP = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
N = int(sys.argv[3]) if len(sys.argv) > 3 else 200
SIZE = 8 << 20
PATH = os.path.join(DIR, "fsync-limits.scratch")


def fresh(prepare):
    if os.path.exists(PATH):
        os.remove(PATH)
    fd = os.open(PATH, os.O_RDWR | os.O_CREAT, 0o600)
    if prepare == "zeros":
        os.write(fd, b"\0" * SIZE)
        os.fsync(fd)
    elif prepare == "fallocate":
        os.posix_fallocate(fd, 0, SIZE)
        os.fsync(fd)
    os.close(fd)


def run(name, prepare, direct):
    fresh(prepare)
    flags = os.O_RDWR | (os.O_DIRECT | os.O_DSYNC if direct else 0)
    fd = os.open(PATH, flags)
    block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    block.write(b"x" * 4096)
    record = b"x" * 1200
    took = []
    for i in range(N):
        t = time.perf_counter()
        if direct:
            os.pwrite(fd, block, i * 4096)
        else:
            os.pwrite(fd, record, i * len(record))
            os.fdatasync(fd)
        took.append(time.perf_counter() - t)
        time.sleep(GAP)
    os.close(fd)
    took.sort()
    print(f"{name:40} p50 {took[N // 2] * 1e3:.3f} ms  p90 {took[int(N * 0.9)] * 1e3:.3f} ms", flush=True)


try:
    run("append 1,200 B + fdatasync", None, False)
    run("zero-filled file, write + fdatasync", "zeros", False)
    run("zero-filled file, O_DIRECT|O_DSYNC 4 KiB", "zeros", True)
    run("fallocate'd file, O_DIRECT|O_DSYNC 4 KiB", "fallocate", True)
finally:
    if os.path.exists(PATH):
        os.remove(PATH)
