#pragma once
// The byte format of optimizer checkpoints, and the checked reader and writer behind
// Optimizer::save / Optimizer::load.
//
// Layout (all integers and floats little-endian):
//   "MUONCKPT"  u32 version (1)  u32 sizeof(value_type)  u64 steps_taken
//   f64 lr  f64 momentum  u8 nesterov  f64 weight_decay  u32 lr_adjust  f64 fallback_lr
//   u8 has_parameters  u64 tensor_count
//   per tensor: str name  u8 path  u32 rank  i64 dims[rank]
//               [has_parameters: u64 n, n values]
//               u32 item_count, per item: str key, u8 kind (0 buffer, 1 counter),
//                 buffer: u8 element_size, u64 n, n elements;  counter: u64 value
//   u64 FNV-1a 64 of every byte before it
// (str = u32 length + bytes.) The checksum catches truncation and corruption; every read is
// bounds-checked as well, so a damaged file gets an Error, never undefined behaviour.
#include <array>
#include <bit>
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

namespace muon::detail {

inline constexpr char k_checkpoint_magic[8] = {'M', 'U', 'O', 'N', 'C', 'K', 'P', 'T'};
inline constexpr std::uint32_t k_checkpoint_version = 1;

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

  // Appends the checksum and writes everything; throws if the stream fails.
  void finish(std::ostream& os) {
    put(fnv1a64(reinterpret_cast<const unsigned char*>(bytes_.data()), bytes_.size()));
    os.write(bytes_.data(), static_cast<std::streamsize>(bytes_.size()));
    if (!os) fail("checkpoint: writing to the stream failed");
  }

 private:
  std::string bytes_;
};

class CheckpointReader {
 public:
  // Reads the whole stream and checks magic, version and checksum before anything is parsed.
  explicit CheckpointReader(std::istream& is) {
    bytes_.assign(std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>());
    if (bytes_.size() < sizeof(k_checkpoint_magic) + 4 + 8 ||
        std::memcmp(bytes_.data(), k_checkpoint_magic, sizeof(k_checkpoint_magic)) != 0)
      fail("checkpoint: not a muon checkpoint (bad magic or too short)");
    end_ = bytes_.size() - 8;
    pos_ = sizeof(k_checkpoint_magic);
    const auto version = get<std::uint32_t>();
    if (version != k_checkpoint_version)
      fail("checkpoint: format version " + std::to_string(version) + " is not supported (this build reads version " +
           std::to_string(k_checkpoint_version) + ")");
    std::uint64_t stored = 0;
    for (std::size_t i = 0; i < 8; ++i)
      stored |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes_[end_ + i])) << (8 * i);
    if (stored != fnv1a64(reinterpret_cast<const unsigned char*>(bytes_.data()), end_))
      fail("checkpoint: checksum mismatch (the file is truncated or corrupted)");
  }

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
  [[nodiscard]] bool at_end() const { return pos_ == end_; }

 private:
  void need(std::size_t n) const {
    if (n > end_ - pos_) fail("checkpoint: truncated at byte " + std::to_string(pos_));
  }

  std::string bytes_;
  std::size_t pos_ = 0;
  std::size_t end_ = 0;
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
inline CheckpointContents read_checkpoint(std::istream& is, std::size_t value_size) {
  CheckpointContents c{CheckpointReader(is), 0, 0, 0, false, {}};
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
  if (!(c.lr >= 0) || !(c.fallback_lr >= 0)) fail("checkpoint: a stored learning rate is negative or NaN");
  c.has_parameters = r.get<std::uint8_t>() != 0;
  const auto count = r.get<std::uint64_t>();
  for (std::uint64_t i = 0; i < count; ++i) {
    std::string name = r.get_string();
    CheckpointTensor t;
    t.path = r.get<std::uint8_t>();
    if (t.path > 1) fail("checkpoint: tensor '" + name + "' has an invalid path code");
    const auto rank = r.get<std::uint32_t>();
    if (rank > Shape::max_rank) fail("checkpoint: tensor '" + name + "' has rank " + std::to_string(rank));
    std::array<index_t, Shape::max_rank> dims{};
    for (std::uint32_t d = 0; d < rank; ++d) dims[d] = static_cast<index_t>(r.get<std::int64_t>());
    t.shape = make_shape(dims, rank);
    if (c.has_parameters) {
      const auto n = r.get<std::uint64_t>();
      if (n != static_cast<std::uint64_t>(t.shape.numel()))
        fail("checkpoint: tensor '" + name + "' stores " + std::to_string(n) + " values for shape " +
             t.shape.to_string());
      t.params_at = r.skip_array(n, value_size);
    }
    const auto items = r.get<std::uint32_t>();
    for (std::uint32_t k = 0; k < items; ++k) {
      std::string key = r.get_string();
      CheckpointItem item;
      const auto kind = r.get<std::uint8_t>();
      if (kind == 1) {
        item.counter = true;
        item.value = r.get<std::uint64_t>();
      } else if (kind == 0) {
        item.element_size = r.get<std::uint8_t>();
        item.value = r.get<std::uint64_t>();
        item.at = r.skip_array(item.value, item.element_size);
      } else {
        fail("checkpoint: tensor '" + name + "', state '" + key + "' has an invalid kind");
      }
      t.items.emplace(std::move(key), item);
    }
    if (!c.tensors.emplace(name, std::move(t)).second) fail("checkpoint: tensor '" + name + "' appears twice");
  }
  if (!r.at_end()) fail("checkpoint: unexpected bytes after the last tensor");
  return c;
}

}  // namespace muon::detail
