#!/usr/bin/env python3
"""Side-by-side timings of muon (C++ Eigen backend) and PyTorch on this machine, in one run.

For every shape it runs our benchmark binaries (Google Benchmark, --benchmark_format=json) and
then the same work in PyTorch on the CPU, so both sides see the same machine state:

  * Newton-Schulz, 5 steps, float32, Keller Jordan's coefficients (3.4445, -4.7750, 2.0315), with
    torch.optim.Muon's operation order (A = X X^T; B = addmm(A, A, A, beta=b, alpha=c);
    X = addmm(X, B, X, beta=a)), a tall matrix worked on as its transpose;
  * the three GEMMs of one iteration alone (torch.mm / the Eigen gemm benchmark), which give each
    side's "fraction of its own GEMM rate" and the machine's single-thread GEMM peak;
  * a full optimizer step on a 4-layer d=512 transformer parameter set: ours is
    muon::Muon<Eigen<float>>::step(); torch's is torch.optim.Muon on the hidden matrices plus
    torch.optim.AdamW on the rest, both as shipped (its Newton-Schulz runs in bfloat16) and with
    its Newton-Schulz switched to float32 (the same arithmetic as ours).

Our Eigen backend is single-threaded, so the fair column runs torch with torch.set_num_threads(1)
and compares CPU time (ours: the benchmark thread's CPU time; torch: the process's CPU time): on a
shared machine that is the cost of the work whatever else runs. The second column runs torch
with all threads and compares wall-clock time (ours: the benchmark's wall_ms counter).

Ratios are time ratios ours / torch: below 1 ours is faster. Needs torch >= 2.9 (torch.optim.Muon).
Not part of CI.

  python3 benchmarks/compare_torch.py --build-dir build-bench [--reps 3] [--min-time 0.05]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
SHAPES = [(256, 256), (512, 512), (1024, 1024), (1024, 4096), (4096, 1024)]
VARIANTS = ["bench_muon", "bench_muon_native", "bench_muon_blas"]


# ---- shapes and flops (the same as bench_muon.cpp) ----------------------------------------------

def ns_products(rows: int, cols: int) -> list[tuple[str, int, int, int]]:
    """(layout, m, n, k) of the three GEMMs of one iteration, as NewtonSchulz::apply issues them."""
    n, m = min(rows, cols), max(rows, cols)
    if rows <= cols:
        return [("NT", n, n, m), ("NN", n, n, n), ("NN", n, m, n)]
    return [("TN", n, n, m), ("NN", n, n, n), ("NN", m, n, n)]


def gemm_name(p: tuple[str, int, int, int]) -> str:
    return f"gemm/f32/{p[0]}/{p[1]}x{p[2]}x{p[3]}"


def ns_flops(rows: int, cols: int) -> float:
    return NS_STEPS * sum(2.0 * m * n * k for _, m, n, k in ns_products(rows, cols))


# ---- our side ------------------------------------------------------------------------------------

def run_ours(binary: Path, names: list[str], args) -> tuple[dict, dict]:
    """Runs the named cases; returns ({name: median entry}, context)."""
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")/manual_time$"
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # bench_muon_blas: single-threaded like the others
    cmd = [str(binary), f"--benchmark_filter={pattern}", "--benchmark_format=json",
           f"--benchmark_min_time={args.min_time}", f"--benchmark_repetitions={args.reps}",
           "--benchmark_report_aggregates_only=true"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    result = {}
    for b in doc["benchmarks"]:
        # With one repetition Google Benchmark reports the run itself and no aggregates.
        if b.get("aggregate_name") == "median" or (args.reps == 1 and b.get("run_type") == "iteration"):
            result[b["run_name"].removesuffix("/manual_time")] = b
    missing = [n for n in names if n not in result]
    if missing:
        sys.exit(f"{binary.name}: no result for {missing}")
    return result, doc["context"]


def ms(entry: dict) -> float:
    """The reported (manual, CPU) time of a median entry, in ms."""
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[entry["time_unit"]]
    return entry["real_time"] * scale


# ---- torch side ----------------------------------------------------------------------------------

def timeit(fn, clock, min_time: float, reps: int) -> float:
    """Median over `reps` of the mean time per call (seconds on `clock`), after one warm-up call."""
    fn()
    samples = []
    for _ in range(reps):
        calls, t0 = 0, clock()
        while True:
            fn()
            calls += 1
            elapsed = clock() - t0
            if elapsed >= min_time:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


def torch_modes(all_threads: int):
    """(label, threads, clock): 1 thread on process CPU time, all threads on wall-clock time."""
    return [("torch1", 1, time.process_time), ("torchN", all_threads, time.perf_counter)]


def ns5_fp32(torch, g):
    x = g.clone()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x.div_(x.norm() + EPS)
    a, b, c = COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    return x.T if tall else x


def torch_ns_case(torch, rows: int, cols: int, args, threads: int, clock) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(rows, cols, generator=gen)
    t_ns = timeit(lambda: ns5_fp32(torch, g), clock, args.min_time, args.reps)
    # The three products alone, on operands of the same shapes and layouts as inside ns5_fp32.
    x = g.T if rows > cols else g
    x = x / x.norm()
    a = x @ x.T
    bmat = a.clone()
    gemms = {}
    for p, fn in zip(ns_products(rows, cols), (lambda: x @ x.T, lambda: a @ a, lambda: bmat @ x)):
        gemms[gemm_name(p)] = timeit(fn, clock, args.min_time, args.reps)
    return {"ns": t_ns, "gemms": gemms}


# The transformer of bench_muon.cpp: (name, shape, matrix path?).
def transformer_shapes(layers=4, d=512, vocab=8192):
    shapes = [("embed.weight", (vocab, d), False)]
    for l in range(layers):
        p = f"blocks.{l}."
        shapes += [(p + "ln1.weight", (d,), False), (p + "ln1.bias", (d,), False),
                   (p + "attn.qkv.weight", (3 * d, d), True), (p + "attn.qkv.bias", (3 * d,), False),
                   (p + "attn.out.weight", (d, d), True), (p + "attn.out.bias", (d,), False),
                   (p + "ln2.weight", (d,), False), (p + "ln2.bias", (d,), False),
                   (p + "mlp.up.weight", (4 * d, d), True), (p + "mlp.up.bias", (4 * d,), False),
                   (p + "mlp.down.weight", (d, 4 * d), True), (p + "mlp.down.bias", (d,), False)]
    shapes += [("ln_f.weight", (d,), False), ("ln_f.bias", (d,), False)]
    return shapes


def torch_step_case(torch, args, threads: int, clock, ns_dtype: str) -> float:
    import torch.optim._muon as muon_impl

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(100)
    matrices, others = [], []
    for _, shape, is_matrix in transformer_shapes():
        p = torch.nn.Parameter(torch.randn(*shape, generator=gen) * 0.02)
        p.grad = torch.randn(*shape, generator=gen) * 1e-3
        (matrices if is_matrix else others).append(p)
    # muon::Muon's defaults: lr 0.02, momentum 0.95, Nesterov, no weight decay, lr * sqrt(max(1, r/c));
    # the fallback is AdamW with torch's defaults.
    opt_m = torch.optim.Muon(matrices, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                             adjust_lr_fn="original")
    opt_a = torch.optim.AdamW(others, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    shipped = muon_impl._zeropower_via_newtonschulz

    def fp32(grad, ns_coefficients, ns_steps, eps):
        x = grad.clone()
        tall = x.size(0) > x.size(1)
        if tall:
            x = x.T
        x.div_(x.norm().clamp(min=eps))
        a, b, c = ns_coefficients
        for _ in range(ns_steps):
            gram = x @ x.T
            update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, update, x, beta=a)
        return x.T if tall else x

    def step():
        opt_m.step()
        opt_a.step()

    muon_impl._zeropower_via_newtonschulz = fp32 if ns_dtype == "fp32" else shipped
    try:
        return timeit(step, clock, args.min_time, args.reps)
    finally:
        muon_impl._zeropower_via_newtonschulz = shipped


# ---- report --------------------------------------------------------------------------------------

def fmt(x: float, digits=2) -> str:
    return f"{x:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default="build-bench", type=Path)
    ap.add_argument("--binary", action="append", type=Path,
                    help="benchmark binary (repeatable); default: bench_muon, bench_muon_native and "
                         "bench_muon_blas from <build-dir>/benchmarks where they exist")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the median is reported")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per repetition (at least one call)")
    ap.add_argument("--shapes", default=",".join(f"{r}x{c}" for r, c in SHAPES))
    ap.add_argument("--no-step", action="store_true", help="skip the optimizer-step comparison")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    args = ap.parse_args()

    try:
        import torch
    except ImportError:
        sys.exit("torch is not installed; see benchmarks/README.md")
    if not hasattr(torch.optim, "Muon"):
        sys.exit(f"torch {torch.__version__} has no torch.optim.Muon (needs >= 2.9)")

    binaries = args.binary or [args.build_dir / "benchmarks" / v for v in VARIANTS
                               if (args.build_dir / "benchmarks" / v).exists()]
    if not binaries:
        sys.exit(f"no benchmark binary under {args.build_dir}/benchmarks; build with -DMUON_BUILD_BENCHMARKS=ON")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",") if s]
    all_threads = os.cpu_count() or 1
    modes = torch_modes(all_threads)
    load_start = os.getloadavg()

    ours: dict[str, dict] = {b.name: {} for b in binaries}
    contexts: dict[str, dict] = {}
    theirs: dict = {"ns": {}, "step": {}}
    for rows, cols in shapes:
        names = [f"ns5/f32/{rows}x{cols}"] + [gemm_name(p) for p in ns_products(rows, cols)]
        for b in binaries:
            res, ctx = run_ours(b, names, args)
            ours[b.name].update(res)
            contexts[b.name] = ctx
        for label, threads, clock in modes:
            theirs["ns"][(label, rows, cols)] = torch_ns_case(torch, rows, cols, args, threads, clock)
        print(f"measured {rows}x{cols}", file=sys.stderr)
    if not args.no_step:
        for b in binaries:
            res, ctx = run_ours(b, ["step/f32/transformer"], args)
            ours[b.name].update(res)
        for label, threads, clock in modes:
            for dtype in ("fp32", "bf16"):
                theirs["step"][(label, dtype)] = torch_step_case(torch, args, threads, clock, dtype)
        print("measured step", file=sys.stderr)
    load_end = os.getloadavg()
    torch.set_num_threads(all_threads)

    # ---- context ----
    ctx0 = next(iter(contexts.values()))
    print("## Context\n")
    print(f"- CPU: {ctx0.get('cpu_model')} ({ctx0.get('num_cpus')} logical CPUs, "
          f"{ctx0.get('mhz_per_cpu')} MHz); load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")
    print(f"- python {platform.python_version()}, torch {torch.__version__} "
          f"(CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"MKL {'yes' if torch.backends.mkl.is_available() else 'no'}, "
          f"mkldnn {'yes' if torch.backends.mkldnn.is_available() else 'no'}); "
          f"torch threads: 1 (fair column) and {all_threads} (all)")
    env_keys = sorted({k for c in contexts.values() for k in c if k.startswith("env.")})
    print("- environment: " + ", ".join(f"{k[4:]}={ctx0.get(k)}" for k in env_keys)
          + f"; OPENBLAS_NUM_THREADS passed to our binaries: {os.environ.get('OPENBLAS_NUM_THREADS', '1')}")
    for name, c in contexts.items():
        extra = f", OpenBLAS core {c['openblas_core']}" if "openblas_core" in c else ""
        print(f"- {name}: {c.get('muon_variant')}; {c.get('muon_compiler')} `{c.get('muon_cxx_flags')}`; "
              f"Eigen {c.get('eigen_version')} SIMD: {c.get('eigen_simd')}{extra}")
    print(f"- each number: median of {args.reps} repetitions of at least {args.min_time} s (at least one call)\n")

    # ---- torch.mm rates (1 thread) ----
    torch_gemm_rate = {}
    for (label, rows, cols), r in theirs["ns"].items():
        if label != "torch1":
            continue
        for p in ns_products(rows, cols):
            torch_gemm_rate[gemm_name(p)] = 2.0 * p[1] * p[2] * p[3] / r["gemms"][gemm_name(p)] * 1e-9
    # The machine's single-thread GEMM peak: the best float32 rate any GEMM reached in this run.
    ours_gemm_rates = [e["GFLOPS"] for r in ours.values() for n, e in r.items() if n.startswith("gemm/f32/")]
    peak1 = max(list(torch_gemm_rate.values()) + ours_gemm_rates)

    print("## GEMM alone (float32, 1 thread; time ratio ours / torch.mm)\n")
    print(f"Machine peak (1 thread) = the best float32 GEMM rate seen in this run = {peak1:.1f} GFLOP/s.\n")
    header = "| GEMM (C m x n, inner k) | torch.mm GFLOP/s | " + " | ".join(
        f"{b.name} GFLOP/s | {b.name} / torch" for b in binaries) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(binaries)))
    for name in sorted(torch_gemm_rate, key=lambda n: (n.split("/")[3], n)):
        row = f"| {name.removeprefix('gemm/f32/')} | {fmt(torch_gemm_rate[name], 1)} |"
        for b in binaries:
            rate = ours[b.name][name]["GFLOPS"]
            row += f" {fmt(rate, 1)} | {fmt(torch_gemm_rate[name] / rate)} |"
        print(row)

    print("\n## Newton-Schulz, 5 steps, float32 (time ratios ours / torch; below 1 = ours faster)\n")
    print("gemm_frac: time of the same 15 GEMMs run alone / time of the whole iteration (each side "
          "its own GEMM). % peak: achieved GFLOP/s / machine peak above.\n")
    print("| shape | binary | ours ms (CPU) | ours / torch 1 thread | ours / torch all threads (wall) "
          "| ours gemm_frac | torch gemm_frac (1 thread) | ours % peak | torch % peak (1 thread) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, cols in shapes:
        t1 = theirs["ns"][("torch1", rows, cols)]
        tn = theirs["ns"][("torchN", rows, cols)]
        t1_frac = sum(t1["gemms"].values()) * NS_STEPS / t1["ns"]
        t1_rate = ns_flops(rows, cols) / t1["ns"] * 1e-9
        for b in binaries:
            e = ours[b.name][f"ns5/f32/{rows}x{cols}"]
            print(f"| {rows}x{cols} | {b.name} | {fmt(ms(e), 1)} | {fmt(ms(e) / (t1['ns'] * 1e3))} | "
                  f"{fmt(e['wall_ms'] / (tn['ns'] * 1e3))} | {fmt(e['gemm_frac'])} | {fmt(t1_frac)} | "
                  f"{fmt(100 * e['GFLOPS'] / peak1, 0)} | {fmt(100 * t1_rate / peak1, 0)} |")

    if not args.no_step:
        print("\n## Optimizer step, 4-layer d=512 transformer (16 hidden matrices on Muon, 8192x512 "
              "embedding + 54 vectors on AdamW)\n")
        print("torch = torch.optim.Muon + torch.optim.AdamW. fp32: its Newton-Schulz switched to float32 "
              "(same arithmetic as ours); bf16: as shipped.\n")
        print("| binary | ours ms (CPU) | ours orth share | / torch fp32, 1 thread | / torch fp32, all (wall) "
              "| / torch bf16, 1 thread | / torch bf16, all (wall) |")
        print("|---|---|---|---|---|---|---|")
        for b in binaries:
            e = ours[b.name]["step/f32/transformer"]
            s = theirs["step"]
            print(f"| {b.name} | {fmt(ms(e), 0)} | {fmt(100 * e['orth_share'], 1)} % | "
                  f"{fmt(ms(e) / (s[('torch1', 'fp32')] * 1e3))} | {fmt(e['wall_ms'] / (s[('torchN', 'fp32')] * 1e3))} | "
                  f"{fmt(ms(e) / (s[('torch1', 'bf16')] * 1e3))} | {fmt(e['wall_ms'] / (s[('torchN', 'bf16')] * 1e3))} |")

    if args.json:
        dump = {"contexts": contexts, "ours": ours, "load": [load_start, load_end],
                "torch_ns": {f"{k[0]}/{k[1]}x{k[2]}": v for k, v in theirs["ns"].items()},
                "torch_step": {f"{k[0]}/{k[1]}": v for k, v in theirs["step"].items()}}
        args.json.write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
