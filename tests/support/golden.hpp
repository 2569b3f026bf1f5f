// Test-support reader for the golden test vectors in tests/data/golden.
//
// The data format (NPY 1.0 files plus one manifest.json per case and an
// index.json) is specified in tests/data/golden/README.md.  Everything here is
// header-only and meant for the test executables only; it is not part of the
// muon library.
//
// The build must define MUON_TEST_DATA_DIR as a string literal naming the
// tests/data directory, e.g. -DMUON_TEST_DATA_DIR="\"/path/to/tests/data\"".
#pragma once

#ifndef MUON_TEST_DATA_DIR
#error "tests/support/golden.hpp needs MUON_TEST_DATA_DIR: define it to the tests/data directory as a string literal, e.g. -DMUON_TEST_DATA_DIR=\"\\\"/path/to/tests/data\\\"\" (the CMake test target sets it)."
#endif

#include <muon/core/lr_adjust.hpp>
#include <muon/policy/orthogonalizer/newton_schulz.hpp>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

namespace muon::test {

// One array read from a .npy file.  `values` holds the elements in C
// (row-major) order, exactly as stored in the file, widened to double (exact
// for float32).  `descr` is the NumPy dtype string from the header: "<f4" or
// "<f8".
struct NpyArray {
    std::vector<std::size_t> shape;
    std::vector<double> values;
    std::string descr;
};

// One golden case (a sub-folder of golden/), see golden/README.md section 2.
struct GoldenCase {
    std::string name;
    std::string algorithm;
    std::string kind;                 // "transform", "trajectory" or "qk_clip"
    std::vector<std::size_t> shape;   // parameter / input shape, without the step axis
    int steps = 0;                    // manifest "steps"; 0 when null (transforms)
    nlohmann::json hyperparameters;
    nlohmann::json manifest;          // the whole manifest.json
    double suggested_atol = 0.0;      // manifest["tolerance"]["suggested_atol"]
    std::map<std::string, NpyArray> arrays;  // manifest["arrays"] key -> array

    // arrays.at(key) with an error message that names the case and the key.
    const NpyArray& array(const std::string& key) const {
        const auto it = arrays.find(key);
        if (it == arrays.end()) {
            throw std::out_of_range("golden case '" + name + "' has no array '" + key + "'");
        }
        return it->second;
    }
};

namespace detail {

[[noreturn]] inline void npy_fail(const std::filesystem::path& path, const std::string& what) {
    throw std::runtime_error("read_npy: " + path.string() + ": " + what);
}

inline std::vector<unsigned char> read_file_bytes(const std::filesystem::path& path,
                                                  const char* who) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw std::runtime_error(std::string(who) + ": " + path.string() + ": cannot open file");
    }
    std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                     std::istreambuf_iterator<char>());
    if (in.bad()) {
        throw std::runtime_error(std::string(who) + ": " + path.string() + ": read error");
    }
    return bytes;
}

inline std::uint64_t load_le(const unsigned char* p, std::size_t n) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) {
        v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    }
    return v;
}

// Minimal parser for the NPY header, a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (10, 16, 32), }
// followed by space padding and '\n'.
class NpyHeaderParser {
public:
    NpyHeaderParser(std::string_view text, const std::filesystem::path& path)
        : s_(text), path_(path) {}

    struct Result {
        std::string descr;
        bool fortran_order = false;
        std::vector<std::size_t> shape;
    };

