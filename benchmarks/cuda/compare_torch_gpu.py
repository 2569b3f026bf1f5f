#!/usr/bin/env python3
"""One optimizer step on a GPU: muon (bench_cuda) against torch.optim.Muon + fused torch.optim.AdamW,
same device, same run, same parameter sets (GPT-2 small, 124 M; GPT-2-shaped 1.1 B: d 2048, 20
blocks), same hyperparameters (Muon lr 0.02, momentum 0.95, Nesterov, no weight decay,
adjust_lr_fn "original"; AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01).
torch.optim.Muon runs its Newton-Schulz in bf16 (it casts the update to bfloat16); ours runs in
bf16 (precision bf16: bf16 operands, float accumulation) and in fp32.

Usage (scripts/gpu_check.sh runs it):
  python3 benchmarks/cuda/compare_torch_gpu.py --bench build-gpu/benchmarks/cuda/bench_cuda --out OUT/
Writes OUT/bench_cuda.json (ours), OUT/torch_gpu.json (torch) and OUT/summary.md (the ratios).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def gpt2_shapes(d: int, layers: int, vocab: int = 50257, context: int = 1024):
    """(shape, matrix path?) in bench_cuda.cu's order."""
    shapes = [((vocab, d), False), ((context, d), False)]
    for _ in range(layers):
        shapes += [((d,), False), ((d,), False), ((3 * d, d), True), ((3 * d,), False), ((d, d), True), ((d,), False),
                   ((d,), False), ((d,), False), ((4 * d, d), True), ((4 * d,), False), ((d, 4 * d), True), ((d,), False)]
    return shapes + [((d,), False), ((d,), False)]


def torch_step(torch, d: int, layers: int, iterations: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(2024)
    matrices, others = [], []
    for shape, is_matrix in gpt2_shapes(d, layers):
        p = torch.nn.Parameter(torch.randn(*shape, generator=gen, device="cuda") * 0.02)
        p.grad = torch.randn(*shape, generator=gen, device="cuda") * 1e-3
        (matrices if is_matrix else others).append(p)
    opt_m = torch.optim.Muon(matrices, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                             adjust_lr_fn="original")
    opt_a = torch.optim.AdamW(others, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fused=True)

    def step():
        opt_m.step()
        opt_a.step()

    step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iterations):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1e-3)
    count = sum(p.numel() for p in matrices + others)
    del opt_m, opt_a, matrices, others
    torch.cuda.empty_cache()
    return {"parameters": count, "median_s": statistics.median(samples), "best_s": min(samples)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", required=True, help="path to bench_cuda")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--layers_1b", type=int, default=20)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch
    if not torch.cuda.is_available():
        print("compare_torch_gpu: torch sees no CUDA device", file=sys.stderr)
        return 4
    if not hasattr(torch.optim, "Muon"):
        print(f"compare_torch_gpu: torch {torch.__version__} has no torch.optim.Muon", file=sys.stderr)
        return 5

    # Ours first, in its own process (it frees its memory when it exits), then torch.
    t0 = time.time()
    ours_text = subprocess.run([args.bench, f"--iterations={args.iterations}", f"--layers_1b={args.layers_1b}"],
                               check=True, capture_output=True, text=True).stdout
    (out / "bench_cuda.json").write_text(ours_text)
    ours = json.loads(ours_text)
    theirs = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
              "gpt2_small": torch_step(torch, 768, 12, args.iterations),
              "1b": torch_step(torch, 2048, args.layers_1b, args.iterations)}
    (out / "torch_gpu.json").write_text(json.dumps(theirs, indent=2))

    lines = [f"# muon (CUDA backend) vs torch.optim.Muon + fused AdamW, one step, {theirs['device']}",
             f"torch {torch.__version__}; {args.iterations} timed steps each after one warm-up; "
             f"date {time.strftime('%Y-%m-%d', time.gmtime())}; took {time.time() - t0:.0f} s", "",
             "| set | parameters | torch (bf16 NS) median s | ours bf16 median s | torch / ours bf16 | ours fp32 median s | torch / ours fp32 |",
             "|---|---|---|---|---|---|---|"]
    for key, label in (("gpt2_small", "step_gpt2_small"), ("1b", "step_1b")):
        t, o = theirs[key], ours[label]
        lines.append(f"| {key} | {o['parameters']} | {t['median_s']:.4f} | {o['bf16']['median_s']:.4f} | "
                     f"{t['median_s'] / o['bf16']['median_s']:.2f}x | {o['full']['median_s']:.4f} | "
                     f"{t['median_s'] / o['full']['median_s']:.2f}x |")
    lines += ["", "Newton-Schulz (5 iterations) as a fraction of this device's measured bf16 GEMM peak "
              f"({max(v for k, v in ours['gemm'].items() if k.startswith('bf16/')):.0f} TFLOP/s):", ""]
    for name, r in ours["ns"].items():
        lines.append(f"- {name}: {r['tflops']:.1f} TFLOP/s, {100 * r['of_bf16_peak']:.0f} % of peak")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
