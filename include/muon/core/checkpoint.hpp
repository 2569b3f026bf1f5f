#pragma once
// The byte format of optimizer checkpoints, and the checked reader and writer behind
// Optimizer::save / Optimizer::load.
//
// Layout (all integers and floats little-endian):
//   "MUONCKPT"  u32 version (2)  u32 sizeof(value_type)  u64 steps_taken
//   f64 lr  f64 momentum  u8 nesterov  f64 weight_decay  u32 lr_adjust  f64 fallback_lr
//   u8 has_parameters  u64 tensor_count
//   per tensor: str name  u8 path  u32 rank  i64 dims[rank]
//               [version >= 2: f64 lr_scale  u8 has_weight_decay  f64 weight_decay]  (its group)
//               [has_parameters: u64 n, n values]
//               u32 item_count, per item: str key, u8 kind (0 buffer, 1 counter),
//                 buffer: u8 element_size, u64 n, n elements;  counter: u64 value
//                 (element_size 4 or 8: value_type state; 2: bfloat16 bits, state kept in bf16;
//                 1: the codes of 8-bit block-wise state, with two companion items "<key>#absmax"
//                 (value_type block scales) and "<key>#block" (a counter); core/state_format.hpp)
//   u64 FNV-1a 64 of every byte before it
// (str = u32 length + bytes.) The checksum catches truncation and corruption; every read is
// bounds-checked as well, so a damaged file gets an Error, never undefined behaviour. Version 1
// (no group fields) is still read. Values are checked too, since a file can be crafted with a
// valid checksum: rates finite and in range, counters below 2^53 (no wrap, exact in double),
// stored values and state finite (core/optimizer.hpp applies StateLimits per state item).
#include <array>
#include <bit>
#include <cmath>
#include <ios>
#include <limits>
#include <optional>
#include <cstdint>
#include <map>
#include <cstring>
#include <istream>
#include <iterator>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "muon/core/error.hpp"
#include "muon/core/tensor.hpp"
#include "muon/core/validate.hpp"

namespace muon {

// load()'s choices, and what it did. A state item stored in another format than the optimizer
// keeps it in (core/state_format.hpp) is refused unless convert_state_formats is set; converted
// items are listed ("<parameter>/<state>: bf16 -> full").
struct LoadOptions {
  bool convert_state_formats = false;
};
struct LoadReport {
  std::vector<std::string> conversions;
};

}  // namespace muon

