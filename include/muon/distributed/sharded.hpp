#pragma once
// Sharded<Opt, Comm>: data-parallel training with any optimizer of the library, the matrix path
// sharded by owner (each matrix is orthogonalised on one rank only) and the fallback path
// sharded by elements (ZeRO-1: each rank keeps the optimizer state of its part only).
//
//   muon::distributed::MpiCommunicator comm(MPI_COMM_WORLD);
//   muon::distributed::Sharded<muon::Muon<muon::backend::Eigen<float>>, muon::distributed::MpiCommunicator>
//       opt(std::move(comm), {.lr = 0.02, .threads = 1});
//   opt.add("h0.attn", W, dW);  ...                 // every rank registers every tensor, same order
//   for (...) { forward, backward (local dW); opt.step(); }   // W is the same on every rank after
//
// Every rank holds the full registration list. At the first step (or finalize()) owners are
// fixed, the same on every rank: matrix-path tensors largest Newton-Schulz cost first
// (batch * (4 n^2 m + 2 n^3), n <= m its sides; ties in registration order), each to the least
// loaded rank (ties: the lowest rank); a fallback-path tensor of n elements is cut into size()
// contiguous slices (the first n % size() ranks get one element more). Each rank then builds
// ONE inner Opt that holds only its own matrices (whole, as registered) and its slice of every
// fallback tensor (a 1-D view, registered under the tensor's name with its role, group lr_scale
// and weight decay, and the fallback path forced). Fallback rules are elementwise (AdamW, Lion,
// SGD, and the Grokfast filters), so a slice is updated exactly as that part of the whole.
//
// step(), on every rank:
//   1. gradients to their owners, into staging buffers the size of what the rank holds:
//      GradientMode::reduce    (default) each rank's local gradient; reduce-sum to the owner of
//                              a matrix, reduce-scatter-sum of each fallback tensor's slices,
//                              then x 1/size() (the average);
//      GradientMode::averaged  the trainer all-reduced them already: each rank copies its parts.
//      A loss scale's inverse (StepOptions::inv_scale) is applied in the same multiply.
//   2. the non-finite decision: each rank counts NaN/Inf in what it staged, per tensor; one
//      all-reduce (max) of those flags, so every rank takes the same decision. Under
//      skip_parameter the parts of a bad tensor held elsewhere are poisoned (one NaN), so every
//      inner optimizer skips that tensor; skip_step (or a loss-scaled overflow) skips the step
//      on every rank; throw_error throws the same muon::Error on every rank, nothing changed.
//   3. the inner step (filter, momentum, orthogonalisation, constraint on the owner; the
//      fallback rule on each slice);
//   4. the parameters to every rank: broadcast of each matrix from its owner, all-gather of
//      each fallback tensor's slices (in place, in the trainer's tensors).
// Bytes sent per step (P elements of the matrix path, F of the fallback path, b bytes each,
// N ranks): reduce mode ~ (P + F) b to reduce plus (P + F) b to distribute, as one all-reduce
// of the gradients would cost (a ring reduce-scatter plus all-gather); averaged mode only the
// distribution. See docs/distributed.md.
//
// What is refused (muon::Error naming the tensor): 16-bit parameters or gradients (master
// weights are not sharded yet), a quantized view (fake_quant_bits) on a fallback tensor (its
// scale is one absmax over the whole tensor). Everything a rank refuses, every rank refuses:
// a failure on one rank is exchanged, and all throw the same error.
//
// Checkpoints: save / load per rank (the inner optimizer's checkpoint behind a header with the
// rank, the rank count and the owner map: the same N ranks load it), and save_merged /
// load_merged: one file in the single-process checkpoint format (core/checkpoint.hpp), every
// tensor whole under its name, which a run with any number of ranks, or a plain Opt, loads.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "muon/core/checkpoint.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/optimizer.hpp"
#include "muon/core/param.hpp"
#include "muon/core/registration.hpp"
#include "muon/core/report.hpp"
#include "muon/distributed/communicator.hpp"

namespace muon::distributed {

// Where the gradients given to step() come from.
enum class GradientMode {
  reduce,    // each rank's own (local batch) gradient: summed over ranks to the owner, averaged
  averaged,  // already averaged over ranks by the trainer (e.g. its own all-reduce): taken as is
};

struct ShardOptions {
  GradientMode gradients = GradientMode::reduce;
};

// Where the last step's time went on this rank (wall clock, seconds): staging the gradients
// (the reduction, or the copy), the non-finite decision, the inner step, and the distribution
// of the parameters. A rank waiting for a slower one shows it in the collectives' phases.
struct ShardStepTimes {
  double stage = 0, decide = 0, inner = 0, distribute = 0;
  double inner_cpu = 0;  // processor time of the inner step (std::clock: every thread of the process)
  [[nodiscard]] double total() const { return stage + decide + inner + distribute; }
};

// Who updates a tensor: its owner rank (matrix path) or each rank's element range (fallback).
struct Placement {
  Path path = Path::fallback;
  int owner = -1;                    // matrix path: the rank that updates it
  std::vector<std::size_t> counts;   // fallback path: elements per rank (rank order)
  [[nodiscard]] std::size_t offset(int rank) const {
    std::size_t at = 0;
    for (int r = 0; r < rank; ++r) at += counts[static_cast<std::size_t>(r)];
    return at;
  }
};

// What a rank holds, in bytes (Sharded::memory_report()).
struct ShardMemoryReport {
  MemoryReport inner;               // the rank's inner optimizer: its state, workspace, scratch
  std::size_t staging_bytes = 0;    // reduced gradients of the parts this rank holds
  std::size_t matrix_elements = 0;  // matrix-path elements this rank updates (owner)
  std::size_t fallback_elements = 0;  // fallback-path elements this rank updates (its slices)
  [[nodiscard]] std::size_t state_bytes() const {
    return inner.matrix_state_bytes + inner.filter_state_bytes + inner.fallback_state_bytes + inner.master_weight_bytes;
  }
};

// The Newton-Schulz cost of a matrix-path tensor, in multiply-adds per iteration (up to a
// constant): batch * (4 n^2 m + 2 n^3) with n <= m its two last dimensions.
[[nodiscard]] inline double orthogonalization_cost(const Shape& shape) {
  const double rows = static_cast<double>(shape.rows()), cols = static_cast<double>(shape.cols());
  const double lo = std::min(rows, cols), hi = std::max(rows, cols);
  return static_cast<double>(shape.batch()) * (4 * lo * lo * hi + 2 * lo * lo * lo);
}

// Owners for tensors of the given costs over `ranks` ranks: largest cost first (ties in the
// given order), each to the least loaded rank (ties: the lowest rank). Deterministic, so every
// rank computes the same map.
[[nodiscard]] inline std::vector<int> assign_owners(std::span<const double> costs, int ranks) {
  std::vector<std::size_t> order(costs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<std::size_t>(std::max(ranks, 1)), 0.0);
  std::vector<int> owner(costs.size(), 0);
  for (std::size_t i : order) {
    const auto r = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    load[r] += costs[i];
    owner[i] = static_cast<int>(r);
  }
  return owner;
}

template <class Opt, Communicator Comm>
class Sharded {
 public:
  using optimizer_type = Opt;
  using backend_type = typename Opt::backend_type;
  using value_type = typename Opt::value_type;
  using Options = typename Opt::Options;
  using communicator_type = Comm;

