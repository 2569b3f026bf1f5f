#pragma once
// What the CUDA tests compare, shared by test_cuda.cu (nvcc, CUDA backend) and reference.cpp
// (the host compiler, Eigen backend). The two halves live in separate translation units because
// nvcc 13's front end stops with an internal error on a C++17 multiple using-declaration in
// muon/backend/eigen.hpp (`using ::Eigen::ColMajor, ::Eigen::RowMajor;`), and Eigen under nvcc
// also costs compile time the tests do not need.
#include <muon/muon.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace muon::test::cuda {

// One tensor of the comparison model.
struct Spec {
  std::string name;
  Shape shape;
  ParamOptions options{};
};

// The compositions compared, as tags: Tag::type<B> is the optimizer, Tag::configure(options)
// sets what the comparison needs beyond the defaults (the same on both backends).
struct Common {
  template <class O>
  static void configure(O& o) {
    o.threads = 1;
  }
};
#define MUON_CUDA_TEST_TAG(Tag, Alias)  \
  struct Tag : Common {                 \
    static constexpr const char* name = #Alias; \
    template <class B>                  \
    using type = ::muon::Alias<B>;      \
  };
MUON_CUDA_TEST_TAG(MuonTag, Muon)
MUON_CUDA_TEST_TAG(MuonSGDTag, MuonSGD)
MUON_CUDA_TEST_TAG(MuonLionTag, MuonLion)
MUON_CUDA_TEST_TAG(GrokfastTag, Grokfast)
MUON_CUDA_TEST_TAG(MuonGrokfastTag, MuonGrokfast)
MUON_CUDA_TEST_TAG(StiefelMuonTag, StiefelMuon)
MUON_CUDA_TEST_TAG(HypersphereMuonTag, HypersphereMuon)
MUON_CUDA_TEST_TAG(GrokfastMATag, GrokfastMA)
#undef MUON_CUDA_TEST_TAG
// MuonClip in weight_norm mode with a low cap, so that heads are clipped on both backends.
struct MuonClipTag {
  static constexpr const char* name = "MuonClip";
  template <class B>
  using type = ::muon::MuonClip<B>;
  template <class O>
  static void configure(O& o) {
    o.threads = 1;
    o.constraint.mode = policy::QKClipMode::weight_norm;
    o.constraint.max_head_norm = 0.5;
  }
};

// Muon with NorMuon's per-row normalisation.
struct NorMuonTag {
  static constexpr const char* name = "Muon (normuon)";
  template <class B>
  using type = ::muon::Muon<B>;
  template <class O>
  static void configure(O& o) {
    o.threads = 1;
    o.normuon = true;
  }
};

// Muon with its state in less memory (core/state_format.hpp): bf16 momentum, 8-bit AdamW moments.
struct LowMemoryTag {
  static constexpr const char* name = "Muon (bf16 momentum, q8 AdamW)";
  template <class B>
  using type = ::muon::Muon<B>;
  template <class O>
  static void configure(O& o) {
    o.threads = 1;
    o.momentum_state = {StateFormat::bf16};
    o.fallback.state = {StateFormat::q8, StateRounding::nearest_even, 16};
  }
};

inline std::size_t element_count(const Shape& s) {
  std::size_t n = 1;
  for (std::size_t i = 0; i < s.rank(); ++i) n *= static_cast<std::size_t>(s[i]);
  return n;
}

// What a run produced: the final parameters, and per step the number of skipped tensors and
// clipped heads.
template <class T>
struct RunResult {
  std::vector<std::vector<T>> params;
  std::vector<std::size_t> skipped;
  std::vector<std::size_t> clipped_heads;
};

// The run on the Eigen backend (reference.cpp): starts from w0, gradient grads[t][i] at step t.
template <class Tag, class T>
RunResult<T> eigen_run(const std::vector<Spec>& model, const std::vector<std::vector<T>>& w0,
                       const std::vector<std::vector<std::vector<T>>>& grads);

}  // namespace muon::test::cuda
