#pragma once
// Optimizer::save / load / validate_checkpoint: the checkpoint format (core/checkpoint.hpp)
// applied to an optimizer's registered tensors, kept out of core/optimizer.hpp so that the
// composition and its step read on their own. A friend of Optimizer.
//
// load() is all or nothing: the stream is read (header first, at most size_bound() bytes) and
// checked completely before anything changes: format, checksum, every registered tensor present
// with the same shape, path and state layout, no unknown tensors, and every value it would apply
// (learning rates, step count, counters, group overrides, state and parameter values: finite,
// in range, within the owning policy's StateLimits), and the fallback's lr and the schedule at
// the next step as they will be used. Then it commits with operations that do not throw.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "muon/core/checkpoint.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/error.hpp"
#include "muon/core/param.hpp"
#include "muon/core/registration.hpp"
#include "muon/core/state_format.hpp"
#include "muon/core/validate.hpp"

namespace muon::detail {

template <class Opt>
struct OptimizerCheckpoint {
  // Writes every tensor's state (and, if asked, its values), the step count, the learning rates,
  // the groups and the other hyperparameters, keyed by parameter name, with a checksum.
  static void save(Opt& o, std::ostream& os, bool parameters) {
    using T = typename Opt::value_type;
    detail::CheckpointWriter w;
    w.put_raw(detail::k_checkpoint_magic, sizeof(detail::k_checkpoint_magic));
    w.put(detail::k_checkpoint_version);
    w.put(static_cast<std::uint32_t>(sizeof(T)));
    w.put(static_cast<std::uint64_t>(o.steps_taken_));
    w.put(o.options_.lr);
    w.put(o.options_.momentum);
    w.put(static_cast<std::uint8_t>(o.options_.nesterov));
    w.put(o.options_.weight_decay);
    w.put(static_cast<std::uint32_t>(o.options_.lr_adjust));
    w.put(o.fallback_base_lr_);
    w.put(static_cast<std::uint8_t>(parameters));
    w.put(static_cast<std::uint64_t>(o.entries_.size()));
    for (ParamId id = 0; id < o.entries_.size(); ++id) {
      const RegisteredTensor& e = o.entries_[id];
      w.put_string(e.info.name);
      w.put(static_cast<std::uint8_t>(e.path));
      w.put(static_cast<std::uint32_t>(e.info.shape.rank()));
      for (std::size_t d = 0; d < e.info.shape.rank(); ++d) w.put(static_cast<std::int64_t>(e.info.shape[d]));
      w.put(e.options.lr_scale);
      w.put(static_cast<std::uint8_t>(e.options.weight_decay.has_value()));
      w.put(e.options.weight_decay.value_or(0.0));
      if (parameters) {
        const auto values = o.download_param(id);
        w.put(static_cast<std::uint64_t>(values.size()));
        w.put_array(values.data(), values.size());
      }
      std::uint32_t items = 0;
      o.for_each_state_of(id, [&](const std::string&, auto& item) {
        ++items;
        if constexpr (is_state_buffer_v<std::remove_cvref_t<decltype(item)>>)
          if (item.format() == StateFormat::q8) items += 2;  // "#absmax" and "#block"
      });
      w.put(items);
      o.for_each_state_of(id, [&](const std::string& key, auto& item) {
        w.put_string(key);
        if constexpr (std::is_integral_v<std::remove_cvref_t<decltype(item)>>) {
          w.put(std::uint8_t{1});
          w.put(static_cast<std::uint64_t>(item));
        } else if constexpr (is_state_buffer_v<std::remove_cvref_t<decltype(item)>>) {
          // In its format: value_type elements, the bf16 bits as 16-bit elements, or the q8
          // codes as bytes followed by two companion items, "<key>#absmax" (the block scales)
          // and "<key>#block" (the block size).
          const auto host = o.download(item);
          w.put(std::uint8_t{0});
          w.put(static_cast<std::uint8_t>(state_element_bytes(item.format(), sizeof(T))));
          w.put(static_cast<std::uint64_t>(item.count()));
          if (item.format() == StateFormat::bf16) {
            w.put_array(reinterpret_cast<const std::uint16_t*>(host.data()), item.count());
          } else if (item.format() == StateFormat::q8) {
            w.put_array(reinterpret_cast<const std::uint8_t*>(host.data()), item.count());
            w.put_string(key + "#absmax");
            w.put(std::uint8_t{0});
            w.put(static_cast<std::uint8_t>(sizeof(T)));
            w.put(static_cast<std::uint64_t>(item.blocks()));
            w.put_array(host.data() + (item.scales() - item.data()), item.blocks());
            w.put_string(key + "#block");
            w.put(std::uint8_t{1});
            w.put(static_cast<std::uint64_t>(item.block()));
          } else {
            w.put_array(host.data(), item.count());
          }
        } else {
          const auto host = o.download(item);
          w.put(std::uint8_t{0});
          w.put(static_cast<std::uint8_t>(sizeof(typename decltype(host)::value_type)));
          w.put(static_cast<std::uint64_t>(host.size()));
          w.put_array(host.data(), host.size());
        }
      });
    }
    w.finish(os);
    }