  explicit Sharded(Comm comm, Options options = {}, ShardOptions shard = {}, backend_type backend = backend_type{})
      : comm_(std::move(comm)),
        options_(std::move(options)),
        shard_(shard),
        backend_(std::move(backend)),
        router_(options_.router) {
    (void)Opt(options_, backend_);  // the options are checked here, on every rank alike
  }

  // Registers a tensor (every rank, same names in the same order, same shapes). Checked as
  // Optimizer::add checks (name, shape, memory, per-tensor options), plus what sharding needs.
  // Before the first step only: the owners are fixed then.
  template <TensorLike P, TensorLike G>
  ParamId add(std::string name, P&& param, G&& grad, ParamOptions options = {}) {
    if (inner_) detail::fail_param(name, "Sharded::add after the first step: register every tensor before it");
    auto [p, g] = detail::registration_refs<value_type>(name, std::forward<P>(param), std::forward<G>(grad));
    if (p.format != ElementFormat::value || g.format != ElementFormat::value)
      detail::fail_param(name, "Sharded: 16-bit parameters and gradients (master weights) are not sharded yet; "
                               "register value_type tensors");
    detail::Candidate c = detail::check_candidate(entries_, name, p, g, options, sizeof(value_type));
    Route route = router_.route(c.info);
    if (!options_.enable_muon && route.path == Path::matrix) route = {Path::fallback, "enable_muon off (router: " + route.rule + ")"};
    if (route.path == Path::matrix && (p.shape.rank() < 2 || p.shape.rank() > 3))
      detail::fail_param(name, "the matrix path needs a rank-2 or rank-3 tensor, got shape " + p.shape.to_string());
    if (route.path == Path::fallback && options.fake_quant_bits != 0)
      detail::fail_param(name, "Sharded: a quantized view (fake_quant_bits) on a fallback-path tensor is not sharded "
                               "(its scale is one absmax over the whole tensor)");
    if (const auto tie = detail::find_tie(entries_, c, p, g, options, route)) {
      entries_[*tie].aliases.push_back(std::move(name));
      return *tie;
    }
    const ParamId id = entries_.size();
    detail::RegisteredTensor e;  // by member: the record may grow fields that are not ours
    e.info = std::move(c.info);
    e.path = route.path;
    e.rule = std::move(route.rule);
    e.options = options;
    e.param_data = p.data;
    e.grad_data = g.data;
    e.param_bytes = c.param_bytes;
    e.grad_bytes = c.grad_bytes;
    e.layout = p.layout;
    e.format = p.format;
    entries_.push_back(std::move(e));
    return id;
  }

  // Fixes the owners and builds this rank's inner optimizer (the first step does it). Collective:
  // every rank calls it; a failure on any rank throws on every rank and leaves nothing built.
  void finalize() {
    if (inner_) return;
    std::vector<Placement> placement = plan();
    std::unique_ptr<Opt> inner;
    std::vector<Part> parts;
    agree([&] {
      inner = std::make_unique<Opt>(options_, backend_);
      parts = build(*inner, placement);
    });
    inner_ = std::move(inner);
    parts_ = std::move(parts);
    placement_ = std::move(placement);
    flags_ = inner_->backend().template allocate<typename backend_type::accum_type>(std::max<std::size_t>(parts_.size(), 1));
    flags_host_.assign(parts_.size(), 0);
    bad_.assign(entries_.size(), 0.0);
    stats_.assign(7, 0.0);
    probe_state_layout();
  }

