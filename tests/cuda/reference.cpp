// The Eigen half of the CUDA tests (see compositions.hpp): the same compositions, on the host.
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "compositions.hpp"

#include <algorithm>

namespace muon::test::cuda {

template <class Tag, class T>
RunResult<T> eigen_run(const std::vector<Spec>& model, const std::vector<std::vector<T>>& w0,
                       const std::vector<std::vector<std::vector<T>>>& grads) {
  using Opt = typename Tag::template type<backend::Eigen<T>>;
  typename Opt::Options options{};
  Tag::configure(options);
  Opt opt(options);
  RunResult<T> out;
  out.params = w0;
  std::vector<std::vector<T>> g;
  for (const auto& s : model) g.emplace_back(element_count(s.shape), T(0));
  for (std::size_t i = 0; i < model.size(); ++i)
    opt.add(model[i].name, raw(out.params[i].data(), model[i].shape), raw(g[i].data(), model[i].shape), model[i].options);
  for (const auto& step : grads) {
    for (std::size_t i = 0; i < g.size(); ++i) std::copy(step[i].begin(), step[i].end(), g[i].begin());
    const auto r = opt.step();
    out.skipped.push_back(r.skipped.size());
    out.clipped_heads.push_back(static_cast<std::size_t>(r.constraint.clipped_heads));
  }
  return out;
}

#define MUON_CUDA_REFERENCE(Tag)                                                                          \
  template RunResult<float> eigen_run<Tag, float>(const std::vector<Spec>&, const std::vector<std::vector<float>>&, \
                                                  const std::vector<std::vector<std::vector<float>>>&);     \
  template RunResult<double> eigen_run<Tag, double>(const std::vector<Spec>&,                               \
                                                    const std::vector<std::vector<double>>&,                \
                                                    const std::vector<std::vector<std::vector<double>>>&);
MUON_CUDA_REFERENCE(MuonTag)
MUON_CUDA_REFERENCE(MuonSGDTag)
MUON_CUDA_REFERENCE(MuonLionTag)
MUON_CUDA_REFERENCE(GrokfastTag)
MUON_CUDA_REFERENCE(MuonGrokfastTag)
MUON_CUDA_REFERENCE(StiefelMuonTag)
MUON_CUDA_REFERENCE(HypersphereMuonTag)
MUON_CUDA_REFERENCE(MuonClipTag)
MUON_CUDA_REFERENCE(GrokfastMATag)
MUON_CUDA_REFERENCE(NorMuonTag)
MUON_CUDA_REFERENCE(LowMemoryTag)
#undef MUON_CUDA_REFERENCE

}  // namespace muon::test::cuda
