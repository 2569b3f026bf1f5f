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

These cases run our optimizer on one thread (Options::threads = 1; the GPT-2 section covers all
threads), so the fair column runs torch with torch.set_num_threads(1)
and compares CPU time (ours: the benchmark thread's CPU time; torch: the process's CPU time): on a
shared machine that is the cost of the work whatever else runs. The second column runs torch
with all threads and compares wall-clock time (ours: the benchmark's wall_ms counter).

Ratios are time ratios ours / torch: below 1 ours is faster. Needs torch >= 2.9 (torch.optim.Muon).
Not part of CI.

GPT-2 small (bench_step; --gpt2-only runs this section alone, --no-gpt2 leaves it out): one
optimizer step on GPT-2 small's parameter set (wte, wpe and every vector on AdamW, the 48 block
matrices on Muon), wall-clock, a warm-up step then the median of --reps steps, for four
configurations at 1 thread and at all threads: torch.optim.Muon + AdamW as shipped (bf16
Newton-Schulz) and with its Newton-Schulz in float32; ours (Options::threads) with the
orthogonalizer's precision full and bf16. Alongside, the same run's GEMM rates (torch.mm fp32 and
bf16 on the Newton-Schulz products, 1 and all threads; our backend's fp32 gemm, 1 thread): the
peak of a precision at a thread count is the best rate seen for it, and each row reports its
Newton-Schulz flops / step time as a fraction of the peak of its precision. --png draws the step
times (matplotlib), --json keeps every number.

  python3 benchmarks/compare_torch.py --build-dir build-bench [--reps 3] [--min-time 0.05]
  python3 benchmarks/compare_torch.py --build-dir build-bench --gpt2-only --png docs/img/gpt2_step.png
"""
from __future__ import annotations

import argparse
import contextlib
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
    return statistics.median(timeit_samples(fn, clock, min_time, reps))


def timeit_samples(fn, clock, min_time: float, reps: int) -> list[float]:
    """The mean time per call (seconds on `clock`) of each of `reps` repetitions, after one warm-up call."""
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
    return samples


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


def torch_muon_adamw(torch, shapes, seed: int):
    """torch.optim.Muon on the matrices of `shapes`, torch.optim.AdamW on the rest, with gradients set.

    muon::Muon's defaults: lr 0.02, momentum 0.95, Nesterov, no weight decay, lr * sqrt(max(1, r/c));
    the fallback is AdamW with torch's defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0.01).
    Values ~ N(0, 0.02), gradients ~ N(0, 1e-3)."""
    gen = torch.Generator().manual_seed(seed)
    matrices, others = [], []
    for _, shape, is_matrix in shapes:
        p = torch.nn.Parameter(torch.randn(*shape, generator=gen) * 0.02)
        p.grad = torch.randn(*shape, generator=gen) * 1e-3
        (matrices if is_matrix else others).append(p)
    opt_m = torch.optim.Muon(matrices, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                             adjust_lr_fn="original")
    opt_a = torch.optim.AdamW(others, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    return opt_m, opt_a


def torch_ns_fp32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz with every operation in float32 (the same arithmetic as ours)."""
    import torch

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


@contextlib.contextmanager
def torch_ns_precision(ns_dtype: str):
    """Within the block torch.optim.Muon runs its Newton-Schulz as shipped ("bf16") or in float32
    ("fp32"). Yields a one-element list counting the calls, so that a caller can check the patch
    took effect."""
    import torch.optim._muon as muon_impl

    shipped = muon_impl._zeropower_via_newtonschulz
    inner = torch_ns_fp32 if ns_dtype == "fp32" else shipped
    calls = [0]

    def counted(*a, **kw):
        calls[0] += 1
        return inner(*a, **kw)

    muon_impl._zeropower_via_newtonschulz = counted
    try:
        yield calls
    finally:
        muon_impl._zeropower_via_newtonschulz = shipped


def torch_step_case(torch, args, threads: int, clock, ns_dtype: str) -> float:
    torch.set_num_threads(threads)
    opt_m, opt_a = torch_muon_adamw(torch, transformer_shapes(), seed=100)

    def step():
        opt_m.step()
        opt_a.step()

    with torch_ns_precision(ns_dtype):
        return timeit(step, clock, args.min_time, args.reps)


# ---- GPT-2 small: one optimizer step (bench_step.cpp) ---------------------------------------------

GPT2_D, GPT2_VOCAB, GPT2_CONTEXT = 768, 50257, 1024
# (key, label, side, Newton-Schulz precision) of the four configurations, in table order.
GPT2_CONFIGS = [("torch_shipped", "torch, as shipped (bf16 NS)", "torch", "bf16"),
                ("torch_fp32", "torch, fp32 NS", "torch", "fp32"),
                ("ours_fp32", "ours, fp32", "ours", "fp32"),
                ("ours_bf16", "ours, bf16", "ours", "bf16")]
GEMM_ENV_PREFIXES = ("OPENBLAS_", "GOTO_", "OMP_", "GOMP_", "KMP_", "MKL_", "DNNL_", "ONEDNN_", "EIGEN_")
GEMM_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def gpt2_shapes(layers: int = 12, d: int = GPT2_D, vocab: int = GPT2_VOCAB, context: int = GPT2_CONTEXT):
    """GPT-2 small's parameters as (name, shape, matrix path?), the order and shapes of bench_step.cpp."""
    shapes = [("wte.weight", (vocab, d), False), ("wpe.weight", (context, d), False)]
    for l in range(layers):
        p = f"h.{l}."
        shapes += [(p + "ln_1.weight", (d,), False), (p + "ln_1.bias", (d,), False),
                   (p + "attn.c_attn.weight", (3 * d, d), True), (p + "attn.c_attn.bias", (3 * d,), False),
                   (p + "attn.c_proj.weight", (d, d), True), (p + "attn.c_proj.bias", (d,), False),
                   (p + "ln_2.weight", (d,), False), (p + "ln_2.bias", (d,), False),
                   (p + "mlp.c_fc.weight", (4 * d, d), True), (p + "mlp.c_fc.bias", (4 * d,), False),
                   (p + "mlp.c_proj.weight", (d, 4 * d), True), (p + "mlp.c_proj.bias", (d,), False)]
    shapes += [("ln_f.weight", (d,), False), ("ln_f.bias", (d,), False)]
    return shapes


def gpt2_ns_flops(layers: int) -> float:
    """Newton-Schulz flops of one step: per matrix 5 x (2n²m + 2n³ + 2n²m), n = min, m = max."""
    return sum(ns_flops(*shape) for _, shape, is_matrix in gpt2_shapes(layers) if is_matrix)


def gpt2_gemm_products(d: int = GPT2_D) -> list[tuple[str, int, int, int]]:
    """(layout, m, n, k) of the products of Newton-Schulz on the 768 x 3072 and 768 x 2304 matrices
    (A = X Xᵀ, A A, B X); bench_step's gemm/f32 cases are the first three."""
    return [("NT", d, d, 4 * d), ("NN", d, d, d), ("NN", d, 4 * d, d), ("NT", d, d, 3 * d), ("NN", d, 3 * d, d)]


def torch_gemm_rates(torch, threads: int, args) -> dict[str, dict]:
    """GFLOP/s of torch.mm in float32 and bfloat16 on the Newton-Schulz products, wall-clock:
    {"median": of the repetitions, "best": the fastest repetition}."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(5)
    rates = {}
    for layout, m, n, k in gpt2_gemm_products():
        a32 = torch.randn(m, k, generator=gen)
        b32 = torch.randn(n, k, generator=gen) if layout == "NT" else torch.randn(k, n, generator=gen)
        for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = a32.to(dtype), b32.to(dtype)
            fn = (lambda: a @ b.T) if layout == "NT" else (lambda: a @ b)
            t = timeit_samples(fn, time.perf_counter, args.gemm_min_time, args.reps)
            flops = 2.0 * m * n * k
            rates[f"{prec}/{layout}/{m}x{n}x{k}"] = {"median": flops / statistics.median(t) * 1e-9,
                                                     "best": flops / min(t) * 1e-9}
    return rates


def torch_gpt2_step(torch, layers: int, threads: int, ns_dtype: str, reps: int) -> dict:
    """One warm-up step, then `reps` timed steps (wall-clock) of torch.optim.Muon + AdamW."""
    torch.set_num_threads(threads)
    opt_m, opt_a = torch_muon_adamw(torch, gpt2_shapes(layers), seed=2024)
    matrices = len(opt_m.param_groups[0]["params"])

    def step():
        opt_m.step()
        opt_a.step()

    samples, cpu = [], []
    with torch_ns_precision(ns_dtype) as calls:
        step()
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            samples.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    if calls[0] != matrices * (reps + 1):
        sys.exit(f"torch.optim.Muon called Newton-Schulz {calls[0]} times for {matrices} matrices x "
                 f"{reps + 1} steps: the {ns_dtype} patch did not take effect (torch.optim._muon changed?)")
    del opt_m, opt_a
    return {"median": statistics.median(samples), "min": min(samples), "samples": samples,
            "cpu_over_wall": sum(cpu) / sum(samples), "threads": threads, "matrices": matrices}


def bench_name(run_name: str) -> str:
    """A Google Benchmark run name without the suffixes it adds (/iterations:N, /manual_time)."""
    return re.sub(r"/(iterations:\d+|manual_time)", "", run_name)


def run_bench_step(binary: Path, args, flags: list[str]) -> tuple[dict, dict]:
    """Runs bench_step with `flags`; returns ({name: entry}, context). With several repetitions the
    median aggregate is kept, with one the run itself. Environment passed through unchanged."""
    cmd = [str(binary), "--benchmark_format=json", f"--gpt2_layers={args.gpt2_layers}"] + flags
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    doc = json.loads(proc.stdout)
    single = not any(b.get("run_type") == "aggregate" for b in doc["benchmarks"])
    result, best = {}, {}
    for b in doc["benchmarks"]:
        name = bench_name(b.get("run_name", b["name"]))
        if b.get("run_type", "iteration") == "iteration" and "GFLOPS" in b:
            best[name] = max(best.get(name, 0.0), b["GFLOPS"])
        if b.get("error_occurred") or (single and b.get("run_type") == "iteration") \
                or b.get("aggregate_name") == "median":
            result[name] = dict(b)
    for name, rate in best.items():
        if name in result:
            result[name]["GFLOPS_best"] = rate
    return result, doc["context"]


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model and which of the GEMM-relevant flags it has, from /proc/cpuinfo."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or "unknown"
    return model, [f for f in GEMM_CPU_FLAGS if f in flags]


def run_gpt2(args, torch, binary: Path) -> dict:
    """The GPT-2-small section: GEMM peaks, our step (bench_step), torch's step; prints the table."""
    all_threads = os.cpu_count() or 1
    thread_sets = [("1", 1)] + ([("all", all_threads)] if all_threads > 1 else [])
    torch_default_threads = torch.get_num_threads()
    load_start = os.getloadavg()
    flops = gpt2_ns_flops(args.gpt2_layers)

    # GEMM rates of this run: ours (gemm/ cases of bench_step), torch.mm fp32 and bf16; the median
    # and the best of --reps repetitions (the peaks take the best).
    ours_gemm, ctx = run_bench_step(binary, args, [
        "--benchmark_filter=^gemm/", f"--benchmark_min_time={args.gemm_min_time}",
        f"--benchmark_repetitions={args.reps}"])
    torch_gemm = {key: torch_gemm_rates(torch, n, args) for key, n in thread_sets}
    print("gpt2: measured GEMM rates", file=sys.stderr)

    # Our steps: one invocation, every case; a warm-up step, then --reps timed steps per case.
    ours_step, _ = run_bench_step(binary, args, [
        "--benchmark_filter=^step/gpt2/", f"--step_iterations={args.reps}", "--benchmark_repetitions=1"])
    print("gpt2: measured our steps", file=sys.stderr)
    hw = int(ctx.get("hardware_threads", all_threads) or all_threads)

    steps: dict[str, dict] = {}
    for key, n in thread_sets:
        for cfg, _, side, prec in GPT2_CONFIGS:
            if side == "torch":
                r = torch_gpt2_step(torch, args.gpt2_layers, n, prec, args.reps)
            else:
                name = f"step/gpt2/{prec}/threads:{1 if key == '1' else hw}"
                e = ours_step.get(name)
                if e is None:
                    r = {"error": f"no result for {name}"}
                elif e.get("error_occurred"):
                    r = {"error": e.get("error_message", "skipped")}
                else:
                    r = {"median": e["step_s_median"], "min": e["step_s_min"], "cpu_over_wall": e["cpu_over_wall"],
                         "threads": int(e["threads"]), "matrices": int(e["matrices"]), "flops": e["flops"]}
                    if abs(e["flops"] - flops) > 1e-6 * flops:
                        print(f"warning: {name} counts {e['flops']:.4g} Newton-Schulz flops, this script "
                              f"{flops:.4g} (a tensor routed differently?)", file=sys.stderr)
            steps[f"{cfg}/{key}"] = r
        print(f"gpt2: measured torch steps, {n} thread(s)", file=sys.stderr)
    load_end = os.getloadavg()
    torch.set_num_threads(torch_default_threads)

    # Peaks: the best GEMM rate of each precision seen in this run at each thread count.
    peaks = {p: {} for p in ("fp32", "bf16")}
    sources = {p: {} for p in ("fp32", "bf16")}
    for key, _ in thread_sets:
        for name, r in torch_gemm[key].items():
            prec, rate = name.split("/")[0], r["best"]
            if rate > peaks[prec].get(key, 0.0):
                peaks[prec][key], sources[prec][key] = rate, f"torch.mm {name}"
    for name, e in ours_gemm.items():
        if e.get("error_occurred") or "GFLOPS" not in e:
            continue
        prec = {"f32": "fp32", "bf16": "bf16"}.get(name.split("/")[1])
        m = re.search(r"/threads:(\d+)", name)
        n = int(m.group(1)) if m else 1
        key = "1" if n == 1 else ("all" if n == all_threads else None)
        rate = e.get("GFLOPS_best", e["GFLOPS"])
        if prec and key and rate > peaks[prec].get(key, 0.0):
            peaks[prec][key], sources[prec][key] = rate, f"ours {name}"
    # What one thread reaches, all threads can: the all-threads peak is at least the 1-thread one
    # (on a busy machine a multi-threaded GEMM can come out below it).
    for prec in peaks:
        if "all" in dict(thread_sets) and peaks[prec].get("1", 0.0) > peaks[prec].get("all", 0.0):
            peaks[prec]["all"] = peaks[prec]["1"]
            sources[prec]["all"] = sources[prec]["1"] + " (1 thread; no all-threads GEMM was faster)"

    rows = []
    for key, n in thread_sets:
        ref_shipped = steps[f"torch_shipped/{key}"].get("median")
        ref_fp32 = steps[f"torch_fp32/{key}"].get("median")
        for cfg, label, side, prec in GPT2_CONFIGS:
            r = steps[f"{cfg}/{key}"]
            row = {"config": cfg, "label": label, "threads": r.get("threads", n), "thread_key": key,
                   "ns_precision": prec}
            if "median" in r:
                t = r["median"]
                row.update({"seconds": t, "vs_torch_shipped": t / ref_shipped if ref_shipped else None,
                            "vs_torch_fp32": t / ref_fp32 if ref_fp32 else None,
                            "ns_gflops": flops / t * 1e-9, "cpu_over_wall": r.get("cpu_over_wall")})
                peak = peaks[prec].get(key)
                row["peak_gflops"] = peak
                row["ns_frac_of_peak"] = flops / t * 1e-9 / peak if peak else None
            else:
                row["error"] = r.get("error")
            rows.append(row)

    # ---- print ----
    model, flags = cpu_info()
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(GEMM_ENV_PREFIXES)}
    matrices = sum(1 for _, _, m in gpt2_shapes(args.gpt2_layers) if m)
    blocks = f"{args.gpt2_layers} block{'s' if args.gpt2_layers != 1 else ''}"
    print(f"\n## GPT-2 small: one optimizer step ({blocks}, d={GPT2_D}, vocab {GPT2_VOCAB}, "
          f"context {GPT2_CONTEXT}; {matrices} matrices on Muon, the rest on AdamW)\n")
    if args.gpt2_layers != 12:
        print(f"**Reduced model: {blocks} instead of 12 (--gpt2-layers).**\n")
    print(f"- CPU: {model}; {os.cpu_count()} logical CPUs; GEMM flags: {' '.join(flags) or '(none)'} "
          f"(absent: {' '.join(f for f in GEMM_CPU_FLAGS if f not in flags) or 'none'})")
    print(f"- load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")
    print(f"- python {platform.python_version()}, torch {torch.__version__} (CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, MKL {'yes' if torch.backends.mkl.is_available() else 'no'}, "
          f"mkldnn {'yes' if torch.backends.mkldnn.is_available() else 'no'}); torch threads at start "
          f"{torch_default_threads}, interop {torch.get_num_interop_threads()}")
    print(f"- thread counts: " + ", ".join(f"{k} = {n}" for k, n in thread_sets)
          + f" (torch.set_num_threads; ours Options::threads, bench_step sees {hw} hardware threads)")
    print("- environment (BLAS / threads): " + (", ".join(f"{k}={v}" for k, v in env.items()) or "none set"))
    print(f"- bench_step: {ctx.get('muon_compiler')} `{ctx.get('muon_cxx_flags')}`; Eigen {ctx.get('eigen_version')} "
          f"SIMD: {ctx.get('eigen_simd')}; products on {ctx.get('product_library', '?')} (linked: "
          f"{ctx.get('product_libraries_linked') or 'none'})")
    print(f"- steps: one warm-up, then median of {args.reps} timed steps, wall-clock; GEMMs: {args.reps} "
          f"repetitions of at least {args.gemm_min_time} s each, wall-clock")
    print(f"- Newton-Schulz per step: {flops * 1e-9:.1f} GFLOP (per matrix 5 x (2n²m + 2n³ + 2n²m))\n")

    print("### GEMM rates in this run (GFLOP/s, wall-clock; median / best of the repetitions)\n")
    keys = [k for k, _ in thread_sets]
    print("| product (C m x n, inner k) | " + " | ".join(
        f"torch {p}, {k} thread{'s' if k != '1' else ''}" for p in ("fp32", "bf16") for k in keys) + " | ours (precision, threads) |")
    print("|---|" + "---|" * (2 * len(keys) + 1))
    for layout, m, n, k in gpt2_gemm_products():
        shape = f"{layout}/{m}x{n}x{k}"
        cells = [f"{fmt(torch_gemm[key][f'{p}/{shape}']['median'], 1)} / {fmt(torch_gemm[key][f'{p}/{shape}']['best'], 1)}"
                 for p in ("fp32", "bf16") for key in keys]
        mine = [f"{name.split('/')[1]} {re.sub(r'.*/threads:', '', name)}t: {fmt(e['GFLOPS'], 1)} / "
                f"{fmt(e.get('GFLOPS_best', e['GFLOPS']), 1)}"
                for name, e in ours_gemm.items()
                if "GFLOPS" in e and re.search("/" + re.escape(shape) + r"(/threads:\d+)?$", name)]
        print(f"| {shape} | " + " | ".join(cells) + f" | {', '.join(mine) or '—'} |")
    for prec in ("fp32", "bf16"):
        print(f"\nPeak {prec}: " + "; ".join(f"{k} thread{'s' if k != '1' else ''} {fmt(peaks[prec][k], 1)} "
                                            f"({sources[prec][k]})" for k in keys if k in peaks[prec]), end="")
    print("\n")

    print("### Seconds per step\n")
    print("Ratios: this row's time / the reference's at the same thread count (below 1 = faster). "
          "NS % peak: Newton-Schulz flops / step time / this run's peak of the matching precision "
          "at that thread count. The whole step is in the time; the flops count every product as a "
          "full GEMM, so an implementation with symmetric products (X Xᵀ as a rank-k update) can pass "
          "100 %.\n")
    print("| configuration | threads | s / step | / torch as shipped | / torch fp32 NS | NS GFLOP/s "
          "| NS % of peak | cpu / wall |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['label']} | {row['threads']} | skipped: {row['error']} | | | | | |")
            continue
        frac = row.get("ns_frac_of_peak")
        print(f"| {row['label']} | {row['threads']} | {fmt(row['seconds'], 3)} | {fmt(row['vs_torch_shipped'])} | "
              f"{fmt(row['vs_torch_fp32'])} | {fmt(row['ns_gflops'], 1)} | "
              f"{fmt(100 * frac, 0) + ' % of ' + row['ns_precision'] if frac is not None else '—'} | "
              f"{fmt(row['cpu_over_wall'])} |")

    if args.png:
        plot_gpt2(rows, thread_sets, args.png, args.gpt2_layers)

    return {"layers": args.gpt2_layers, "ns_flops": flops, "threads": dict(thread_sets), "cpu_model": model,
            "cpu_gemm_flags": flags, "torch": torch.__version__, "environment": env,
            "load": [load_start, load_end], "bench_step_context": ctx,
            "gemm": {"torch": torch_gemm, "ours": ours_gemm}, "peaks": peaks, "peak_sources": sources,
            "steps": steps, "ours_step_entries": ours_step, "rows": rows}


