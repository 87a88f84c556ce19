"""Resident memory of one variant loaded against all of them, with and without shared weights.

    python scripts/runtime_memory.py BUNDLE [--backend ort-cpu openvino] [--runs 5] [--threads 2]

Each case runs in a fresh subprocess: open the bundle, load one variant (the most accurate) or
every variant (``Bundle.load_all``), run each loaded variant ``--runs`` times on random input, then
read ``/proc/self/status`` (VmRSS, RssAnon, RssFile, VmHWM) and ``/proc/self/smaps_rollup`` (Pss:
a page mapped twice counts once, so a file the backend memory-maps per session is not counted per
session). ``shared`` is ``Bundle.open(share_weights=True)`` (ort-cpu on a ``--shared-weights``
bundle only). The median run time per variant is printed beside, since sharing turns
onnxruntime's MatMul prepacking off. Cases alternate in one invocation, so the machine's load
hits them alike; compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def memory_mb() -> dict[str, float]:
    """This process's VmRSS, RssAnon, RssFile, VmHWM and Pss in MB."""
    found: dict[str, float] = {}
    for name in ("/proc/self/status", "/proc/self/smaps_rollup"):
        with open(name) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in (*CHILD_FIELDS, "Pss") and value.strip().endswith("kB"):
                    found[key] = int(value.split()[0]) / 1024
    return found


def child(bundle: str, backend: str, which: str, shared: bool, runs: int, threads: int) -> dict[str, object]:
    from exporter.runtime import Bundle

    opened = Bundle.open(bundle, share_weights=shared)
    before = memory_mb()
    start = time.perf_counter()
    if which == "all":
        runners = opened.load_all(backend, threads=threads)
    else:
        label = opened.variants[0]
        runners = {label: opened.runner(label, backend, threads=threads)}
    load_s = time.perf_counter() - start
    times = {}
    for label, runner in runners.items():
        x = np.random.default_rng(0).standard_normal((1, 3, *opened.record(label).img_size), dtype=np.float32)
        spent = []
        for _ in range(runs + 1):  # the first is warm-up
            start = time.perf_counter()
            runner(x)
            spent.append((time.perf_counter() - start) * 1e3)
        times[label] = statistics.median(spent[1:])
    return {"before": before, "after": memory_mb(), "load_s": load_s, "ms": times}


def measure(args: argparse.Namespace, backend: str, which: str, shared: bool) -> dict[str, object]:
    code = (
        "import json, sys; sys.path.insert(0, 'scripts'); import runtime_memory as m; "
        f"print(json.dumps(m.child({str(args.bundle)!r}, {backend!r}, {which!r}, {shared}, {args.runs}, "
        f"{args.threads})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backend", nargs="+", default=["ort-cpu"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    print(f"{args.bundle} on {cpu}, {args.threads} threads (MB after loading and {args.runs} runs each)")
    print(
        f"{'backend':<10} {'loaded':<6} {'shared':<6} {'VmRSS':>7} {'Pss':>7} {'anon':>7} {'file':>7} "
        f"{'HWM':>7} {'load s':>7}  median ms per variant"
    )
    for backend in args.backend:
        for which in ("one", "all"):
            for shared in (False, True) if backend == "ort-cpu" else (False,):
                row = measure(args, backend, which, shared)
                after = row["after"]
                assert isinstance(after, dict) and isinstance(row["ms"], dict)
                ms = "  ".join(f"{k} {v:.2f}" for k, v in row["ms"].items())
                print(
                    f"{backend:<10} {which:<6} {'yes' if shared else 'no':<6} {after['VmRSS']:7.1f} "
                    f"{after['Pss']:7.1f} {after['RssAnon']:7.1f} {after['RssFile']:7.1f} {after['VmHWM']:7.1f} "
                    f"{row['load_s']:7.2f}  {ms}"
                )


if __name__ == "__main__":
    main()
