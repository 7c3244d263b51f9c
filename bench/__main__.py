"""``python -m bench [--quick] [--only TEXT]``: run every bench/bench_*.py case, write RESULTS.md and results.json."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from bench.harness import BenchResult, run_case
from convlens.output import library_versions

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    info.update(library_versions(("torch", "torchvision", "timm", "captum", "grad-cam", "torchcam", "convlens")))
    return info


def bench_modules() -> list[str]:
    return sorted(f"bench.{path.stem}" for path in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and cases (< 10 min on 2 cores)")
    parser.add_argument("--only", default=None, help="run only cases whose module or name contains this")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    repetitions = args.repetitions or (3 if args.quick else 5)
    torch.manual_seed(0)
    results: list[BenchResult] = []
    failures: list[str] = []
    start = time.perf_counter()
    info = machine()
    for module_name in bench_modules():
        module = importlib.import_module(module_name)
        for case in module.cases(args.quick):
            if args.only and args.only not in module_name and args.only not in case.name:
                continue
            print(f"[bench] {case.name} vs {case.peer_name} ...", flush=True)
            try:
                result = run_case(case, repetitions=repetitions)
            except Exception as exc:  # noqa: BLE001 - one failing case must not hide the others
                failures.append(f"{case.name}: {exc.__class__.__name__}: {exc}")
                traceback.print_exc()  # a bare assertion says nothing without where it fired
                print(f"[bench]   FAILED: {failures[-1]}", flush=True)
            else:
                results.append(result)
                verdict = "" if result.met is None else ("  target met" if result.met else "  TARGET MISSED")
                print(f"[bench]   convlens {result.convlens_seconds * 1e3:.1f} ms, peer "
                      f"{result.peer_seconds * 1e3:.1f} ms, ratio {result.ratio:.3f}{verdict}", flush=True)
            if not args.no_write:  # after every case: a run cut off keeps the rows it measured
                write_results(results, failures, info, args.quick, time.perf_counter() - start, finished=False)
    total = time.perf_counter() - start
    if not args.no_write:
        write_results(results, failures, info, args.quick, total)
    print(f"[bench] {len(results)} cases in {total:.0f} s; {len(failures)} failed")
    return 1 if failures else 0


def write_results(results: list[BenchResult], failures: list[str], info: dict, quick: bool, total: float,
                  finished: bool = True) -> None:
    (HERE / "results.json").write_text(json.dumps(
        {"machine": info, "quick": quick, "seconds": round(total, 1), "finished": finished,
         "results": [dataclasses.asdict(r) for r in results], "failures": failures}, indent=2))
    command = f"`python -m bench{' --quick' if quick else ''}`"
    run = (f"Written by {command} in {total:.0f} s." if finished else
           f"**Run not finished**: written by {command} after its first {len(results) + len(failures)} cases "
           f"({total:.0f} s); a run that stops here lacks the cases after them.")
    lines = [
        "# Benchmark results",
        "",
        f"{run} Each case checks that convlens "
        "and the peer agree on the output (that first call also warms both up and gives the peak memory), then "
        "times them alternately n times; medians in milliseconds. "
        "Ratio = convlens / peer (below 1: convlens is faster). Peak memory: resident memory above the start "
        "of the call (CPU) or peak CUDA allocation.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None),
        "",
        "| case | peer | convlens ms | peer ms | ratio | target | met | n | convlens MB | peer MB | note |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        target = f"<= {r.max_ratio:.2f}" if r.max_ratio is not None else ""
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.name} | {r.peer_name} | {r.convlens_seconds * 1e3:.1f} | {r.peer_seconds * 1e3:.1f} | "
                     f"{r.ratio:.3f} | {target} | {met} | {r.repetitions} |"
                     f" {r.convlens_peak_mb:.0f} | {r.peer_peak_mb:.0f} | {r.note} |")
    if failures:
        lines += ["", "## Cases that failed to run", ""] + [f"- {f}" for f in failures]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