namespace muon::detail {

inline constexpr char k_checkpoint_magic[8] = {'M', 'U', 'O', 'N', 'C', 'K', 'P', 'T'};
inline constexpr std::uint32_t k_checkpoint_version = 2;
inline std::uint64_t fnv1a64(const unsigned char* p, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

class CheckpointWriter {
 public:
  template <class U>
    requires std::is_arithmetic_v<U>
  void put(U v) {
    using Bits = std::conditional_t<sizeof(U) == 1, std::uint8_t,
                                    std::conditional_t<sizeof(U) == 4, std::uint32_t, std::uint64_t>>;
    static_assert(sizeof(U) == 1 || sizeof(U) == 4 || sizeof(U) == 8);
    const Bits bits = std::bit_cast<Bits>(v);
    for (std::size_t i = 0; i < sizeof(U); ++i) bytes_.push_back(static_cast<char>((bits >> (8 * i)) & 0xffu));
  }
  void put_string(std::string_view s) {
    put(static_cast<std::uint32_t>(s.size()));
    bytes_.append(s);
  }
  template <class U>
  void put_array(const U* data, std::size_t n) {
    if (n == 0) return;  // data may be null (an empty buffer)
    if constexpr (std::endian::native == std::endian::little) {
      bytes_.append(reinterpret_cast<const char*>(data), n * sizeof(U));
    } else {
      for (std::size_t i = 0; i < n; ++i) put(data[i]);
    }
  }
  void put_raw(const char* p, std::size_t n) { bytes_.append(p, n); }

  // Appends the checksum, writes everything and flushes; throws muon::Error if the stream
  // fails then or while flushing (a full disk shows only there).
  void finish(std::ostream& os, const char* what = "checkpoint") {
    put(fnv1a64(reinterpret_cast<const unsigned char*>(bytes_.data()), bytes_.size()));
    try {
      os.write(bytes_.data(), static_cast<std::streamsize>(bytes_.size()));
      os.flush();
    } catch (const std::ios_base::failure& e) {
      fail(std::string(what) + ": writing to the stream failed (" + e.what() + ")");
    }
    if (!os) fail(std::string(what) + ": writing to the stream failed (disk full, or the stream is closed)");
  }

 private:
  std::string bytes_;
};

// The kind of file a reader expects: its 8-byte magic, the versions it reads, and a name for
// messages.
struct CheckpointFormat {
  const char* magic;  // 8 bytes
  std::uint32_t min_version, max_version;
  const char* what;
};
inline constexpr CheckpointFormat k_optimizer_checkpoint{k_checkpoint_magic, 1, k_checkpoint_version, "checkpoint"};

class CheckpointReader {
 public:
  // Reads and checks the header (magic, version) first, so that a stream that is not a
  // checkpoint is not read further; then reads the rest, at most max_bytes in all (more than
  // any checkpoint the reader's owner could have written), and checks the checksum before
  // anything is parsed. Every failure, the stream's included, is a muon::Error.
  CheckpointReader(std::istream& is, const CheckpointFormat& format, std::size_t max_bytes) : what_(format.what) {
    constexpr std::size_t header = 8 + 4;
    read_more(is, header);
    if (bytes_.size() < header || std::memcmp(bytes_.data(), format.magic, 8) != 0)
      fail(what_ + ": not a muon " + what_ + " (bad magic or too short)");
    end_ = header;
    pos_ = 8;
    version_ = get<std::uint32_t>();
    if (version_ < format.min_version || version_ > format.max_version)
      fail(what_ + ": format version " + std::to_string(version_) + " is not supported (this build reads versions " +
           std::to_string(format.min_version) + " to " + std::to_string(format.max_version) + ")");
    // The rest, in chunks, stopping one byte past the limit.
    while (bytes_.size() <= max_bytes) {
      const std::size_t before = bytes_.size();
      read_more(is, std::min<std::size_t>(std::size_t{1} << 20, max_bytes + 1 - before));
      if (bytes_.size() == before) break;
    }
    if (bytes_.size() > max_bytes)
      fail(what_ + ": the stream is longer than any " + what_ + " of this optimizer (" + std::to_string(max_bytes) +
           " bytes at most)");
    if (bytes_.size() < header + 8) fail(what_ + ": truncated (no checksum)");
    end_ = bytes_.size() - 8;
    std::uint64_t stored = 0;
    for (std::size_t i = 0; i < 8; ++i)
      stored |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes_[end_ + i])) << (8 * i);
    if (stored != fnv1a64(reinterpret_cast<const unsigned char*>(bytes_.data()), end_))
      fail(what_ + ": checksum mismatch (the file is truncated or corrupted)");
  }

  [[nodiscard]] std::uint32_t version() const { return version_; }

  template <class U>
    requires std::is_arithmetic_v<U>
  U get() {
    using Bits = std::conditional_t<sizeof(U) == 1, std::uint8_t,
                                    std::conditional_t<sizeof(U) == 4, std::uint32_t, std::uint64_t>>;
    need(sizeof(U));
    Bits bits = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i)
      bits |= static_cast<Bits>(static_cast<Bits>(static_cast<unsigned char>(bytes_[pos_ + i])) << (8 * i));
    pos_ += sizeof(U);
    return std::bit_cast<U>(bits);
  }
  std::string get_string() {
    const auto n = get<std::uint32_t>();
    need(n);
    std::string s(bytes_.data() + pos_, n);
    pos_ += n;
    return s;
  }
  // Skips n elements of `element_size` bytes and returns where they start.
  std::size_t skip_array(std::uint64_t n, std::size_t element_size) {
    if (element_size != 0 && n > (end_ - pos_) / element_size) fail("checkpoint: truncated (array runs past the end)");
    const std::size_t at = pos_;
    pos_ += static_cast<std::size_t>(n) * element_size;
    return at;
  }
  template <class U>
  void read_array(std::size_t at, U* out, std::size_t n) const {
    if (n == 0) return;  // an empty buffer's data() may be null, which memcpy must not see
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(out, bytes_.data() + at, n * sizeof(U));
    } else {
      CheckpointReader copy = *this;
      copy.pos_ = at;
      for (std::size_t i = 0; i < n; ++i) out[i] = copy.get<U>();
    }
  }
  // Whether the n elements at `at` are all finite (and >= 0 when asked), read in chunks.
  template <class U>
  [[nodiscard]] bool all_finite(std::size_t at, std::size_t n, bool non_negative) const {
    std::array<U, 1024> chunk{};
    for (std::size_t i = 0; i < n; i += chunk.size()) {
      const std::size_t k = std::min(chunk.size(), n - i);
      read_array(at + i * sizeof(U), chunk.data(), k);
      for (std::size_t j = 0; j < k; ++j)
        if (!std::isfinite(chunk[j]) || (non_negative && chunk[j] < U(0))) return false;
    }
    return true;
  }
  // The same for n bfloat16 values (16-bit elements).
  [[nodiscard]] bool all_finite_bf16(std::size_t at, std::size_t n, bool non_negative) const {
    std::array<std::uint16_t, 1024> chunk{};
    for (std::size_t i = 0; i < n; i += chunk.size()) {
      const std::size_t k = std::min(chunk.size(), n - i);
      read_array(at + i * sizeof(std::uint16_t), chunk.data(), k);
      for (std::size_t j = 0; j < k; ++j) {
        if ((chunk[j] & 0x7f80u) == 0x7f80u) return false;  // Inf or NaN
        if (non_negative && (chunk[j] & 0x8000u) && (chunk[j] & 0x7fffu)) return false;
      }
    }
    return true;
  }
  [[nodiscard]] bool at_end() const { return pos_ == end_; }
  [[nodiscard]] const std::string& what() const { return what_; }

 private:
  void need(std::size_t n) const {
    if (n > end_ - pos_) fail(what_ + ": truncated at byte " + std::to_string(pos_));
  }
  // Appends up to n bytes from the stream; a stream error (a directory, an I/O error) is a
  // muon::Error whether or not the stream throws.
  void read_more(std::istream& is, std::size_t n) {
    const std::size_t before = bytes_.size();
    bytes_.resize(before + n);
    std::streamsize got = 0;
    try {
      is.read(bytes_.data() + before, static_cast<std::streamsize>(n));
      got = is.gcount();
    } catch (const std::ios_base::failure& e) {
      fail(what_ + ": reading the stream failed (" + e.what() + ")");
    }
    bytes_.resize(before + static_cast<std::size_t>(got));
    if (is.bad()) fail(what_ + ": reading the stream failed (an I/O error, or not a regular file)");
  }

  std::string what_;
  std::string bytes_;
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
  std::uint32_t version_ = 0;
};