  // More bytes than any checkpoint of this optimizer can hold: load() reads no further (a
  // stream that does not end is refused, not read until memory runs out).
  static std::size_t size_bound(Opt& o) {
    using T = typename Opt::value_type;
    std::size_t bytes = 1024;  // header, checksum and slack
    for (ParamId id = 0; id < o.entries_.size(); ++id) {
      const RegisteredTensor& e = o.entries_[id];
      std::size_t name = e.info.name.size();
      for (const auto& a : e.aliases) name = std::max(name, a.size());
      bytes += 64 + name + 8 * e.info.shape.rank() + static_cast<std::size_t>(e.info.shape.numel()) * sizeof(T);
      o.for_each_state_of(id, [&](const std::string& key, auto& item) {
        bytes += 32 + key.size();
        if constexpr (!std::is_integral_v<std::remove_cvref_t<decltype(item)>>)
          bytes += item.size() * sizeof(*item.data());
      });
    }
    return bytes;
    }

  // Reads and checks everything; with commit, then applies it.
  static LoadReport load(Opt& o, std::istream& is, bool commit, const LoadOptions& options) {
    LoadReport report;
    using T = typename Opt::value_type;
    using B = typename Opt::backend_type;
    using Fb = typename Opt::fallback_type;
    detail::CheckpointContents c = detail::read_checkpoint(is, sizeof(T), size_bound(o));
    auto& staged = c.tensors;
    const bool has_parameters = c.has_parameters;

    // ---- match against what is registered (no change yet) ----
    for (ParamId id = 0; id < o.entries_.size(); ++id) {
      const RegisteredTensor& e = o.entries_[id];
      auto it = staged.find(e.info.name);
      if (it == staged.end()) detail::fail_param(e.info.name, "missing from the checkpoint");
      detail::CheckpointTensor& st = it->second;
      st.matched = true;
      if (!(st.shape == e.info.shape))
        detail::fail_param(e.info.name, "checkpoint shape " + st.shape.to_string() + " differs from the registered " +
                                            e.info.shape.to_string());
      if (static_cast<Path>(st.path) != e.path)
        detail::fail_param(e.info.name, "saved on the " + std::string(to_string(static_cast<Path>(st.path))) + " path, registered on the " +
                                            std::string(to_string(e.path)) + " path");
      std::size_t expected_items = 0;
      o.for_each_state_of(id, [&](const std::string& key, auto& item) {
        ++expected_items;
        auto found = st.items.find(key);
        if (found == st.items.end()) detail::fail_param(e.info.name, "state '" + key + "' is missing from the checkpoint");
        const detail::CheckpointItem& saved = found->second;
        const detail::StateLimits limits = state_limits(o, key);
        if constexpr (is_state_buffer_v<std::remove_cvref_t<decltype(item)>>) {
          const SavedState sf = saved_state<T>(c.reader, st, key, saved, e.info.name, item.non_negative());
          if (sf.format == StateFormat::q8) expected_items += 2;
          if (sf.format != item.format() || (sf.format == StateFormat::q8 && sf.block != item.block())) {
            if (!options.convert_state_formats)
              detail::fail_param(e.info.name, "state '" + key + "' is stored as " + describe(sf.format, sf.block) +
                                                  " in the checkpoint and kept as " + describe(item.format(), item.block()) +
                                                  " here; load with LoadOptions{.convert_state_formats = true} to convert it");
            report.conversions.push_back(e.info.name + "/" + key + ": " + describe(sf.format, sf.block) + " -> " +
                                         describe(item.format(), item.block()));
          }
          if (saved.value != item.count())
            detail::fail_param(e.info.name, "state '" + key + "' has " + std::to_string(saved.value) +
                                                " elements in the checkpoint, " + std::to_string(item.count()) + " here");
          const bool ok = sf.format == StateFormat::bf16 ? c.reader.all_finite_bf16(saved.at, item.count(), true)
                          : sf.format == StateFormat::full ? c.reader.template all_finite<T>(saved.at, item.count(), true)
                                                           : true;  // q8: the code is non-negative by construction
          if (limits.non_negative && !ok)
            detail::fail_param(e.info.name, "state '" + key + "' holds negative values in the checkpoint");
        } else if constexpr (std::is_integral_v<std::remove_cvref_t<decltype(item)>>) {
          using C = std::remove_cvref_t<decltype(item)>;
          if (!saved.counter) detail::fail_param(e.info.name, "state '" + key + "' is a counter here, a buffer in the checkpoint");
          if (saved.value > limits.max_counter || saved.value > static_cast<std::uint64_t>(std::numeric_limits<C>::max()))
            detail::fail_param(e.info.name, "state '" + key + "' = " + std::to_string(saved.value) +
                                                " in the checkpoint is out of range (at most " +
                                                std::to_string(limits.max_counter) + ")");
        } else {
          using U = std::remove_cvref_t<decltype(*item.data())>;
          if (saved.counter) detail::fail_param(e.info.name, "state '" + key + "' is a buffer here, a counter in the checkpoint");
          if (saved.element_size != sizeof(U))
            detail::fail_param(e.info.name, "state '" + key + "' has " + std::to_string(8 * saved.element_size) +
                                                "-bit elements in the checkpoint, " + std::to_string(8 * sizeof(U)) + "-bit here");
          if (saved.value != item.size())
            detail::fail_param(e.info.name, "state '" + key + "' has " + std::to_string(saved.value) +
                                                " elements in the checkpoint, " + std::to_string(item.size()) + " here");
          if (limits.non_negative && !c.reader.template all_finite<U>(saved.at, item.size(), true))
            detail::fail_param(e.info.name, "state '" + key + "' holds negative values in the checkpoint");
        }
      });
      if constexpr (!FallbackWithRates<Fb, B>)
        if (e.path == Path::fallback && ((st.lr_scale && *st.lr_scale != 1.0) || (st.weight_decay && *st.weight_decay)))
          detail::fail_param(e.info.name, "the checkpoint sets a group lr_scale / weight_decay, which this fallback cannot apply");
      if (expected_items != st.items.size())
        detail::fail_param(e.info.name, "the checkpoint holds state this composition does not have (saved with other policies?)");
      for (const auto& alias : e.aliases) staged.erase(alias);  // a tied tensor saved under one name only
    }
    for (const auto& [name, st] : staged)
      if (!st.matched) detail::fail("checkpoint: tensor " + detail::shown_value(name) + " is not registered with this optimizer");
    // What will be applied, checked as it will be used: the fallback's lr, and the schedule at
    // the next step (a schedule may reject a step count).
    {
      Fb probe = o.fallback_;
      probe.set_lr(c.fallback_lr);
      (void)o.options_.schedule(c.steps + 1);
    }

    if (!commit) return report;
    o.ensure_workspace();  // refreshing 16-bit copies below uses it
    // ---- commit: nothing below can fail ----
    for (ParamId id = 0; id < o.entries_.size(); ++id) {
      RegisteredTensor& e = o.entries_[id];
      const detail::CheckpointTensor& st = staged.at(e.info.name);
      if (st.lr_scale) e.options.lr_scale = *st.lr_scale;
      if (st.weight_decay) e.options.weight_decay = *st.weight_decay;
      if (has_parameters) {
        std::vector<T> values(static_cast<std::size_t>(e.info.shape.numel()));
        c.reader.read_array(st.params_at, values.data(), values.size());
        o.upload_param(id, values);
      }
      o.for_each_state_of(id, [&](const std::string& key, auto& item) {
        const detail::CheckpointItem& saved = st.items.at(key);
        if constexpr (std::is_integral_v<std::remove_cvref_t<decltype(item)>>) {
          item = static_cast<std::remove_cvref_t<decltype(item)>>(saved.value);
        } else if constexpr (is_state_buffer_v<std::remove_cvref_t<decltype(item)>>) {
          o.upload(item, state_from_checkpoint(c.reader, saved_state<T>(c.reader, st, key, saved, e.info.name,
                                                                        item.non_negative()),
                                               item));
        } else {
          using U = std::remove_cvref_t<decltype(*item.data())>;
          std::vector<U> host(item.size());
          c.reader.read_array(saved.at, host.data(), host.size());
          o.upload(item, host);
        }
      });
    }
    o.steps_taken_ = c.steps;
    o.options_.lr = c.lr;
    o.fallback_.set_lr(c.fallback_lr);
    o.fallback_base_lr_ = c.fallback_lr;
    o.refresh_targets();
    o.backend_.synchronize();
    return report;
    }