  StepResult step(StepOptions step_options = {}) {
    finalize();
    if (step_options.inv_scale) {
      const double v = *step_options.inv_scale;
      if (!std::isfinite(v) || !(v > 0))
        detail::fail("Sharded::step: inv_scale must be finite and > 0, got " + detail::format_value(v));
    }
    auto& b = inner_->backend();
    using clock = std::chrono::steady_clock;
    auto t = clock::now();
    auto lap = [&t](double& into) {
      const auto now = clock::now();
      into = std::chrono::duration<double>(now - t).count();
      t = now;
    };
    times_ = {};
    stage_gradients(step_options.inv_scale);
    b.synchronize();
    lap(times_.stage);

    // 2. one decision for every rank.
    for (std::size_t k = 0; k < parts_.size(); ++k) b.count_non_finite(parts_[k].grad_view(), flags_.data() + k);
    if (!parts_.empty()) b.read(flags_.data(), std::span<typename backend_type::accum_type>(flags_host_));
    std::fill(bad_.begin(), bad_.end(), 0.0);
    for (std::size_t k = 0; k < parts_.size(); ++k)
      if (flags_host_[k] != 0) bad_[parts_[k].id] = 1.0;
    comm_.all_reduce(std::span<double>(bad_), ReduceOp::max);
    skipped_.clear();
    for (ParamId i = 0; i < entries_.size(); ++i)
      if (bad_[i] != 0) skipped_.push_back(i);

    const bool any_bad = !skipped_.empty();
    lap(times_.decide);
    if (any_bad && options_.non_finite == NonFinitePolicy::throw_error)
      detail::fail_param(entries_[skipped_.front()].info.name,
                         "gradient has non-finite (NaN/Inf) values (after the reduction over ranks); nothing was updated");
    const bool overflow = any_bad && step_options.inv_scale.has_value();
    const bool skip_all = any_bad && (overflow || options_.non_finite == NonFinitePolicy::skip_step);
    StepResult inner_result{};
    if (skip_all) {
      skipped_.clear();
      for (ParamId i = 0; i < entries_.size(); ++i) skipped_.push_back(i);
      inner_result = inner_->skip();
      // The rates the step would have used, as a single process reports them on a skipped step.
      const double multiplier = options_.schedule(inner_result.step);
      inner_result.lr = inner_->lr() * multiplier;
      inner_result.fallback_lr = inner_->fallback_lr() * multiplier;
    } else {
      if (any_bad) poison();
      const std::clock_t cpu = std::clock();
      inner_result = inner_->step();
      b.synchronize();  // the communicator may read the parameters on another stream
      times_.inner_cpu = static_cast<double>(std::clock() - cpu) / CLOCKS_PER_SEC;
      lap(times_.inner);
      distribute(/*only_good=*/true);
      lap(times_.distribute);
    }
    ConstraintStats stats = inner_result.constraint;
    agree_stats(stats);
    return {inner_result.step, std::span<const ParamId>(skipped_), overflow, stats, inner_result.lr, inner_result.fallback_lr,
            nullptr};
  }

  // QK-Clip (MuonClip and compositions with policy::QKClip), logit mode: this rank's largest
  // attention logit of each head for the coming step. Collective (every rank, same order): the
  // owner receives the maximum over ranks, as a single process would see over the whole batch.
  void set_max_logits(const std::string& name, std::span<const value_type> max_logits) {
    finalize();
    const ParamId id = this->id(name);
    const detail::RegisteredTensor& e = entries_[id];
    if (e.path != Path::matrix)
      detail::fail_param(e.info.name, "takes the fallback path; max logits are for query / key projections");
    std::vector<double> values(max_logits.begin(), max_logits.end());
    std::vector<double> count{static_cast<double>(values.size())};
    comm_.all_reduce(std::span<double>(count), ReduceOp::max);
    if (count[0] != static_cast<double>(values.size()))
      detail::fail_param(e.info.name, "set_max_logits: the ranks passed different numbers of heads");
    comm_.all_reduce(std::span<double>(values), ReduceOp::max);
    std::vector<value_type> reduced(values.begin(), values.end());
    agree([&] {
      if (placement_[id].owner != comm_.rank()) return;
      auto& state = inner_->constraint_state(inner_->id(e.info.name));
      if constexpr (requires { state.set_max_logits(inner_->backend(), std::span<const T>(reduced)); })
        state.set_max_logits(inner_->backend(), std::span<const T>(reduced));
      else
        detail::fail_param(e.info.name, "set_max_logits: this composition's constraint takes no max logits (use QKClip)");
    });
  }

  // ---- Introspection ---------------------------------------------------------------------------
  [[nodiscard]] int rank() const { return comm_.rank(); }
  [[nodiscard]] int size() const { return comm_.size(); }
  [[nodiscard]] Comm& communicator() { return comm_; }
  [[nodiscard]] std::size_t tensors() const { return entries_.size(); }
  [[nodiscard]] ParamId id(const std::string& name) const {
    for (ParamId i = 0; i < entries_.size(); ++i)
      if (entries_[i].named(name)) return i;
    detail::fail("no parameter named '" + name + "'");
  }
  [[nodiscard]] Path path(ParamId id) const { return entry(id).path; }
  // Where a tensor is updated (after finalize()).
  [[nodiscard]] const Placement& placement(ParamId id) const {
    entry(id);
    if (!inner_) detail::fail("Sharded::placement: owners are fixed at the first step (or finalize())");
    return placement_[id];
  }
  // This rank's inner optimizer (its own matrices and slices), after finalize().
  [[nodiscard]] Opt& inner() {
    if (!inner_) detail::fail("Sharded::inner: the inner optimizer is built at the first step (or finalize())");
    return *inner_;
  }
  // Where this rank's last step spent its time.
  [[nodiscard]] const ShardStepTimes& last_step_times() const { return times_; }
  [[nodiscard]] std::uint64_t steps_taken() const { return inner_ ? inner_->steps_taken() : 0; }
  [[nodiscard]] RoutingReport routing_report() const {
    RoutingReport r;
    for (const auto& e : entries_) {
      RoutingEntry x;  // by member: the entry may grow fields
      x.name = e.info.name;
      x.aliases = e.aliases;
      x.shape = e.info.shape;
      x.role = e.info.role;
      x.path = e.path;
      x.rule = e.rule;
      if (e.path == Path::matrix)  // the lr factor of its shape (and layer), as the owner applies it
        x.lr_scale = adjusted_lr(1.0, options_.lr_adjust, e.info.shape.rows(), e.info.shape.cols()) *
                     modular_factor(options_.modular, e.options.layer, e.options.depth, e.info.shape.rows(), e.info.shape.cols());
      x.group_lr_scale = e.options.lr_scale;
      x.weight_decay = e.options.weight_decay;
      r.entries.push_back(std::move(x));
    }
    return r;
  }
  [[nodiscard]] ShardMemoryReport memory_report() {
    finalize();
    ShardMemoryReport m;
    m.inner = inner_->memory_report();
    for (const Part& p : parts_) {
      m.staging_bytes += p.staging.size() * sizeof(value_type);
      (p.path == Path::matrix ? m.matrix_elements : m.fallback_elements) += p.staging.size();
    }
    return m;
  }