    Result parse() {
        Result r;
        bool have_descr = false, have_fortran = false, have_shape = false;
        skip_ws();
        expect('{');
        for (;;) {
            skip_ws();
            if (peek() == '}') {
                ++i_;
                break;
            }
            const std::string key = quoted();
            skip_ws();
            expect(':');
            skip_ws();
            if (key == "descr") {
                if (have_descr) fail("duplicate key 'descr'");
                r.descr = quoted();
                have_descr = true;
            } else if (key == "fortran_order") {
                if (have_fortran) fail("duplicate key 'fortran_order'");
                r.fortran_order = boolean();
                have_fortran = true;
            } else if (key == "shape") {
                if (have_shape) fail("duplicate key 'shape'");
                r.shape = tuple();
                have_shape = true;
            } else {
                fail("unexpected header key '" + key + "'");
            }
            skip_ws();
            if (peek() == ',') {
                ++i_;
            } else if (peek() == '}') {
                ++i_;
                break;
            } else {
                fail("expected ',' or '}' in header");
            }
        }
        skip_ws();
        if (i_ != s_.size()) fail("unexpected characters after the header dict");
        if (!have_descr) fail("header has no 'descr'");
        if (!have_fortran) fail("header has no 'fortran_order'");
        if (!have_shape) fail("header has no 'shape'");
        return r;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        npy_fail(path_, "malformed header (" + what + "): " + std::string(s_));
    }
    char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
    void skip_ws() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
            ++i_;
        }
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++i_;
    }
    std::string quoted() {
        const char q = peek();
        if (q != '\'' && q != '"') fail("expected a quoted string");
        ++i_;
        const std::size_t end = s_.find(q, i_);
        if (end == std::string_view::npos) fail("unterminated string");
        std::string out(s_.substr(i_, end - i_));
        i_ = end + 1;
        return out;
    }
    bool boolean() {
        if (s_.substr(i_, 4) == "True") {
            i_ += 4;
            return true;
        }
        if (s_.substr(i_, 5) == "False") {
            i_ += 5;
            return false;
        }
        fail("expected True or False");
    }
    std::vector<std::size_t> tuple() {
        std::vector<std::size_t> dims;
        expect('(');
        skip_ws();
        if (peek() == ')') {  // () : a 0-d array
            ++i_;
            return dims;
        }
        for (;;) {
            skip_ws();
            std::size_t v = 0;
            const char* first = s_.data() + i_;
            const char* last = s_.data() + s_.size();
            const auto [ptr, ec] = std::from_chars(first, last, v);
            if (ec != std::errc{} || ptr == first) fail("bad integer in shape");
            i_ += static_cast<std::size_t>(ptr - first);
            dims.push_back(v);
            skip_ws();
            if (peek() == ',') {
                ++i_;
                skip_ws();
                if (peek() == ')') {  // trailing comma, e.g. (32,)
                    ++i_;
                    return dims;
                }
            } else if (peek() == ')') {
                ++i_;
                if (dims.size() == 1) fail("1-element shape without trailing comma");
                return dims;
            } else {
                fail("expected ',' or ')' in shape");
            }
        }
    }

    std::string_view s_;
    const std::filesystem::path& path_;
    std::size_t i_ = 0;
};

inline std::string read_text_file(const std::filesystem::path& path, const char* who) {
    const auto bytes = read_file_bytes(path, who);
    return std::string(bytes.begin(), bytes.end());
}

inline nlohmann::json read_json_file(const std::filesystem::path& path, const char* who) {
    const std::string text = read_text_file(path, who);
    try {
        return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(std::string(who) + ": " + path.string() + ": invalid JSON: " + e.what());
    }
}

inline std::string shape_to_string(const std::vector<std::size_t>& shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    return s + "]";
}

}  // namespace detail

// Number of elements of an array with this shape (1 for a 0-d shape).
inline std::size_t element_count(const std::vector<std::size_t>& shape) {
    std::size_t n = 1;
    for (const std::size_t d : shape) n *= d;
    return n;
}

// Reads an NPY version 1.0 file holding a little-endian float32 ('<f4') or
// float64 ('<f8') C-order array.  Throws std::runtime_error naming the file on
// any malformed or unsupported input.
inline NpyArray read_npy(const std::filesystem::path& path) {
    const std::vector<unsigned char> bytes = detail::read_file_bytes(path, "read_npy");

    static constexpr unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (bytes.size() < 10) detail::npy_fail(path, "file too short for an NPY prefix");
    if (!std::equal(std::begin(magic), std::end(magic), bytes.begin())) {
        detail::npy_fail(path, "bad magic (not an .npy file)");
    }
    if (bytes[6] != 1 || bytes[7] != 0) {
        detail::npy_fail(path, "unsupported NPY version " + std::to_string(bytes[6]) + "." +
                                   std::to_string(bytes[7]) + " (only 1.0 is supported)");
    }
    const std::size_t header_len = std::size_t{bytes[8]} | (std::size_t{bytes[9]} << 8);
    const std::size_t data_offset = 10 + header_len;
    if (bytes.size() < data_offset) detail::npy_fail(path, "truncated header");

    const std::string_view header(reinterpret_cast<const char*>(bytes.data() + 10), header_len);
    for (const char c : header) {
        if (static_cast<unsigned char>(c) >= 0x80 || c == '\0') {
            detail::npy_fail(path, "header is not printable ASCII");
        }
    }
    const auto h = detail::NpyHeaderParser(header, path).parse();

    std::size_t itemsize = 0;
    if (h.descr == "<f4") {
        itemsize = 4;
    } else if (h.descr == "<f8") {
        itemsize = 8;
    } else {
        detail::npy_fail(path, "unsupported descr '" + h.descr + "' (only '<f4' and '<f8')");
    }
    if (h.fortran_order) detail::npy_fail(path, "fortran_order True is not supported");

    std::size_t count = 1;
    for (const std::size_t d : h.shape) {
        if (d != 0 && count > std::numeric_limits<std::size_t>::max() / d) {
            detail::npy_fail(path, "shape too large");
        }
        count *= d;
    }
    const std::size_t available = bytes.size() - data_offset;
    if (count > available / itemsize) {
        detail::npy_fail(path, "truncated data: shape " + detail::shape_to_string(h.shape) + " needs " +
                                   std::to_string(count) + " x " + std::to_string(itemsize) +
                                   " bytes, file has " + std::to_string(available));
    }
    if (available != count * itemsize) {
        detail::npy_fail(path, "trailing bytes after the data: " +
                                   std::to_string(available - count * itemsize));
    }

    NpyArray out;
    out.shape = h.shape;
    out.descr = h.descr;
    out.values.resize(count);
    const unsigned char* p = bytes.data() + data_offset;
    if (itemsize == 4) {
        for (std::size_t i = 0; i < count; ++i) {
            const auto bits = static_cast<std::uint32_t>(detail::load_le(p + 4 * i, 4));
            out.values[i] = static_cast<double>(std::bit_cast<float>(bits));
        }
    } else {
        for (std::size_t i = 0; i < count; ++i) {
            out.values[i] = std::bit_cast<double>(detail::load_le(p + 8 * i, 8));
        }
    }
    return out;
}