// ---- A parsed checkpoint, checked for format errors but not yet matched to an optimizer ----

struct CheckpointItem {
  bool counter = false;
  std::uint64_t value = 0;        // counter value, or element count of a buffer
  std::size_t element_size = 0;   // buffer element bytes
  std::size_t at = 0;             // where a buffer's elements start in the reader
};

struct CheckpointTensor {
  std::uint8_t path = 0;  // muon::Path as stored
  Shape shape{};
  std::optional<double> lr_scale{};             // its group (version >= 2)
  std::optional<std::optional<double>> weight_decay{};  // version >= 2: the override, if any
  std::size_t params_at = 0;  // where the parameter values start (has_parameters)
  std::map<std::string, CheckpointItem> items;
  bool matched = false;  // set while matching against registered tensors
};

struct CheckpointContents {
  CheckpointReader reader;  // holds the bytes the offsets above point into
  std::uint64_t steps = 0;
  double lr = 0, fallback_lr = 0;
  bool has_parameters = false;
  std::map<std::string, CheckpointTensor> tensors;
};

inline Shape make_shape(const std::array<index_t, Shape::max_rank>& d, std::size_t rank) {
  switch (rank) {
    case 0: return Shape{};
    case 1: return Shape{d[0]};
    case 2: return Shape{d[0], d[1]};
    case 3: return Shape{d[0], d[1], d[2]};
    case 4: return Shape{d[0], d[1], d[2], d[3]};
    case 5: return Shape{d[0], d[1], d[2], d[3], d[4]};
    default: return Shape{d[0], d[1], d[2], d[3], d[4], d[5]};
  }
}