  // ---- Checkpoints -----------------------------------------------------------------------------
  using SaveOptions = typename Opt::SaveOptions;

  // This rank's part (header: rank, rank count, owner map; then the inner checkpoint). Loaded
  // by the same rank of a run with the same rank count and registrations.
  void save(std::ostream& os, SaveOptions save_options = {}) {
    finalize();
    std::ostringstream inner;
    inner_->save(inner, save_options);
    detail::CheckpointWriter w;
    w.put_raw(k_magic, sizeof(k_magic));
    w.put(k_version);
    w.put(static_cast<std::uint32_t>(comm_.rank()));
    w.put(static_cast<std::uint32_t>(comm_.size()));
    put_map(w);
    const std::string bytes = std::move(inner).str();
    w.put(static_cast<std::uint64_t>(bytes.size()));
    w.put_raw(bytes.data(), bytes.size());
    w.finish(os, "sharded checkpoint");
  }

  // Loads what save() wrote on this rank, all or nothing on every rank: each rank checks its
  // file completely; if any rank finds a problem, every rank throws and nothing changes.
  void load(std::istream& is) {
    finalize();
    std::string inner_bytes;
    agree([&] {
      detail::CheckpointReader r(is, k_format, inner_->checkpoint_size_bound() + map_bound() + 1024);
      const auto rank = r.get<std::uint32_t>();
      const auto ranks = r.get<std::uint32_t>();
      if (ranks != static_cast<std::uint32_t>(comm_.size()))
        detail::fail("sharded checkpoint: written by " + std::to_string(ranks) + " ranks, this run has " +
                     std::to_string(comm_.size()) + " (use save_merged / load_merged to change the rank count)");
      if (rank != static_cast<std::uint32_t>(comm_.rank()))
        detail::fail("sharded checkpoint: written by rank " + std::to_string(rank) + ", loaded on rank " +
                     std::to_string(comm_.rank()));
      check_map(r);
      const auto n = r.get<std::uint64_t>();
      const std::size_t at = r.skip_array(n, 1);
      inner_bytes.resize(static_cast<std::size_t>(n));
      r.read_array(at, inner_bytes.data(), inner_bytes.size());
      if (!r.at_end()) detail::fail("sharded checkpoint: unexpected bytes after the inner checkpoint");
      std::istringstream check(inner_bytes);
      inner_->validate_checkpoint(check);
    });
    std::istringstream in(inner_bytes);
    inner_->load(in);  // checked above: does not throw
    inner_->backend().synchronize();
    distribute(/*only_good=*/false);  // the parameters, when the file held them
  }

  // One file for every rank count: the single-process checkpoint format, every tensor whole.
  // Collective; only `root` writes to its stream (the others' streams are not touched).
  void save_merged(std::ostream& os, SaveOptions save_options = {}, int root = 0) {
    finalize();
    std::ostringstream mine;
    inner_->save(mine, {});
    std::vector<std::unique_ptr<detail::CheckpointContents>> ranks(static_cast<std::size_t>(comm_.size()));
    std::vector<std::vector<char>> raw(ranks.size());
    for (int r = 0; r < comm_.size(); ++r) {
      std::vector<char> bytes;
      if (r == comm_.rank()) {
        const std::string s = mine.str();
        bytes.assign(s.begin(), s.end());
      }
      comm_.broadcast_bytes(bytes, r);  // every rank's part, in turn (checkpoints only)
      if (comm_.rank() == root) {
        std::istringstream is(std::string(bytes.begin(), bytes.end()));
        ranks[static_cast<std::size_t>(r)] = std::make_unique<detail::CheckpointContents>(
            detail::read_checkpoint(is, sizeof(value_type), bytes.size() + 1));
      }
    }
    if (comm_.rank() != root) return;
    write_merged(os, ranks, save_options.parameters);
  }

  // Loads a merged checkpoint (save_merged, or a plain Opt's save) on any number of ranks: root
  // reads its stream and sends it; each rank takes its parts. All or nothing on every rank.
  void load_merged(std::istream& is, int root = 0) {
    finalize();
    std::vector<double> bound{static_cast<double>(inner_->checkpoint_size_bound())};
    comm_.all_reduce(std::span<double>(bound), ReduceOp::sum);
    const auto max_bytes = static_cast<std::size_t>(bound[0]) + 1024 + map_bound();
    std::vector<char> bytes;
    agree([&] {
      if (comm_.rank() != root) return;
      bytes.resize(max_bytes + 1);
      is.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (is.bad()) detail::fail("checkpoint: reading the stream failed");
      bytes.resize(static_cast<std::size_t>(is.gcount()));
      if (bytes.size() > max_bytes)
        detail::fail("checkpoint: the stream is longer than any checkpoint of these tensors (" + std::to_string(max_bytes) +
                     " bytes at most)");
    });
    comm_.broadcast_bytes(bytes, root);
    std::string inner_bytes;
    std::vector<std::pair<ParamId, std::vector<value_type>>> params;
    agree([&] {
      std::istringstream in(std::string(bytes.begin(), bytes.end()));
      detail::CheckpointContents c = detail::read_checkpoint(in, sizeof(value_type), bytes.size() + 1);
      inner_bytes = split_merged(c, params);
      std::istringstream check(inner_bytes);
      inner_->validate_checkpoint(check);
    });
    std::istringstream in(inner_bytes);
    inner_->load(in);
    // Every rank has the whole file: the parameters it does not update are written directly.
    auto& b = inner_->backend();
    for (auto& [id, values] : params)
      b.copy_from_host(std::span<const value_type>(values),
                       backend::MatrixView<value_type>{static_cast<value_type*>(const_cast<void*>(entries_[id].param_data)), 1, 1,
                                                       static_cast<index_t>(values.size())});
    b.synchronize();
  }

