// Sharded<Muon<Cuda<float>>, NcclCommunicator> on one GPU (a 1-rank NCCL communicator) against
// the plain Muon<Cuda<float>> on the same data: parameters equal bit for bit after every step,
// the same skip on a NaN gradient, and a merged checkpoint that resumes. Exits 77 (CTest: skipped)
// without a CUDA device: CI builds it and has no GPU. One rank only exercises NCCL's broadcast,
// all-gather and all-reduce paths with a single participant; several ranks need several GPUs
// (NCCL refuses two ranks on one device), which this project's GPU machine does not have.
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <muon/backend/cuda/cuda.cuh>
#include <muon/distributed/nccl.hpp>
#include <muon/distributed/sharded.hpp>
#include <muon/optimizers/muon.hpp>

namespace {

using Backend = muon::backend::Cuda<float>;
using Opt = muon::Muon<Backend>;
using Sharded = muon::distributed::Sharded<Opt, muon::distributed::NcclCommunicator>;

int g_failures = 0;
void check(bool ok, const std::string& what) {
  if (ok) return;
  ++g_failures;
  std::fprintf(stderr, "FAIL: %s\n", what.c_str());
}

float dyadic(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  std::uint64_t h = a * 0x9e3779b97f4a7c15ull ^ (b + 1) * 1315423911ull ^ (c + 7) * 2654435761ull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 32;
  return static_cast<float>(static_cast<int>(h % 129) - 64) / 128.0f;
}

struct Tensor {
  const char* name;
  muon::Shape shape;
  muon::ParamOptions options{};
};

// Device parameters and gradients of one model, with host copies for filling and comparing.
struct Model {
  std::vector<Tensor> spec;
  std::vector<Backend::Buffer<float>> w, g;
  Backend& b;
  Model(std::vector<Tensor> s, Backend& backend) : spec(std::move(s)), b(backend) {
    for (std::size_t i = 0; i < spec.size(); ++i) {
      const auto n = static_cast<std::size_t>(spec[i].shape.numel());
      w.push_back(b.allocate<float>(n));
      g.push_back(b.allocate<float>(n));
      std::vector<float> host(n);
      for (std::size_t k = 0; k < n; ++k) host[k] = dyadic(99, i, k);
      upload(w[i], host);
    }
  }
  void upload(Backend::Buffer<float>& buf, const std::vector<float>& host) {
    b.copy_from_host(std::span<const float>(host), muon::backend::MatrixView<float>{buf.data(), 1, 1, static_cast<muon::index_t>(host.size())});
    b.synchronize();
  }
  std::vector<float> download(Backend::Buffer<float>& buf) {
    std::vector<float> host(buf.size());
    b.copy_to_host(muon::backend::MatrixView<const float>{buf.data(), 1, 1, static_cast<muon::index_t>(host.size())}, std::span<float>(host));
    b.synchronize();
    return host;
  }
  void gradients(int step, int nan_tensor = -1) {
    for (std::size_t i = 0; i < spec.size(); ++i) {
      std::vector<float> host(g[i].size());
      for (std::size_t k = 0; k < host.size(); ++k) host[k] = dyadic(static_cast<std::uint64_t>(step), i + 100, k);
      if (static_cast<int>(i) == nan_tensor) host[1] = std::numeric_limits<float>::quiet_NaN();
      upload(g[i], host);
    }
  }
  template <class O>
  void register_with(O& opt) {
    for (std::size_t i = 0; i < spec.size(); ++i)
      opt.add(spec[i].name, muon::raw(w[i].data(), spec[i].shape), muon::raw(g[i].data(), spec[i].shape), spec[i].options);
  }
};

void compare(Model& a, Model& b, const std::string& what) {
  for (std::size_t i = 0; i < a.spec.size(); ++i) {
    const auto x = a.download(a.w[i]), y = b.download(b.w[i]);
    check(x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0,
          what + ": tensor '" + a.spec[i].name + "' differs");
  }
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::puts("no CUDA device: skipped");
    return 77;
  }
  cudaStream_t stream = nullptr;
  cudaStreamCreate(&stream);
  ncclComm_t nccl = nullptr;
  int device = 0;
  if (ncclCommInitAll(&nccl, 1, &device) != ncclSuccess) {
    std::puts("FAIL: ncclCommInitAll");
    return 1;
  }
  using muon::Role;
  const std::vector<Tensor> spec = {{"embed", {50, 16}, {.role = Role::embedding}}, {"q", {32, 16}}, {"up", {64, 16}},
                                    {"down", {16, 64}}, {"norm", {16}, {.role = Role::norm}}, {"bias", {7}, {.role = Role::bias}}};
  const Opt::Options o{.lr = 0.02, .weight_decay = 0.01, .fallback = {.lr = 3e-3}};
  try {
    Backend b(stream);
    Model ms(spec, b), mr(spec, b);
    Sharded sh(muon::distributed::NcclCommunicator(nccl, stream), o, {}, Backend(stream));
    Opt ref(o, Backend(stream));
    ms.register_with(sh);
    mr.register_with(ref);
    for (int s = 1; s <= 4; ++s) {
      const int nan = s == 3 ? 2 : -1;  // step 3: a NaN in "up": both skip it
      ms.gradients(s, nan);
      mr.gradients(s, nan);
      const auto rs = sh.step();
      const auto rr = ref.step();
      check(rs.skipped.size() == rr.skipped.size(), "step " + std::to_string(s) + ": skipped lists differ");
      compare(ms, mr, "step " + std::to_string(s));
    }
    // A merged checkpoint (host bytes through NCCL) resumes to the same next step.
    std::stringstream merged;
    sh.save_merged(merged, {.parameters = true});
    Model m2(spec, b);
    Sharded sh2(muon::distributed::NcclCommunicator(nccl, stream), o, {}, Backend(stream));
    m2.register_with(sh2);
    sh2.load_merged(merged);
    ms.gradients(5);
    m2.gradients(5);
    mr.gradients(5);
    sh.step();
    sh2.step();
    ref.step();
    compare(m2, mr, "after the merged checkpoint");
    compare(ms, mr, "step 5");
  } catch (const std::exception& e) {
    check(false, std::string("exception: ") + e.what());
  }
  ncclCommDestroy(nccl);
  cudaStreamDestroy(stream);
  std::printf("nccl single-rank: %s (%d failures)\n", g_failures ? "FAILED" : "passed", g_failures);
  return g_failures ? 1 : 0;
}
