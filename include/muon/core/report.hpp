#pragma once
// What the optimizer tells its user: where every parameter goes (RoutingReport), what memory it
// holds (MemoryReport) and what a step did (StepResult).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iomanip>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "muon/core/param.hpp"

namespace muon {

struct RoutingEntry {
  std::string name;                  // first registered name
  std::vector<std::string> aliases;  // further names of the same (tied) tensor
  Shape shape;
  Role role = Role::none;
  Path path = Path::fallback;
  std::string rule;
  double lr_scale = 1;  // matrix path: the tensor's lr factor (lr_adjust x modular); fallback: 1
  // Its parameter group (ParamOptions): lr multiplier, and weight decay when it replaces the path's.
  double group_lr_scale = 1;
  std::optional<double> weight_decay{};
  // State kept in another format than value_type ("momentum bf16", "fallback/exp_avg q8/256");
  // empty when all of it is full precision (core/state_format.hpp).
  std::string state;

  // "lr x 10, wd 0" for a tensor with group overrides, "" otherwise.
  [[nodiscard]] std::string group() const {
    std::ostringstream os;
    if (group_lr_scale != 1) os << "lr x " << group_lr_scale;
    if (weight_decay) os << (group_lr_scale != 1 ? ", " : "") << "wd " << *weight_decay;
    return os.str();
  }
};

struct RoutingReport {
  std::vector<RoutingEntry> entries;

  [[nodiscard]] std::size_t count(Path p) const {
    std::size_t n = 0;
    for (const auto& e : entries) n += e.path == p;
    return n;
  }
  [[nodiscard]] std::size_t elements(Path p) const {
    std::size_t n = 0;
    for (const auto& e : entries)
      if (e.path == p) n += static_cast<std::size_t>(e.shape.numel());
    return n;
  }
  // Share of all parameter elements that take the matrix path, in [0, 1].
  [[nodiscard]] double matrix_share() const {
    const double total = static_cast<double>(elements(Path::matrix) + elements(Path::fallback));
    return total == 0 ? 0.0 : static_cast<double>(elements(Path::matrix)) / total;
  }

  [[nodiscard]] std::string to_string() const {
    std::ostringstream os;
    os << *this;
    return os.str();
  }

  friend std::ostream& operator<<(std::ostream& os, const RoutingReport& r) {
    std::size_t wn = 9, ws = 5, wr = 4;
    auto display_name = [](const RoutingEntry& e) {
      std::string n = e.name;
      for (const auto& a : e.aliases) n += " = " + a;
      return n;
    };
    for (const auto& e : r.entries) {
      wn = std::max(wn, display_name(e).size());
      ws = std::max(ws, e.shape.to_string().size());
      wr = std::max(wr, std::string(muon::to_string(e.role)).size());
    }
    os << std::left << std::setw(static_cast<int>(wn)) << "parameter" << "  " << std::setw(static_cast<int>(ws))
       << "shape" << "  " << std::setw(static_cast<int>(wr)) << "role" << "  " << std::setw(8) << "path"
       << "  rule\n";
    for (const auto& e : r.entries)
      os << std::setw(static_cast<int>(wn)) << display_name(e) << "  " << std::setw(static_cast<int>(ws))
         << e.shape.to_string() << "  " << std::setw(static_cast<int>(wr)) << muon::to_string(e.role) << "  "
         << std::setw(8) << muon::to_string(e.path) << "  " << e.rule
         << (e.group().empty() ? "" : " [group: " + e.group() + "]")
         << (e.state.empty() ? "" : " [state: " + e.state + "]") << "\n";
    auto tensors = [](std::size_t n) { return std::to_string(n) + (n == 1 ? " tensor, " : " tensors, "); };
    os << "matrix path: " << tensors(r.count(Path::matrix)) << r.elements(Path::matrix)
       << " elements; fallback: " << tensors(r.count(Path::fallback)) << r.elements(Path::fallback)
       << " elements; matrix share " << std::fixed << std::setprecision(1) << 100.0 * r.matrix_share()
       << "%\n";
    os.unsetf(std::ios::floatfield);
    return os;
  }
};

struct MemoryReport {
  std::size_t matrix_state_bytes = 0;    // momentum buffers (+ constraint state)
  std::size_t fallback_state_bytes = 0;  // fallback optimizer state
  std::size_t filter_state_bytes = 0;    // gradient filter state
  std::size_t workspace_bytes = 0;       // scratch (planned, or allocated once stepping), all copies
  std::size_t workspace_copies = 1;      // one per thread that runs tensors side by side (Options::threads)
  std::size_t backend_scratch_bytes = 0; // e.g. GEMM packing buffers
  std::size_t master_weight_bytes = 0;   // value_type master copies of 16-bit / quantized parameters

  [[nodiscard]] std::size_t state_bytes() const {
    return matrix_state_bytes + fallback_state_bytes + filter_state_bytes + master_weight_bytes;
  }
  [[nodiscard]] std::size_t total_bytes() const { return state_bytes() + workspace_bytes + backend_scratch_bytes; }