// MUON_TEST_DATA_DIR "/golden".
inline std::filesystem::path golden_dir() {
    return std::filesystem::path(MUON_TEST_DATA_DIR) / "golden";
}

// Loads one case folder: manifest.json and every array in manifest["arrays"],
// cross-checking each array's dtype and shape against the manifest.
inline GoldenCase load_golden_case_at(const std::filesystem::path& case_dir) {
    const std::filesystem::path manifest_path = case_dir / "manifest.json";
    const nlohmann::json m = detail::read_json_file(manifest_path, "load_golden_case");
    const auto fail = [&](const std::string& what) -> void {
        throw std::runtime_error("load_golden_case: " + manifest_path.string() + ": " + what);
    };

    GoldenCase c;
    try {
        c.name = m.at("name").get<std::string>();
        c.algorithm = m.at("algorithm").get<std::string>();
        c.kind = m.at("kind").get<std::string>();
        c.shape = m.at("shape").get<std::vector<std::size_t>>();
        const auto& steps = m.at("steps");
        c.steps = steps.is_null() ? 0 : steps.get<int>();
        c.hyperparameters = m.at("hyperparameters");
        c.suggested_atol = m.at("tolerance").at("suggested_atol").get<double>();
        c.manifest = m;

        if (c.name != case_dir.filename().string()) {
            fail("manifest name '" + c.name + "' does not match the folder name");
        }
        const auto& arrays = m.at("arrays");
        if (!arrays.is_object() || arrays.empty()) fail("\"arrays\" must be a non-empty object");
        for (const auto& [key, entry] : arrays.items()) {
            const auto file = entry.at("file").get<std::string>();
            const auto dtype = entry.at("dtype").get<std::string>();
            const auto shape = entry.at("shape").get<std::vector<std::size_t>>();
            const std::filesystem::path rel(file);
            if (rel.empty() || rel.has_parent_path() || rel.is_absolute()) {
                fail("array '" + key + "': bad file name '" + file + "'");
            }
            NpyArray a = read_npy(case_dir / rel);
            if (a.descr != dtype) {
                fail("array '" + key + "': file dtype '" + a.descr + "' but manifest says '" + dtype + "'");
            }
            if (a.shape != shape) {
                fail("array '" + key + "': file shape " + detail::shape_to_string(a.shape) +
                     " but manifest says " + detail::shape_to_string(shape));
            }
            c.arrays.emplace(key, std::move(a));
        }
    } catch (const nlohmann::json::exception& e) {
        fail(std::string("missing or mistyped field: ") + e.what());
    }
    return c;
}

// Loads MUON_TEST_DATA_DIR "/golden/" + name.
inline GoldenCase load_golden_case(const std::string& name) {
    return load_golden_case_at(golden_dir() / name);
}

// index.json
inline nlohmann::json golden_index() {
    return detail::read_json_file(golden_dir() / "index.json", "golden_index");
}

// Names of all cases in index.json, sorted.
inline std::vector<std::string> golden_case_names() {
    const nlohmann::json idx = golden_index();
    std::vector<std::string> names;
    for (const auto& c : idx.at("cases")) names.push_back(c.at("name").get<std::string>());
    std::sort(names.begin(), names.end());
    return names;
}