 private:
  using T = value_type;
  using B = backend_type;
  using Buffer = typename B::template Buffer<T>;

  static constexpr char k_magic[8] = {'M', 'U', 'O', 'N', 'S', 'H', 'R', 'D'};
  static constexpr std::uint32_t k_version = 1;
  static constexpr detail::CheckpointFormat k_format{k_magic, 1, 1, "sharded checkpoint"};

  // What this rank holds of a tensor: a whole matrix or a fallback slice, and its staging buffer.
  struct Part {
    ParamId id;
    Path path;
    std::size_t offset = 0;  // first element (slices; 0 for a matrix)
    Buffer staging;
    [[nodiscard]] backend::MatrixView<const T> grad_view() const {
      return {staging.data(), 1, 1, static_cast<index_t>(staging.size())};
    }
    [[nodiscard]] backend::MatrixView<T> grad_view_mut() { return {staging.data(), 1, 1, static_cast<index_t>(staging.size())}; }
  };

  const detail::RegisteredTensor& entry(ParamId id) const {
    if (id >= entries_.size())
      detail::fail("no parameter with id " + std::to_string(id) + " (" + std::to_string(entries_.size()) + " registered)");
    return entries_[id];
  }
  [[nodiscard]] std::size_t numel(ParamId id) const { return static_cast<std::size_t>(entries_[id].info.shape.numel()); }
  T* param_ptr(ParamId id) const { return static_cast<T*>(const_cast<void*>(entries_[id].param_data)); }
  const T* grad_ptr(ParamId id) const { return static_cast<const T*>(entries_[id].grad_data); }

  // Runs f on this rank; if it throws muon::Error on any rank, every rank throws: the message of
  // the lowest failing rank, sent to all. Nothing else may be collective inside f.
  template <class F>
  void agree(F&& f) {
    std::string message;
    try {
      f();
    } catch (const Error& e) {
      message = e.what();
      if (message.empty()) message = "muon: error";
    }
    std::vector<double> failed{message.empty() ? 0.0 : 1.0, message.empty() ? 1e9 : static_cast<double>(comm_.rank())};
    std::vector<double> first{-failed[1]};
    comm_.all_reduce(std::span<double>(failed.data(), 1), ReduceOp::max);
    if (failed[0] == 0) return;
    comm_.all_reduce(std::span<double>(first), ReduceOp::max);
    const int who = static_cast<int>(-first[0]);
    std::vector<char> bytes(message.begin(), message.end());
    comm_.broadcast_bytes(bytes, who);
    std::string text(bytes.begin(), bytes.end());
    if (text.rfind("muon: ", 0) == 0) text.erase(0, 6);
    if (comm_.size() > 1) text = "(rank " + std::to_string(who) + ") " + text;
    detail::fail(text);
  }

  // Owners and slices, the same on every rank (shapes and order are).
  std::vector<Placement> plan() const {
    const auto n = static_cast<std::size_t>(comm_.size());
    std::vector<Placement> out(entries_.size());
    std::vector<double> costs;
    std::vector<ParamId> matrices;
    for (ParamId i = 0; i < entries_.size(); ++i) {
      out[i].path = entries_[i].path;
      if (entries_[i].path == Path::matrix) {
        costs.push_back(orthogonalization_cost(entries_[i].info.shape));
        matrices.push_back(i);
      } else {
        const std::size_t total = numel(i);
        out[i].counts.resize(n);
        for (std::size_t r = 0; r < n; ++r) out[i].counts[r] = total / n + (r < total % n ? 1 : 0);
      }
    }
    const std::vector<int> owners = assign_owners(costs, comm_.size());
    for (std::size_t k = 0; k < matrices.size(); ++k) out[matrices[k]].owner = owners[k];
    return out;
  }

  // Registers this rank's parts with `inner` (registration order), with staging gradients.
  std::vector<Part> build(Opt& inner, const std::vector<Placement>& placement) {
    std::vector<Part> parts;
    auto& b = inner.backend();
    const int me = comm_.rank();
    for (ParamId i = 0; i < entries_.size(); ++i) {
      const detail::RegisteredTensor& e = entries_[i];
      const Placement& pl = placement[i];
      std::vector<std::string> names{e.info.name};
      names.insert(names.end(), e.aliases.begin(), e.aliases.end());
      if (e.path == Path::matrix) {
        if (pl.owner != me) continue;
        Part part{i, Path::matrix, 0, b.template allocate<T>(numel(i))};
        for (const auto& name : names)
          inner.add_binding(name, detail::ParamBinding{param_ptr(i), e.info.shape, e.layout, ElementFormat::value},
                            detail::GradBinding{part.staging.data(), e.info.shape, e.layout, ElementFormat::value}, e.options);
        parts.push_back(std::move(part));
      } else {
        const std::size_t count = pl.counts[static_cast<std::size_t>(me)];
        if (count == 0) continue;  // fewer elements than ranks
        const std::size_t offset = pl.offset(me);
        Part part{i, Path::fallback, offset, b.template allocate<T>(count)};
        ParamOptions o = e.options;
        o.path = Path::fallback;
        o.heads = 0;
        o.rotary_rows = 0;
        const Shape slice{static_cast<index_t>(count)};
        for (const auto& name : names) {
          const ParamId inner_id =
              inner.add_binding(name, detail::ParamBinding{param_ptr(i) + offset, slice, Layout::row_major, ElementFormat::value},
                                detail::GradBinding{part.staging.data(), slice, Layout::row_major, ElementFormat::value}, o);
          if (inner.path(inner_id) != Path::fallback)
            detail::fail_param(name, "Sharded: the router did not honour the fallback path forced on a slice");
        }
        parts.push_back(std::move(part));
      }
    }
    return parts;
  }

