// GPU measurements of the CUDA backend, for scripts/gpu_check.sh and compare_torch_gpu.py. A plain
// program (no Google Benchmark: the GPU machine is bare) that prints one JSON object:
//
//   device       name, compute capability, SMs, memory
//   gemm         cuBLAS alone: the measured peak of this device, bf16 operands with float
//                accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F) and fp32 (cublasSgemm), for
//                square sizes 4096 and 8192, TFLOP/s of the best of --iterations runs
//   ns           Newton-Schulz (muon::policy::NewtonSchulz, 5 iterations) on the backend, bf16 and
//                fp32 precision: 4096 x 4096, and GPT-2 small's matrix shapes batched 12 at a time
//                (one strided-batched product per stage, as the optimizer's buckets run them);
//                TFLOP/s counted as 5 x (2n²m + 2n³ + 2n²m), n = min, m = max of the shape, and
//                that rate as a fraction of the bf16 GEMM peak measured above
//   step         one muon::Muon<Cuda<float>>::step() (Muon on the matrices, AdamW on the rest) on
//                GPT-2 small (124 M) and on a 1.1 B-parameter GPT-2-shaped set (d 2048, 20
//                blocks), bf16 and fp32 precision: median and best seconds of --iterations steps
//                after one warm-up step, with the hyperparameters compare_torch_gpu.py gives torch
//
// Flags: --iterations=N (default 10), --only=gemm|ns|step (default all), --layers_1b=N (default 20).
// All times are wall-clock between CUDA events on the backend's stream.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <muon/backend/cuda/cuda.cuh>
#include <muon/muon.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using muon::index_t;
using muon::backend::MatrixView;
using Backend = muon::backend::Cuda<float>;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "bench_cuda: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "bench_cuda: %s: cuBLAS status %d\n", what, static_cast<int>(s));
    std::exit(2);
  }
}

