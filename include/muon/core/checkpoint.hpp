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
#include <bit>
#include <cstdint>
#include <cstring>
#include <istream>
#include <iterator>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "muon/core/error.hpp"

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

}  // namespace muon::detail