  // 1. the gradients this rank updates, into its staging buffers (averaged, unscaled).
  void stage_gradients(std::optional<double> inv_scale) {
    auto& b = inner_->backend();
    const int n = comm_.size();
    const bool reduce = shard_.gradients == GradientMode::reduce && n > 1;
    if (reduce) {
      std::size_t k = 0;
      for (ParamId i = 0; i < entries_.size(); ++i) {
        const bool mine = k < parts_.size() && parts_[k].id == i;
        T* recv = mine ? parts_[k].staging.data() : nullptr;
        if (entries_[i].path == Path::matrix)
          comm_.reduce_sum(grad_ptr(i), recv, numel(i), placement_[i].owner);
        else
          comm_.reduce_scatter_sum(grad_ptr(i), recv, std::span<const std::size_t>(placement_[i].counts));
        if (mine) ++k;
      }
      comm_.wait();
    } else {
      for (Part& p : parts_)
        b.transform(p.grad_view_mut(), fn::Copy{},
                    backend::MatrixView<const T>{grad_ptr(p.id) + p.offset, 1, 1, static_cast<index_t>(p.staging.size())});
    }
    const double scale = (reduce ? 1.0 / static_cast<double>(n) : 1.0) * inv_scale.value_or(1.0);
    if (scale != 1.0)
      for (Part& p : parts_) b.transform(p.grad_view_mut(), fn::Scale<T>{static_cast<T>(scale)}, p.grad_view());
  }

  // Every part of a tensor some rank found non-finite gets one NaN, so that each inner
  // optimizer skips it as a single process would skip the whole tensor.
  void poison() {
    auto& b = inner_->backend();
    const T nan[1] = {std::numeric_limits<T>::quiet_NaN()};
    for (Part& p : parts_)
      if (bad_[p.id] != 0) b.copy_from_host(std::span<const T>(nan, 1), backend::MatrixView<T>{p.staging.data(), 1, 1, 1});
  }

  // 4. every rank gets every updated parameter.
  void distribute(bool only_good) {
    for (ParamId i = 0; i < entries_.size(); ++i) {
      if (only_good && bad_[i] != 0) continue;
      if (entries_[i].path == Path::matrix)
        comm_.broadcast(param_ptr(i), numel(i), placement_[i].owner);
      else
        comm_.all_gather(param_ptr(i), std::span<const std::size_t>(placement_[i].counts));
    }
    comm_.wait();
  }

  // The step's constraint numbers over every rank: counts add, maxima take the largest.
  void agree_stats(ConstraintStats& s) {
    if (comm_.size() == 1) return;
    std::vector<double> sums{static_cast<double>(s.clipped_heads), static_cast<double>(s.tensors_without_logits),
                             static_cast<double>(s.dual_iterations)};
    std::vector<double> maxima{s.max_head_value, s.max_residual, s.max_stiefel_error, s.max_sphere_error};
    comm_.all_reduce(std::span<double>(sums), ReduceOp::sum);
    comm_.all_reduce(std::span<double>(maxima), ReduceOp::max);
    s.clipped_heads = static_cast<std::size_t>(sums[0]);
    s.tensors_without_logits = static_cast<std::size_t>(sums[1]);
    s.dual_iterations = static_cast<std::size_t>(sums[2]);
    s.max_head_value = maxima[0];
    s.max_residual = maxima[1];
    s.max_stiefel_error = maxima[2];
    s.max_sphere_error = maxima[3];
  }

  // ---- checkpoint helpers ----------------------------------------------------------------------
  // How each state item of a fallback tensor of n elements is sized: rows * n (per element,
  // `rows` rows of n, cut per slice) or a constant (the same on every slice). Found once by
  // registering two small tensors (2 and 3 elements: size = rows * n + constant) with a probe optimizer of the same options.
  struct ItemLayout {
    std::size_t rows = 0;      // > 0: rows x n elements
    std::size_t constant = 0;  // rows == 0: this many, whatever n
  };
  void probe_state_layout() {
    Opt probe(options_, backend_);
    auto& b = probe.backend();
    Buffer p2 = b.template allocate<T>(2), g2 = b.template allocate<T>(2), p3 = b.template allocate<T>(3),
           g3 = b.template allocate<T>(3);
    ParamOptions forced{.path = Path::fallback};
    probe.add("n2", raw(p2.data(), Shape{2}), raw(g2.data(), Shape{2}), forced);
    probe.add("n3", raw(p3.data(), Shape{3}), raw(g3.data(), Shape{3}), forced);
    std::ostringstream os;
    probe.save(os);
    std::istringstream is(os.str());
    detail::CheckpointContents c = detail::read_checkpoint(is, sizeof(T), os.str().size() + 1);
    for (const auto& [key, item2] : c.tensors.at("n2").items) {
      const detail::CheckpointItem& item3 = c.tensors.at("n3").items.at(key);
      if (item2.counter) continue;
      const std::size_t a = static_cast<std::size_t>(item3.value - item2.value);
      const auto bconst = static_cast<std::ptrdiff_t>(3 * item2.value) - static_cast<std::ptrdiff_t>(2 * item3.value);
      if (a > 0 && bconst != 0)
        detail::fail("Sharded: the fallback state '" + key + "' is neither per element nor fixed in size; it cannot be merged");
      layout_[key] = a > 0 ? ItemLayout{a, 0} : ItemLayout{0, static_cast<std::size_t>(item2.value)};
    }
  }