  friend std::ostream& operator<<(std::ostream& os, const MemoryReport& m) {
    os << "state " << m.state_bytes() << " B (matrix " << m.matrix_state_bytes << ", fallback "
       << m.fallback_state_bytes << ", filter " << m.filter_state_bytes;
    if (m.master_weight_bytes > 0) os << ", master weights " << m.master_weight_bytes;
    os << "), workspace " << m.workspace_bytes
       << " B, backend scratch " << m.backend_scratch_bytes << " B";
    return os;
  }
};

// Index of a registered tensor (the order of first registration).
using ParamId = std::size_t;

// What one step() did. `skipped` lists the parameters whose update was skipped because their
// gradient held NaN or Inf (NonFinitePolicy::skip_parameter / skip_step); it views storage the
// optimizer owns and stays valid until the next step().
// What constraints did during a step, summed over tensors (filled by constraints that report;
// per-tensor detail stays in each tensor's constraint state).
struct ConstraintStats {
  std::size_t clipped_heads = 0;  // QK-Clip: heads rescaled this step
  double max_head_value = 0;      // QK-Clip: largest max-logit (logit mode) or head norm (weight mode) seen
  // QK-Clip, logit mode: query / key tensors updated this step with no max logits reported for
  // them, so not clipped (0 when the trainer reports every step; which ones:
  // State::stepped_without_logits()).
  std::size_t tensors_without_logits = 0;
  std::size_t dual_iterations = 0;  // Stiefel: dual-ascent iterations used, summed over tensors (one covers a stack's slices)
  double max_residual = 0;          // Stiefel: largest tangent residual ||W^T A + A^T W||_F / sqrt(numel) of a direction
  double max_stiefel_error = 0;     // Stiefel: largest ||W^T W - I||_F after the step (W tall; W W^T for wide)
  double max_sphere_error = 0;      // Hypersphere: largest | ||w|| - 1 | over constrained rows after the step
};

// Adds one group's (or thread's) numbers into another: counts add, maxima take the larger, and
// a NaN (a broken tensor) stays visible.
inline void merge_constraint_stats(ConstraintStats& into, const ConstraintStats& s) {
  auto worst = [](double a, double b) { return std::isnan(a) || std::isnan(b) ? std::nan("") : std::max(a, b); };
  into.clipped_heads += s.clipped_heads;
  into.max_head_value = worst(into.max_head_value, s.max_head_value);
  into.tensors_without_logits += s.tensors_without_logits;
  into.dual_iterations += s.dual_iterations;
  into.max_residual = worst(into.max_residual, s.max_residual);
  into.max_stiefel_error = worst(into.max_stiefel_error, s.max_stiefel_error);
  into.max_sphere_error = worst(into.max_sphere_error, s.max_sphere_error);
}

// Opt-in numbers about one step (Options::telemetry). Norms are over all tensors that were
// updated; the orthogonality error is the worst matrix (slice) of the step.
struct Telemetry {
  std::uint64_t step = 0;
  double lr = 0, fallback_lr = 0;
  double grad_norm = 0;           // ||g|| over all updated tensors, before the filter
  double filtered_grad_norm = 0;  // ||filter(g)||, the same tensors
  double filter_delta_norm = 0;   // ||filter(g) - g|| (Grokfast EMA: lamb * ||EMA||)
  double orthogonality_error = 0; // max over matrices of ||O O^T - I||_F / sqrt(n), n = min dim
  ConstraintStats constraint{};
  std::vector<std::string> skipped;  // names of tensors skipped for non-finite gradients

  // filtered / raw gradient norm (1 when there is no filter or no gradient).
  [[nodiscard]] double filter_ratio() const { return grad_norm > 0 ? filtered_grad_norm / grad_norm : 1.0; }

  // One JSON object on one line, for logs.
  [[nodiscard]] std::string to_json() const {
    std::ostringstream os;
    os.precision(9);
    os << "{\"step\":" << step << ",\"lr\":" << lr << ",\"fallback_lr\":" << fallback_lr
       << ",\"grad_norm\":" << grad_norm << ",\"filtered_grad_norm\":" << filtered_grad_norm
       << ",\"filter_ratio\":" << filter_ratio() << ",\"filter_delta_norm\":" << filter_delta_norm
       << ",\"orthogonality_error\":" << orthogonality_error << ",\"clipped_heads\":" << constraint.clipped_heads
       << ",\"max_head_value\":" << constraint.max_head_value
       << ",\"tensors_without_logits\":" << constraint.tensors_without_logits
       << ",\"dual_iterations\":" << constraint.dual_iterations
       << ",\"max_residual\":" << constraint.max_residual << ",\"max_stiefel_error\":" << constraint.max_stiefel_error
       << ",\"max_sphere_error\":" << constraint.max_sphere_error << ",\"skipped\":[";
    for (std::size_t i = 0; i < skipped.size(); ++i) {
      os << (i ? "," : "") << '"';
      for (char c : skipped[i]) {
        if (c == '"' || c == '\\') os << '\\';
        if (static_cast<unsigned char>(c) < 0x20) {
          os << ' ';
          continue;
        }
        os << c;
      }
      os << '"';
    }
    os << "]}";
    return os.str();
  }
};

// Per-call options of step().
struct StepOptions {
  // Mixed precision: the gradients hold (loss * S)'s gradient; pass 1 / S. Gradients are
  // unscaled in workspace (the trainer's buffers are not written), and any NaN / Inf gradient
  // skips the whole step and sets StepResult::overflow. value_type gradients need
  // Options::loss_scaling = true.
  std::optional<double> inv_scale{};
};

struct StepResult {
  std::uint64_t step = 0;  // steps taken so far, this one included
  std::span<const ParamId> skipped{};
  // A loss-scaled step (StepOptions::inv_scale) met a non-finite gradient and skipped every
  // tensor: the loss scale is too large (lower it and go on, as torch's GradScaler does).
  bool overflow = false;
  ConstraintStats constraint{};
  // The learning rates this step used: the base rates times the schedule's multiplier (the
  // matrix path's lr before its per-tensor shape / modular factors).
  double lr = 0, fallback_lr = 0;
  const Telemetry* telemetry = nullptr;  // set when Options::telemetry is on; valid until the next step()
  [[nodiscard]] bool all_applied() const { return skipped.empty(); }
};

}  // namespace muon
