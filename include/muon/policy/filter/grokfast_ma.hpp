#pragma once
// GrokfastMA: amplifies the slow (low-frequency) part of each gradient with a moving average
// over the last `window` raw gradients, before either path sees it:
//   append g to the window (the oldest falls out once it holds `window` gradients)
//   while warming up (warmup and fewer than `window` gradients seen):  g' <- g
//   otherwise:  avg <- mean (or sum) of the window, the current gradient included
//               g' <- g + lamb avg
// The window holds raw gradients, never g'. The user's gradient is not modified: g' is written
// to workspace. A skipped step (NaN/Inf gradient) never reaches the filter, so it leaves the
// window as it was.
// Follows ironjr/grokfast grokfast.py::gradfilter_ma with trigger=False. Lee, Kang, Lee, Kim,
// "Grokfast: Accelerated Grokking by Amplifying Slow Gradients" (arXiv:2405.20233). Defaults are
// the official code's: window 100, lamb 5.0, mean, warmup on.
//
// How the average is computed: the window is a ring buffer of `window` rows of numel values,
// allocated whole at registration; each step overwrites the oldest row and then sums the rows
// again from scratch, as one GEMM  g' <- g + (lamb / count) * ones(1 x count) * ring(count x
// numel)  on the backend. We chose the full sum over a running sum (s += g - oldest) because a
// running sum in float picks up rounding error at every step and never sheds it, so over a long
// run it drifts from the true window sum; the full sum is exact to a few ulps at every step and
// is what the official code does (sum(deque)). Its price is reading window x numel values per
// step (the same as the official code); the GEMM keeps that to one backend call.
// State per tensor: the ring ("window", window x numel values), a row of ones the GEMM uses
// ("ones", window values), the number of gradients held ("count", <= window) and the row the
// next gradient goes to ("head").
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "muon/backend/concept.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/param.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

class GrokfastMA {
 public:
  // How the window's gradients are combined (the official code's filter_type).
  enum class Reduction {
    mean,  // sum / number of gradients held
    sum,
  };

  struct Options {
    int window = 100;                        // gradients kept, >= 1
    double lamb = 5.0;                       // amplification of the average, finite
    Reduction reduction = Reduction::mean;
    bool warmup = true;                      // pass gradients unchanged until the window is full
  };

  template <class B>
  struct State {
    typename B::template Buffer<typename B::value_type> window;  // ring, window x numel
    typename B::template Buffer<typename B::value_type> ones;    // window values, all 1
    std::uint64_t count = 0;                                     // rows filled, <= window
    std::uint64_t head = 0;                                      // row the next gradient goes to
    template <class V>
    void visit(V&& v) {
      v("window", window);
      v("ones", ones);
      v("count", count);
      v("head", head);
    }
  };

  GrokfastMA() : GrokfastMA(Options{}) {}
  explicit GrokfastMA(const Options& options) : options_(options) {
    if (options_.window < 1)
      detail::fail("GrokfastMA: option 'window' must be >= 1, got " + std::to_string(options_.window));
    detail::require_finite("GrokfastMA", "lamb", options_.lamb);
    if (options_.reduction != Reduction::mean && options_.reduction != Reduction::sum)
      detail::fail("GrokfastMA: option 'reduction' must be Reduction::mean or Reduction::sum");
  }

  [[nodiscard]] const Options& options() const { return options_; }
  // What load() accepts: count <= window and head < window (head indexes the ring).
  [[nodiscard]] detail::StateLimits limits(std::string_view key) const {
    const auto window = static_cast<std::uint64_t>(options_.window);
    if (key == "count") return {.max_counter = window};
    if (key == "head") return {.max_counter = window - 1};
    return {};
  }

  template <class B>
  [[nodiscard]] State<B> make_state(B& b, const ParamInfo& info) {
    using T = typename B::value_type;
    const index_t n = info.shape.numel();
    const auto w = static_cast<index_t>(options_.window);
    State<B> s{b.template allocate<T>(static_cast<std::size_t>(w * n)), b.template allocate<T>(static_cast<std::size_t>(w)),
               0, 0};
    backend::MatrixView<T> ones{s.ones.data(), 1, 1, w};
    b.transform(ones, One{}, ones);
    b.reserve_gemm(1, n, w);  // so the first step's GEMM finds its scratch ready
    return s;
  }

  [[nodiscard]] WorkspaceNeed plan(const ParamInfo& info) const {
    return WorkspaceNeed{}.add_matrix(1, 1, info.shape.numel());
  }

  template <class B>
  backend::MatrixView<const typename B::value_type> apply(B& b, State<B>& s,
                                                          backend::MatrixView<const typename B::value_type> g,
                                                          Workspace<B>& ws) {
    using T = typename B::value_type;
    const auto gf = g.flat();
    const index_t n = gf.size();
    const auto w = static_cast<std::uint64_t>(options_.window);
    const std::uint64_t head = s.head % w;  // (a loaded state is trusted no further than this)
    backend::MatrixView<T> row{s.window.data() + static_cast<index_t>(head) * n, 1, 1, n};
    b.transform(row, fn::Copy{}, gf);
    s.head = (head + 1) % w;
    s.count = std::min(s.count + 1, w);
    if (options_.warmup && s.count < w) return g;

    // Rows 0 .. count-1 are the ones filled (the ring wraps only once it is full).
    const auto k = static_cast<index_t>(s.count);
    const double scale = options_.reduction == Reduction::mean ? options_.lamb / static_cast<double>(k) : options_.lamb;
    auto out = ws.take(g.batch, g.rows, g.cols);
    const auto of = out.flat();
    b.transform(of, fn::Copy{}, gf);
    b.gemm(backend::Trans::no, backend::Trans::no, static_cast<T>(scale),
           backend::MatrixView<const T>{s.ones.data(), 1, 1, k}, backend::MatrixView<const T>{s.window.data(), 1, k, n},
           T(1), of);
    b.transform(of, fn::Saturate<T>{}, of);  // a window of gradients near the float maximum sums past it
    return out;
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  // Ignores its input: fills a buffer with ones.
  struct One {
    template <class T>
    MUON_HOST_DEVICE T operator()(T) const {
      return T(1);
    }
  };

 private:
  Options options_;
};

}  // namespace muon::policy