  void put_map(detail::CheckpointWriter& w) const {
    w.put(static_cast<std::uint64_t>(entries_.size()));
    for (ParamId i = 0; i < entries_.size(); ++i) {
      w.put_string(entries_[i].info.name);
      w.put(static_cast<std::uint8_t>(entries_[i].path));
      w.put(static_cast<std::int32_t>(placement_[i].owner));
      w.put(static_cast<std::uint64_t>(placement_[i].counts.size()));
      for (std::size_t c : placement_[i].counts) w.put(static_cast<std::uint64_t>(c));
    }
  }
  void check_map(detail::CheckpointReader& r) const {
    const auto n = r.get<std::uint64_t>();
    if (n != entries_.size())
      detail::fail("sharded checkpoint: holds " + std::to_string(n) + " tensors, " + std::to_string(entries_.size()) +
                   " are registered");
    for (ParamId i = 0; i < entries_.size(); ++i) {
      const std::string name = r.get_string();
      const auto path = r.get<std::uint8_t>();
      const auto owner = r.get<std::int32_t>();
      const auto counts = r.get<std::uint64_t>();
      bool same = name == entries_[i].info.name && path == static_cast<std::uint8_t>(entries_[i].path) &&
                  owner == placement_[i].owner && counts == placement_[i].counts.size();
      for (std::uint64_t k = 0; k < counts && k < 1u << 20; ++k)
        same = r.get<std::uint64_t>() == (k < placement_[i].counts.size() ? placement_[i].counts[k] : ~0ull) && same;
      if (!same)
        detail::fail_param(entries_[i].info.name, "sharded checkpoint: tensor " + std::to_string(i) + " is " +
                                                      detail::shown_value(name) +
                                                      " with another placement there (other registrations or owners)");
    }
  }
  [[nodiscard]] std::size_t map_bound() const {
    std::size_t n = 64;
    for (const auto& e : entries_) n += 64 + e.info.name.size() + 8 * static_cast<std::size_t>(comm_.size());
    return n;
  }

  // Copies n elements of `element_size` bytes from a parsed checkpoint into the writer.
  static void copy_elements(detail::CheckpointWriter& w, const detail::CheckpointContents& c, std::size_t at, std::size_t n,
                            std::size_t element_size) {
    std::vector<char> tmp(n * element_size);
    c.reader.read_array(at, tmp.data(), tmp.size());
    w.put_raw(tmp.data(), tmp.size());
  }

  void write_merged(std::ostream& os, const std::vector<std::unique_ptr<detail::CheckpointContents>>& ranks,
                    bool parameters) {
    const detail::CheckpointContents& first = *ranks.front();
    detail::CheckpointWriter w;
    w.put_raw(detail::k_checkpoint_magic, sizeof(detail::k_checkpoint_magic));
    w.put(detail::k_checkpoint_version);
    w.put(static_cast<std::uint32_t>(sizeof(T)));
    w.put(static_cast<std::uint64_t>(first.steps));
    w.put(first.lr);
    w.put(options_.momentum);
    w.put(static_cast<std::uint8_t>(options_.nesterov));
    w.put(options_.weight_decay);
    w.put(static_cast<std::uint32_t>(options_.lr_adjust));
    w.put(first.fallback_lr);
    w.put(static_cast<std::uint8_t>(parameters));
    w.put(static_cast<std::uint64_t>(entries_.size()));
    auto& b = inner_->backend();
    for (ParamId i = 0; i < entries_.size(); ++i) {
      const detail::RegisteredTensor& e = entries_[i];
      const Placement& pl = placement_[i];
      // The ranks holding a part, with their part.
      std::vector<std::pair<std::size_t, const detail::CheckpointTensor*>> held;
      for (std::size_t r = 0; r < ranks.size(); ++r) {
        if (e.path == Path::matrix ? pl.owner != static_cast<int>(r) : pl.counts[r] == 0) continue;
        const auto it = ranks[r]->tensors.find(e.info.name);
        if (it == ranks[r]->tensors.end()) detail::fail_param(e.info.name, "save_merged: rank " + std::to_string(r) + " did not save it");
        held.emplace_back(r, &it->second);
      }
      const detail::CheckpointTensor& t0 = *held.front().second;
      w.put_string(e.info.name);
      w.put(static_cast<std::uint8_t>(e.path));
      w.put(static_cast<std::uint32_t>(e.info.shape.rank()));
      for (std::size_t d = 0; d < e.info.shape.rank(); ++d) w.put(static_cast<std::int64_t>(e.info.shape[d]));
      w.put(t0.lr_scale.value_or(e.options.lr_scale));
      const std::optional<double> wd = t0.weight_decay.value_or(e.options.weight_decay);
      w.put(static_cast<std::uint8_t>(wd.has_value()));
      w.put(wd.value_or(0.0));
      if (parameters) {  // root holds every parameter whole after a step
        std::vector<T> values(numel(i));
        b.copy_to_host(backend::MatrixView<const T>{param_ptr(i), 1, 1, static_cast<index_t>(values.size())}, values);
        b.synchronize();
        w.put(static_cast<std::uint64_t>(values.size()));
        w.put_array(values.data(), values.size());
      }
      w.put(static_cast<std::uint32_t>(t0.items.size()));
      for (const auto& [key, item] : t0.items) {
        w.put_string(key);
        if (item.counter) {
          for (const auto& [r, t] : held)
            if (t->items.at(key).value != item.value)
              detail::fail_param(e.info.name, "save_merged: counter '" + key + "' differs between ranks");
          w.put(std::uint8_t{1});
          w.put(item.value);
          continue;
        }
        w.put(std::uint8_t{0});
        w.put(static_cast<std::uint8_t>(item.element_size));
        if (e.path == Path::matrix || layout_.at(key).rows == 0) {
          w.put(item.value);
          copy_elements(w, *ranks[held.front().first], item.at, static_cast<std::size_t>(item.value), item.element_size);
          continue;
        }
        const std::size_t rows = layout_.at(key).rows;
        w.put(static_cast<std::uint64_t>(rows * numel(i)));
        for (std::size_t row = 0; row < rows; ++row)
          for (const auto& [r, t] : held) {
            const detail::CheckpointItem& part = t->items.at(key);
            const std::size_t len = pl.counts[r];
            copy_elements(w, *ranks[r], part.at + row * len * part.element_size, len, part.element_size);
          }
      }
    }
    w.finish(os);
  }