// Device memory filled with N(0, scale) values (generated on the host once, fixed seed).
struct DeviceArray {
  float* p = nullptr;
  std::size_t n = 0;
  DeviceArray(std::size_t count, unsigned seed, float scale) : n(count) {
    check(cudaMalloc(reinterpret_cast<void**>(&p), std::max<std::size_t>(n, 1) * sizeof(float)), "cudaMalloc");
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> host(n);
    for (auto& v : host) v = d(rng);
    check(cudaMemcpy(p, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(p); }
};

// Seconds of each of `iterations` runs of f, timed with events on `stream` after one warm-up.
std::vector<double> time_runs(cudaStream_t stream, int iterations, const std::function<void()>& f) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  f();
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<double> out;
  for (int i = 0; i < iterations; ++i) {
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    f();
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    out.push_back(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return out;
}
double best(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double ns_flops(index_t batch, index_t rows, index_t cols, int steps) {
  const double n = static_cast<double>(std::min(rows, cols)), m = static_cast<double>(std::max(rows, cols));
  return static_cast<double>(batch) * steps * (2 * n * n * m + 2 * n * n * n + 2 * n * n * m);
}

struct Json {
  std::string text = "{";
  bool first = true;
  void key(const std::string& k) {
    text += (first ? "\n  \"" : ",\n  \"") + k + "\": ";
    first = false;
  }
  void raw(const std::string& k, const std::string& v) {
    key(k);
    text += v;
  }
  static std::string num(double v) {
    char b[64];
    std::snprintf(b, sizeof b, "%.6g", v);
    return b;
  }
  static std::string str(const std::string& v) { return "\"" + v + "\""; }
};

// ---- cuBLAS peak -------------------------------------------------------------------------------

std::string gemm_peaks(cudaStream_t stream, int iterations, double& bf16_peak) {
  cublasHandle_t h;
  check(cublasCreate(&h), "cublasCreate");
  check(cublasSetStream(h, stream), "cublasSetStream");
  std::string out = "{";
  bool first = true;
  bf16_peak = 0;
  for (int n : {4096, 8192}) {
    const std::size_t count = static_cast<std::size_t>(n) * n;
    DeviceArray a(count, 1, 1.0f), b(count, 2, 1.0f), c(count, 3, 1.0f);
    void *a16 = nullptr, *b16 = nullptr;
    check(cudaMalloc(&a16, count * 2), "cudaMalloc");
    check(cudaMalloc(&b16, count * 2), "cudaMalloc");
    Backend conv(stream);  // fills the bf16 operands through the backend's own rounding
    conv.convert(MatrixView<const float>{a.p, 1, n, n}, MatrixView<muon::bfloat16>{static_cast<muon::bfloat16*>(a16), 1, n, n});
    conv.convert(MatrixView<const float>{b.p, 1, n, n}, MatrixView<muon::bfloat16>{static_cast<muon::bfloat16*>(b16), 1, n, n});
    const float one = 1.0f, zero = 0.0f;
    const double flops = 2.0 * n * n * static_cast<double>(n);
    const auto t16 = time_runs(stream, iterations, [&] {
      check(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a16, CUDA_R_16BF, n, b16, CUDA_R_16BF, n, &zero, c.p,
                         CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
    });
    const auto t32 = time_runs(stream, iterations, [&] {
      check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a.p, n, b.p, n, &zero, c.p, n), "cublasSgemm");
    });
    const double r16 = flops / best(t16) * 1e-12, r32 = flops / best(t32) * 1e-12;
    bf16_peak = std::max(bf16_peak, r16);
    out += std::string(first ? "" : ", ") + "\"bf16/" + std::to_string(n) + "\": " + Json::num(r16) + ", \"fp32/" +
           std::to_string(n) + "\": " + Json::num(r32);
    first = false;
    cudaFree(a16);
    cudaFree(b16);
  }
  cublasDestroy(h);
  return out + ", \"unit\": \"TFLOP/s, best run\"}";
}

// ---- Newton-Schulz alone -----------------------------------------------------------------------

std::string ns_rates(cudaStream_t stream, int iterations, double bf16_peak) {
  struct Case {
    const char* name;
    index_t batch, rows, cols;
  };
  const Case cases[] = {{"4096x4096", 1, 4096, 4096},
                        {"gpt2/12x768x768", 12, 768, 768},
                        {"gpt2/12x2304x768", 12, 2304, 768},
                        {"gpt2/12x3072x768", 12, 3072, 768},
                        {"gpt2/12x768x3072", 12, 768, 3072}};
  std::string out = "{";
  bool first = true;
  for (const Case& c : cases) {
    for (muon::Precision p : {muon::Precision::bf16, muon::Precision::full}) {
      Backend b(stream);
      muon::policy::NewtonSchulz ns({.precision = p});
      DeviceArray x(static_cast<std::size_t>(c.batch * c.rows * c.cols), 7, 1.0f);
      muon::Workspace<Backend> ws;
      ws.allocate(b, ns.plan(b, c.batch, c.rows, c.cols));
      const MatrixView<float> view{x.p, c.batch, c.rows, c.cols};
      const auto t = time_runs(stream, iterations, [&] { ns.apply(b, view, ws); });
      const double rate = ns_flops(c.batch, c.rows, c.cols, 5) / best(t) * 1e-12;
      out += std::string(first ? "" : ", ") + "\n    \"" + c.name + "/" + muon::to_string(p) + "\": {\"seconds\": " +
             Json::num(best(t)) + ", \"tflops\": " + Json::num(rate) + ", \"of_bf16_peak\": " + Json::num(rate / bf16_peak) +
             "}";
      first = false;
    }
  }
  return out + "}";
}

// ---- One optimizer step ------------------------------------------------------------------------

struct Param {
  std::string name;
  muon::Shape shape;
  muon::Role role;
  std::unique_ptr<DeviceArray> w, g;
};

// GPT-2's parameter set with width d and `layers` blocks (Linear layout (out, in)); d = 768 and
// 12 blocks is GPT-2 small (124 M); d = 2048 and 20 blocks is 1.1 B.
std::vector<Param> gpt2_params(index_t d, int layers) {
  std::vector<Param> t;
  unsigned seed = 2024;
  auto add = [&](std::string name, muon::Shape shape, muon::Role role) {
    std::size_t n = 1;
    for (std::size_t i = 0; i < shape.rank(); ++i) n *= static_cast<std::size_t>(shape[i]);
    t.push_back({std::move(name), shape, role, std::make_unique<DeviceArray>(n, ++seed, 0.02f),
                 std::make_unique<DeviceArray>(n, ++seed, 1e-3f)});
  };
  add("wte.weight", muon::Shape{50257, d}, muon::Role::embedding);
  add("wpe.weight", muon::Shape{1024, d}, muon::Role::embedding);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", muon::Shape{d}, muon::Role::norm);
    add(p + "ln_1.bias", muon::Shape{d}, muon::Role::bias);
    add(p + "attn.c_attn.weight", muon::Shape{3 * d, d}, muon::Role::none);
    add(p + "attn.c_attn.bias", muon::Shape{3 * d}, muon::Role::bias);
    add(p + "attn.c_proj.weight", muon::Shape{d, d}, muon::Role::none);
    add(p + "attn.c_proj.bias", muon::Shape{d}, muon::Role::bias);
    add(p + "ln_2.weight", muon::Shape{d}, muon::Role::norm);
    add(p + "ln_2.bias", muon::Shape{d}, muon::Role::bias);
    add(p + "mlp.c_fc.weight", muon::Shape{4 * d, d}, muon::Role::none);
    add(p + "mlp.c_fc.bias", muon::Shape{4 * d}, muon::Role::bias);
    add(p + "mlp.c_proj.weight", muon::Shape{d, 4 * d}, muon::Role::none);
    add(p + "mlp.c_proj.bias", muon::Shape{d}, muon::Role::bias);
  }
  add("ln_f.weight", muon::Shape{d}, muon::Role::norm);
  add("ln_f.bias", muon::Shape{d}, muon::Role::bias);
  return t;
}

std::string step_times(cudaStream_t stream, int iterations, const char* label, index_t d, int layers) {
  const auto params = gpt2_params(d, layers);
  std::size_t count = 0;
  for (const auto& p : params) count += p.w->n;
  std::string out = "{\"parameters\": " + std::to_string(count);
  for (muon::Precision precision : {muon::Precision::bf16, muon::Precision::full}) {
    muon::Muon<Backend>::Options o;
    o.lr = 0.02;
    o.momentum = 0.95;
    o.nesterov = true;
    o.weight_decay = 0.0;
    o.lr_adjust = muon::LrAdjust::original;
    o.threads = 1;
    o.orthogonalizer.precision = precision;
    o.fallback.lr = 1e-3;
    o.fallback.beta1 = 0.9;
    o.fallback.beta2 = 0.999;
    o.fallback.eps = 1e-8;
    o.fallback.weight_decay = 0.01;
    muon::Muon<Backend> opt(o, Backend(stream));
    for (const auto& p : params)
      opt.add(p.name, muon::raw(p.w->p, p.shape), muon::raw(p.g->p, p.shape), {.role = p.role});
    const auto t = time_runs(stream, iterations, [&] {
      if (!opt.step().all_applied()) {
        std::fprintf(stderr, "bench_cuda: a step skipped a tensor (%s)\n", label);
        std::exit(3);
      }
    });
    out += std::string(", \"") + muon::to_string(precision) + "\": {\"median_s\": " + Json::num(median(t)) +
           ", \"best_s\": " + Json::num(best(t)) + "}";
  }
  return out + "}";
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 10, layers_1b = 20;
  std::string only = "all";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--iterations=", 0) == 0)
      iterations = std::max(1, std::atoi(a.c_str() + 13));
    else if (a.rfind("--only=", 0) == 0)
      only = a.substr(7);
    else if (a.rfind("--layers_1b=", 0) == 0)
      layers_1b = std::max(1, std::atoi(a.c_str() + 12));
    else {
      std::fprintf(stderr, "usage: bench_cuda [--iterations=N] [--only=gemm|ns|step] [--layers_1b=N]\n");
      return 1;
    }
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::fprintf(stderr, "bench_cuda: no CUDA device\n");
    return 4;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

  Json j;
  j.raw("device", "{\"name\": " + Json::str(prop.name) + ", \"compute_capability\": " + Json::str(std::to_string(prop.major) + "." +
                                                                                              std::to_string(prop.minor)) +
                      ", \"sms\": " + std::to_string(prop.multiProcessorCount) +
                      ", \"memory_gib\": " + Json::num(static_cast<double>(prop.totalGlobalMem) / (1 << 30)) + "}");
  j.raw("iterations", std::to_string(iterations));
  double peak = 0;
  if (only == "all" || only == "gemm" || only == "ns") j.raw("gemm", gemm_peaks(stream, iterations, peak));
  if (only == "all" || only == "ns") j.raw("ns", ns_rates(stream, iterations, peak));
  if (only == "all" || only == "step") {
    j.raw("step_gpt2_small", step_times(stream, iterations, "gpt2 small", 768, 12));
    j.raw("step_1b", step_times(stream, iterations, "1.1B", 2048, layers_1b));
  }
  std::printf("%s\n}\n", j.text.c_str());
  cudaStreamDestroy(stream);
  return 0;
}