def plot_gpt2(rows: list[dict], thread_sets, path: Path, layers: int) -> None:
    """Grouped bars: seconds per step of the four configurations, one group per thread count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no chart written to {path}", file=sys.stderr)
        return
    width = 0.8 / len(GPT2_CONFIGS)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (cfg, label, _, _) in enumerate(GPT2_CONFIGS):
        xs, ys = [], []
        for g, (key, _) in enumerate(thread_sets):
            row = next(r for r in rows if r["config"] == cfg and r["thread_key"] == key)
            x = g + (i - (len(GPT2_CONFIGS) - 1) / 2) * width
            if "seconds" in row:
                xs.append(x)
                ys.append(row["seconds"])
                ax.annotate(f"{row['seconds']:.2f}", (x, row["seconds"]), ha="center", va="bottom", fontsize=8)
            else:
                ax.annotate("n/a", (x, 0), ha="center", va="bottom", fontsize=8)
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(thread_sets)))
    ax.set_xticklabels([f"{n} thread{'s' if n != 1 else ''}" for _, n in thread_sets])
    ax.set_ylabel("seconds per optimizer step (lower is better)")
    title = "GPT-2 small optimizer step: muon (Eigen, CPU) vs torch.optim.Muon + AdamW"
    if layers != 12:
        title += f"\n(reduced model: {layers} block{'s' if layers != 1 else ''})"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"chart written to {path}", file=sys.stderr)


# ---- report --------------------------------------------------------------------------------------

def fmt(x: float, digits=2) -> str:
    return f"{x:.{digits}f}"


def run_sections(args, torch) -> dict:
    """The Newton-Schulz, GEMM and 4-layer-transformer sections; returns their numbers."""
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

    return {"contexts": contexts, "ours": ours, "load": [load_start, load_end],
            "torch_ns": {f"{k[0]}/{k[1]}x{k[2]}": v for k, v in theirs["ns"].items()},
            "torch_step": {f"{k[0]}/{k[1]}": v for k, v in theirs["step"].items()}}


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
    ap.add_argument("--gpt2-only", action="store_true",
                    help="run only the GPT-2-small optimizer-step section (needs bench_step)")
    ap.add_argument("--no-gpt2", action="store_true", help="skip the GPT-2-small section")
    ap.add_argument("--gpt2-layers", type=int, default=12,
                    help="blocks of the GPT-2 model (default 12 = GPT-2 small; fewer for a quick check)")
    ap.add_argument("--step-binary", type=Path,
                    help="bench_step binary for the GPT-2 section (default <build-dir>/benchmarks/bench_step)")
    ap.add_argument("--png", type=Path, help="write a bar chart of the GPT-2 section (needs matplotlib)")
    ap.add_argument("--gemm-min-time", type=float, default=0.25,
                    help="GPT-2 section: seconds per repetition of each GEMM (default 0.25)")
    args = ap.parse_args()
    if args.gpt2_layers < 1 or args.reps < 1:
        ap.error("--gpt2-layers and --reps must be at least 1")

    try:
        import torch
    except ImportError:
        sys.exit("torch is not installed; see benchmarks/README.md")
    if not hasattr(torch.optim, "Muon"):
        sys.exit(f"torch {torch.__version__} has no torch.optim.Muon (needs >= 2.9)")

    dump: dict = {}
    if not args.gpt2_only:
        dump.update(run_sections(args, torch))
    if not args.no_gpt2 or args.gpt2_only:
        step_binary = args.step_binary or args.build_dir / "benchmarks" / "bench_step"
        if step_binary.exists():
            dump["gpt2"] = run_gpt2(args, torch, step_binary)
        elif args.gpt2_only:
            sys.exit(f"no {step_binary}; build it with cmake --build {args.build_dir} --target bench_step")
        else:
            print(f"\n(GPT-2 section skipped: no {step_binary})")

    if args.json:
        args.json.write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