// Reads and checks a whole checkpoint (format, checksum, bounds, value size) into memory.
// Throws muon::Error on anything malformed; touches no optimizer.
inline CheckpointContents read_checkpoint(std::istream& is, std::size_t value_size, std::size_t max_bytes) {
  CheckpointContents c{CheckpointReader(is, k_optimizer_checkpoint, max_bytes), 0, 0, 0, false, {}};
  CheckpointReader& r = c.reader;
  const auto saved_value_size = r.get<std::uint32_t>();
  if (saved_value_size != value_size)
    fail("checkpoint: state is " + std::to_string(8 * saved_value_size) + "-bit floating point, this optimizer's is " +
         std::to_string(8 * value_size) + "-bit");
  c.steps = r.get<std::uint64_t>();
  c.lr = r.get<double>();
  (void)r.get<double>();         // momentum (informational)
  (void)r.get<std::uint8_t>();   // nesterov
  (void)r.get<double>();         // weight_decay
  (void)r.get<std::uint32_t>();  // lr_adjust
  c.fallback_lr = r.get<double>();
  if (c.steps >= k_max_counter) fail("checkpoint: step count " + std::to_string(c.steps) + " is out of range (< 2^53)");
  auto rate = [](double v) { return std::isfinite(v) && v >= 0 && v <= k_max_option_value; };
  if (!rate(c.lr) || !rate(c.fallback_lr))
    fail("checkpoint: a stored learning rate is negative, not finite or beyond the float range (lr " + format_value(c.lr) +
         ", fallback lr " + format_value(c.fallback_lr) + ")");
  c.has_parameters = r.get<std::uint8_t>() != 0;
  const auto count = r.get<std::uint64_t>();
  for (std::uint64_t i = 0; i < count; ++i) {
    std::string name = r.get_string();
    CheckpointTensor t;
    t.path = r.get<std::uint8_t>();
    if (t.path > 1) fail("checkpoint: tensor " + shown_value(name) + " has an invalid path code");
    const auto rank = r.get<std::uint32_t>();
    if (rank > Shape::max_rank) fail("checkpoint: tensor " + shown_value(name) + " has rank " + std::to_string(rank));
    std::array<index_t, Shape::max_rank> dims{};
    for (std::uint32_t d = 0; d < rank; ++d) dims[d] = static_cast<index_t>(r.get<std::int64_t>());
    t.shape = make_shape(dims, rank);
    std::uint64_t numel = 1;  // overflow-checked: a crafted shape must not wrap
    for (std::uint32_t d = 0; d < rank; ++d) {
      if (dims[d] < 0 || (dims[d] != 0 && numel > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()) /
                                                       static_cast<std::uint64_t>(dims[d])))
        fail("checkpoint: tensor " + shown_value(name) + " has an invalid shape");
      numel *= static_cast<std::uint64_t>(dims[d]);
    }
    if (r.version() >= 2) {
      t.lr_scale = r.get<double>();
      const bool has_wd = r.get<std::uint8_t>() != 0;
      const double wd = r.get<double>();
      if (!rate(*t.lr_scale) || (has_wd && !rate(wd)))
        fail("checkpoint: tensor " + shown_value(name) + " has an invalid group lr_scale or weight_decay");
      t.weight_decay = has_wd ? std::optional<double>(wd) : std::nullopt;
    }
    if (c.has_parameters) {
      const auto n = r.get<std::uint64_t>();
      if (n != numel)
        fail("checkpoint: tensor " + shown_value(name) + " stores " + std::to_string(n) + " values for shape " +
             t.shape.to_string());
      t.params_at = r.skip_array(n, value_size);
      const bool finite = value_size == 4 ? r.all_finite<float>(t.params_at, n, false) : r.all_finite<double>(t.params_at, n, false);
      if (!finite) fail("checkpoint: tensor " + shown_value(name) + " stores non-finite parameter values");
    }
    const auto items = r.get<std::uint32_t>();
    for (std::uint32_t k = 0; k < items; ++k) {
      std::string key = r.get_string();
      CheckpointItem item;
      const auto kind = r.get<std::uint8_t>();
      if (kind == 1) {
        item.counter = true;
        item.value = r.get<std::uint64_t>();
        if (item.value >= k_max_counter)
          fail("checkpoint: tensor " + shown_value(name) + ", counter " + shown_value(key) + " is out of range (" + std::to_string(item.value) + ")");
      } else if (kind == 0) {
        item.element_size = r.get<std::uint8_t>();
        item.value = r.get<std::uint64_t>();
        if (item.element_size != 1 && item.element_size != 2 && item.element_size != 4 && item.element_size != 8)
          fail("checkpoint: tensor " + shown_value(name) + ", state " + shown_value(key) + " has an invalid element size");
        item.at = r.skip_array(item.value, item.element_size);
        const bool finite = item.element_size == 1   ? true  // 8-bit codes (q8 state): every byte is a value
                            : item.element_size == 2 ? r.all_finite_bf16(item.at, item.value, false)
                            : item.element_size == 4 ? r.all_finite<float>(item.at, item.value, false)
                                                     : r.all_finite<double>(item.at, item.value, false);
        if (!finite) fail("checkpoint: tensor " + shown_value(name) + ", state " + shown_value(key) + " holds non-finite values");
      } else {
        fail("checkpoint: tensor " + shown_value(name) + ", state " + shown_value(key) + " has an invalid kind");
      }
      if (!t.items.emplace(key, item).second)
        fail("checkpoint: tensor " + shown_value(name) + ", state " + shown_value(key) + " appears twice");
    }
    if (!c.tensors.emplace(name, std::move(t)).second) fail("checkpoint: tensor " + shown_value(name) + " appears twice");
  }
  if (!r.at_end()) fail("checkpoint: unexpected bytes after the last tensor");
  return c;
}

}  // namespace muon::detail