 private:
  // How a StateBuffer item was saved: its format, and for q8 the block size and the scales.
  struct SavedState {
    StateFormat format = StateFormat::full;
    std::size_t block = 0;
    const CheckpointItem* main = nullptr;
    const CheckpointItem* absmax = nullptr;
  };
  static std::string describe(StateFormat f, std::size_t block) {
    return f == StateFormat::q8 ? "q8 (block " + std::to_string(block) + ")" : std::string(to_string(f));
  }
  // Reads the saved item's format from its element size, and checks a q8 item's companions:
  // "#block" a counter in [16, 65536], "#absmax" one non-negative scale per block, and (signed
  // code) no byte -128.
  template <class T>
  static SavedState saved_state(const CheckpointReader& r, const CheckpointTensor& st, const std::string& key,
                                const CheckpointItem& saved, const std::string& name, bool non_negative) {
    if (saved.counter) detail::fail_param(name, "state '" + key + "' is a buffer here, a counter in the checkpoint");
    SavedState out;
    out.main = &saved;
    if (saved.element_size == 2) {
      out.format = StateFormat::bf16;
    } else if (saved.element_size == sizeof(T)) {
      out.format = StateFormat::full;
    } else if (saved.element_size == 1) {
      out.format = StateFormat::q8;
      const auto b = st.items.find(key + "#block");
      const auto a = st.items.find(key + "#absmax");
      if (b == st.items.end() || !b->second.counter || b->second.value < 16 || b->second.value > 65536)
        detail::fail_param(name, "state '" + key + "' is 8-bit in the checkpoint without a valid '#block' item");
      out.block = static_cast<std::size_t>(b->second.value);
      const std::uint64_t blocks = (saved.value + out.block - 1) / out.block;
      if (a == st.items.end() || a->second.counter || a->second.element_size != sizeof(T) || a->second.value != blocks)
        detail::fail_param(name, "state '" + key + "' is 8-bit in the checkpoint without " + std::to_string(blocks) +
                                     " block scales ('#absmax')");
      if (!r.template all_finite<T>(a->second.at, blocks, true))
        detail::fail_param(name, "state '" + key + "' has negative block scales in the checkpoint");
      out.absmax = &a->second;
      if (!non_negative) {
        std::vector<std::uint8_t> codes(static_cast<std::size_t>(saved.value));
        r.read_array(saved.at, codes.data(), codes.size());
        for (const std::uint8_t q : codes)
          if (q == 0x80u) detail::fail_param(name, "state '" + key + "' holds an invalid 8-bit code (-128) in the checkpoint");
      }
    } else {
      detail::fail_param(name, "state '" + key + "' has " + std::to_string(8 * saved.element_size) +
                                   "-bit elements in the checkpoint, which no state format of this optimizer uses");
    }
    return out;
  }