  // This rank's inner checkpoint cut from a merged one; the parameter values of the tensors it
  // does not update go to `params` (when the file holds them).
  std::string split_merged(const detail::CheckpointContents& c, std::vector<std::pair<ParamId, std::vector<T>>>& params) {
    for (const auto& [name, t] : c.tensors) {
      bool known = false;
      for (const auto& e : entries_) known = known || e.info.name == name;
      if (!known) detail::fail("checkpoint: tensor " + detail::shown_value(name) + " is not registered with this optimizer");
    }
    detail::CheckpointWriter w;
    w.put_raw(detail::k_checkpoint_magic, sizeof(detail::k_checkpoint_magic));
    w.put(detail::k_checkpoint_version);
    w.put(static_cast<std::uint32_t>(sizeof(T)));
    w.put(static_cast<std::uint64_t>(c.steps));
    w.put(c.lr);
    w.put(options_.momentum);
    w.put(static_cast<std::uint8_t>(options_.nesterov));
    w.put(options_.weight_decay);
    w.put(static_cast<std::uint32_t>(options_.lr_adjust));
    w.put(c.fallback_lr);
    w.put(static_cast<std::uint8_t>(c.has_parameters));
    w.put(static_cast<std::uint64_t>(parts_.size()));
    params.clear();
    std::size_t k = 0;
    for (ParamId i = 0; i < entries_.size(); ++i) {
      const detail::RegisteredTensor& e = entries_[i];
      const auto it = c.tensors.find(e.info.name);
      if (it == c.tensors.end()) detail::fail_param(e.info.name, "missing from the checkpoint");
      const detail::CheckpointTensor& t = it->second;
      if (!(t.shape == e.info.shape))
        detail::fail_param(e.info.name, "checkpoint shape " + t.shape.to_string() + " differs from the registered " +
                                            e.info.shape.to_string());
      if (static_cast<Path>(t.path) != e.path)
        detail::fail_param(e.info.name, "saved on the " + std::string(to_string(static_cast<Path>(t.path))) +
                                            " path, registered on the " + std::string(to_string(e.path)) + " path");
      const bool mine = k < parts_.size() && parts_[k].id == i;
      if (c.has_parameters && !mine) {
        std::vector<T> values(numel(i));
        c.reader.read_array(t.params_at, values.data(), values.size());
        params.emplace_back(i, std::move(values));
      }
      if (!mine) continue;
      const Part& part = parts_[k++];
      const std::size_t len = part.staging.size(), n = numel(i);
      w.put_string(e.info.name);
      w.put(static_cast<std::uint8_t>(e.path));
      const Shape shape = e.path == Path::matrix ? e.info.shape : Shape{static_cast<index_t>(len)};
      w.put(static_cast<std::uint32_t>(shape.rank()));
      for (std::size_t d = 0; d < shape.rank(); ++d) w.put(static_cast<std::int64_t>(shape[d]));
      w.put(t.lr_scale.value_or(e.options.lr_scale));
      const std::optional<double> wd = t.weight_decay.value_or(e.options.weight_decay);
      w.put(static_cast<std::uint8_t>(wd.has_value()));
      w.put(wd.value_or(0.0));
      if (c.has_parameters) {
        w.put(static_cast<std::uint64_t>(len));
        copy_elements(w, c, t.params_at + part.offset * sizeof(T), len, sizeof(T));
      }
      w.put(static_cast<std::uint32_t>(t.items.size()));
      for (const auto& [key, item] : t.items) {
        w.put_string(key);
        if (item.counter) {
          w.put(std::uint8_t{1});
          w.put(item.value);
          continue;
        }
        w.put(std::uint8_t{0});
        w.put(static_cast<std::uint8_t>(item.element_size));
        const auto lay = layout_.find(key);
        if (e.path == Path::matrix || lay == layout_.end() || lay->second.rows == 0) {
          w.put(item.value);
          copy_elements(w, c, item.at, static_cast<std::size_t>(item.value), item.element_size);
          continue;
        }
        const std::size_t rows = lay->second.rows;
        if (item.value != rows * n)
          detail::fail_param(e.info.name, "checkpoint state '" + key + "' has " + std::to_string(item.value) +
                                              " elements, " + std::to_string(rows * n) + " expected");
        w.put(static_cast<std::uint64_t>(rows * len));
        for (std::size_t row = 0; row < rows; ++row)
          copy_elements(w, c, item.at + (row * n + part.offset) * item.element_size, len, item.element_size);
      }
    }
    std::ostringstream os;
    w.finish(os);
    return std::move(os).str();
  }

  Comm comm_;
  Options options_;
  ShardOptions shard_;
  B backend_;
  typename Opt::router_type router_;
  std::vector<detail::RegisteredTensor> entries_;
  // After finalize():
  std::unique_ptr<Opt> inner_;
  std::vector<Placement> placement_;
  std::vector<Part> parts_;  // in registration order
  typename B::template Buffer<typename B::accum_type> flags_{};
  std::vector<typename B::accum_type> flags_host_;
  std::vector<double> bad_;  // per tensor, agreed over ranks
  std::vector<double> stats_;
  std::vector<ParamId> skipped_;
  std::map<std::string, ItemLayout> layout_;
  ShardStepTimes times_{};
};

}  // namespace muon::distributed