// Names of the cases in index.json whose "algorithm" equals `algorithm`
// (e.g. "muon", "adamw", "grokfast_ema+adamw"), sorted.
inline std::vector<std::string> golden_case_names(const std::string& algorithm) {
    const nlohmann::json idx = golden_index();
    std::vector<std::string> names;
    for (const auto& c : idx.at("cases")) {
        if (c.at("algorithm").get<std::string>() == algorithm) {
            names.push_back(c.at("name").get<std::string>());
        }
    }
    std::sort(names.begin(), names.end());
    return names;
}

// The values narrowed to float (exact for '<f4' arrays).
inline std::vector<float> as_float(const NpyArray& a) {
    std::vector<float> out(a.values.size());
    std::transform(a.values.begin(), a.values.end(), out.begin(),
                   [](double v) { return static_cast<float>(v); });
    return out;
}

// The t-th slice along the leading axis (C order): for a trajectory array of
// shape [T] + shape, slice(a, t) is a[t] with prod(shape) elements.
inline std::vector<double> slice(const NpyArray& a, std::size_t t) {
    if (a.shape.empty()) throw std::invalid_argument("slice: 0-d array has no leading axis");
    if (t >= a.shape[0]) {
        throw std::out_of_range("slice: index " + std::to_string(t) + " out of range for leading dimension " +
                                std::to_string(a.shape[0]));
    }
    const std::size_t inner = a.shape[0] == 0 ? 0 : a.values.size() / a.shape[0];
    const auto first = a.values.begin() + static_cast<std::ptrdiff_t>(t * inner);
    return std::vector<double>(first, first + static_cast<std::ptrdiff_t>(inner));
}

// max_i |a[i] - b[i]|; 0 for empty inputs.  Equal elements (including equal
// infinities) count as 0; any NaN difference makes the result NaN, so a
// check like `max_abs_diff(...) <= atol` fails.  Throws std::invalid_argument
// if the sizes differ.
inline double max_abs_diff(std::span<const double> a, std::span<const double> b) {
    if (a.size() != b.size()) {
        throw std::invalid_argument("max_abs_diff: size mismatch (" + std::to_string(a.size()) + " vs " +
                                    std::to_string(b.size()) + ")");
    }
    double m = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double d = a[i] == b[i] ? 0.0 : std::abs(a[i] - b[i]);
        if (std::isnan(d)) return std::numeric_limits<double>::quiet_NaN();
        m = std::max(m, d);
    }
    return m;
}

// The Newton-Schulz options a golden ns5 / polar_express case was made with.
inline muon::policy::NewtonSchulz::Options ns_options_from(const GoldenCase& c) {
  const auto& h = c.hyperparameters;
  muon::policy::NewtonSchulz::Options o;
  o.steps = h.at("steps").get<int>();
  if (h.contains("coeffs_per_step")) {
    for (const auto& q : h.at("coeffs_per_step"))
      o.schedule.push_back({q.at(0).get<double>(), q.at(1).get<double>(), q.at(2).get<double>()});
    o.norm_scale = h.at("norm_safety").get<double>();
  } else {
    const auto& q = h.at("coeffs");
    o.coefficients = {q.at(0).get<double>(), q.at(1).get<double>(), q.at(2).get<double>()};
  }
  o.eps = h.at("eps").get<double>();
  return o;
}

// The Muon options (Options of any muon::Muon<B>) a golden "muon" trajectory case was made with.
template <class Options>
Options muon_options_from(const GoldenCase& c) {
  const auto& h = c.hyperparameters;
  Options o;
  o.lr = h.at("lr").get<double>();
  o.momentum = h.at("momentum").get<double>();
  o.nesterov = h.at("nesterov").get<bool>();
  o.weight_decay = h.at("weight_decay").get<double>();
  const auto adjust = h.at("adjust_lr_fn").get<std::string>();
  if (adjust == "original")
    o.lr_adjust = muon::LrAdjust::original;
  else if (adjust == "match_rms_adamw")
    o.lr_adjust = muon::LrAdjust::match_rms_adamw;
  else
    throw std::runtime_error("golden case " + c.name + ": unknown adjust_lr_fn " + adjust);
  o.orthogonalizer.steps = h.at("ns_steps").get<int>();
  const auto& q = h.at("ns_coeffs");
  o.orthogonalizer.coefficients = {q.at(0).get<double>(), q.at(1).get<double>(), q.at(2).get<double>()};
  o.orthogonalizer.eps = h.at("eps").get<double>();
  if (h.at("eps_mode").get<std::string>() != "add")
    throw std::runtime_error("golden case " + c.name + ": eps_mode must be \"add\"");
  return o;
}

}  // namespace muon::test