  // A StateBuffer's storage as the host holds it, from a checked item saved in any format:
  // copied when the formats agree; else decoded to value_type (bf16 exactly, q8 by its code)
  // and encoded in the item's format (bf16: nearest even; q8: block absmax, nearest code).
  template <class Item>
  static std::vector<typename Opt::value_type> state_from_checkpoint(const CheckpointReader& r, const SavedState& sf,
                                                                     Item& item) {
    using T = typename Opt::value_type;
    const std::size_t n = item.count();
    std::vector<T> storage(item.size(), T(0));
    auto* bytes = reinterpret_cast<unsigned char*>(storage.data());
    const std::size_t scales_at = static_cast<std::size_t>(item.scales() - item.data());
    const bool same = sf.format == item.format() && (sf.format != StateFormat::q8 || sf.block == item.block());
    if (same && sf.format != StateFormat::full) {
      const std::size_t width = sf.format == StateFormat::bf16 ? 2 : 1;
      std::vector<unsigned char> raw(n * width);
      if (width == 2) {
        std::vector<std::uint16_t> bits(n);
        r.read_array(sf.main->at, bits.data(), n);
        std::memcpy(raw.data(), bits.data(), raw.size());
      } else {
        r.read_array(sf.main->at, raw.data(), n);
      }
      if (!raw.empty()) std::memcpy(bytes, raw.data(), raw.size());
      if (sf.format == StateFormat::q8) r.read_array(sf.absmax->at, storage.data() + scales_at, item.blocks());
      return storage;
    }
    std::vector<T> values(n);
    if (sf.format == StateFormat::full) {
      r.read_array(sf.main->at, values.data(), n);
    } else if (sf.format == StateFormat::bf16) {
      std::vector<std::uint16_t> bits(n);
      r.read_array(sf.main->at, bits.data(), n);
      for (std::size_t i = 0; i < n; ++i) values[i] = static_cast<T>(bf16_to_float(bits[i]));
    } else {
      std::vector<std::uint8_t> codes(n);
      std::vector<T> scales((n + sf.block - 1) / sf.block);
      r.read_array(sf.main->at, codes.data(), n);
      r.read_array(sf.absmax->at, scales.data(), scales.size());
      q8_decode_host(codes.data(), scales.data(), n, sf.block, item.non_negative(), values.data());
    }
    if (item.format() == StateFormat::full) return values;
    if (item.format() == StateFormat::bf16) {
      std::vector<std::uint16_t> bits(n);
      for (std::size_t i = 0; i < n; ++i) bits[i] = encode_state_bf16(values[i], false, 0, 0);
      if (n) std::memcpy(bytes, bits.data(), n * sizeof(std::uint16_t));
      return storage;
    }
    std::vector<std::uint8_t> codes(n);
    std::vector<T> scales(item.blocks());
    q8_encode_host(values.data(), n, item.block(), item.non_negative(), codes.data(), scales.data());
    if (n) std::memcpy(bytes, codes.data(), n);
    std::copy(scales.begin(), scales.end(), storage.begin() + static_cast<std::ptrdiff_t>(scales_at));
    return storage;
  }

  // What load() accepts for a state item, from the policy that owns it (StateLimits).
  static StateLimits state_limits(const Opt& o, const std::string& key) {
    auto from = [&key](const auto& policy, std::string_view prefix) -> std::optional<detail::StateLimits> {
      if (key.rfind(prefix, 0) != 0) return std::nullopt;
      if constexpr (requires { policy.limits(std::string_view{}); })
        return policy.limits(std::string_view(key).substr(prefix.size()));
      return detail::StateLimits{};
    };
    if (key == "normuon/row_second_moment") return {.non_negative = true};
    if (auto l = from(o.filter_, "filter/")) return *l;
    if (auto l = from(o.constraint_, "constraint/")) return *l;
    if (auto l = from(o.fallback_, "fallback/")) return *l;
    return {};
    }
};

}  // namespace muon::detail
