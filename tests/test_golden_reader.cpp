// Tests for the golden-data reader in tests/support/golden.hpp.
#include <catch2/catch.hpp>

#include "support/golden.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using muon::test::NpyArray;
using muon::test::read_npy;

namespace {

// A fresh directory under the system temp dir, removed on destruction.
struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device rd;
        path = fs::temp_directory_path() /
               ("muon_golden_reader_" + std::to_string(rd()) + "_" + std::to_string(rd()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

using Bytes = std::vector<unsigned char>;

void append_le(Bytes& out, std::uint64_t v, int nbytes) {
    for (int i = 0; i < nbytes; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

std::string shape_tuple(const std::vector<std::size_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}

// An NPY file written independently of the reader: `dict` is the header dict
// literal; it is padded with spaces and '\n' to a multiple of 64 bytes.
Bytes npy_bytes(const std::string& dict, const Bytes& data, unsigned char major = 1,
                unsigned char minor = 0) {
    std::string header = dict;
    const std::size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    Bytes out = {0x93, 'N', 'U', 'M', 'P', 'Y', major, minor};
    append_le(out, header.size(), 2);
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

std::string dict_for(const std::string& descr, const std::vector<std::size_t>& shape,
                     const std::string& fortran = "False") {
    return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape_tuple(shape) +
           ", }";
}

Bytes f4_data(const std::vector<float>& v) {
    Bytes out;
    for (const float x : v) append_le(out, std::bit_cast<std::uint32_t>(x), 4);
    return out;
}

Bytes f8_data(const std::vector<double>& v) {
    Bytes out;
    for (const double x : v) append_le(out, std::bit_cast<std::uint64_t>(x), 8);
    return out;
}

fs::path write_file(const fs::path& p, const Bytes& b) {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    REQUIRE(out.good());
    return p;
}

// read_npy(p) must throw std::runtime_error whose message names the file and
// contains `reason`.
void check_rejects(const fs::path& p, const std::string& reason) {
    INFO("file: " << p.filename().string() << ", expected reason: " << reason);
    bool threw = false;
    try {
        (void)read_npy(p);
    } catch (const std::runtime_error& e) {
        threw = true;
        const std::string msg = e.what();
        INFO("message: " << msg);
        CHECK(msg.find(p.string()) != std::string::npos);
        CHECK(msg.find(reason) != std::string::npos);
    }
    CHECK(threw);
}

std::vector<float> special_floats() {
    std::vector<float> v = {0.0f,
                            -0.0f,
                            1.0f,
                            -1.0f,
                            1.0f / 3.0f,
                            0.1f,
                            std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::lowest(),
                            std::numeric_limits<float>::min(),
                            std::numeric_limits<float>::denorm_min(),
                            -std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::epsilon(),
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()};
    std::mt19937 gen(12345);
    std::normal_distribution<float> nd;
    while (v.size() < 32) v.push_back(nd(gen) * std::pow(10.0f, static_cast<float>(v.size() % 7) - 3.0f));
    return v;
}

std::vector<double> special_doubles() {
    std::vector<double> v = {0.0,
                             -0.0,
                             1.0,
                             1.0 / 3.0,
                             0.1,
                             1e-300,
                             std::numeric_limits<double>::max(),
                             std::numeric_limits<double>::lowest(),
                             std::numeric_limits<double>::denorm_min(),
                             std::numeric_limits<double>::epsilon(),
                             std::numeric_limits<double>::infinity(),
                             -std::numeric_limits<double>::infinity()};
    std::mt19937_64 gen(6789);
    std::normal_distribution<double> nd;
    while (v.size() < 30) v.push_back(nd(gen));
    return v;
}

bool same_bits(double a, double b) { return std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b); }

}  // namespace

TEST_CASE("golden: index.json matches the case folders", "[golden]") {
    const auto idx = muon::test::golden_index();
    CHECK(idx.at("format_version") == 1);

    std::vector<std::string> listed;
    for (const auto& c : idx.at("cases")) listed.push_back(c.at("name").get<std::string>());
    CHECK(std::is_sorted(listed.begin(), listed.end()));
    CHECK(listed == muon::test::golden_case_names());

    std::set<std::string> folders;
    for (const auto& e : fs::directory_iterator(muon::test::golden_dir())) {
        if (e.is_directory()) folders.insert(e.path().filename().string());
    }
    CHECK(folders == std::set<std::string>(listed.begin(), listed.end()));
    CHECK(listed.size() == 25);
}

TEST_CASE("golden: golden_case_names filters by algorithm", "[golden]") {
    using muon::test::golden_case_names;
    CHECK(golden_case_names("muon").size() == 8);
    CHECK(golden_case_names("adamw") == std::vector<std::string>{"adamw_32", "adamw_48x64"});
    CHECK(golden_case_names("ns5").size() == 4);
    CHECK(golden_case_names("polar_express").size() == 3);
    CHECK(golden_case_names("msign_svd").size() == 3);
    CHECK(golden_case_names("grokfast_ema+adamw") == std::vector<std::string>{"grokfast_ema_adamw_16x24"});
    CHECK(golden_case_names("qk_clip") == std::vector<std::string>{"qk_clip_h4x8_32"});
    CHECK(golden_case_names("no_such_algorithm").empty());
    const auto muon_names = golden_case_names("muon");
    CHECK(std::is_sorted(muon_names.begin(), muon_names.end()));
}

TEST_CASE("golden: every case loads and agrees with its manifest", "[golden]") {
    const auto idx = muon::test::golden_index();
    for (const auto& entry : idx.at("cases")) {
        const auto name = entry.at("name").get<std::string>();
        INFO("case " << name);
        const muon::test::GoldenCase c = muon::test::load_golden_case(name);
        CHECK(c.name == name);
        CHECK(c.algorithm == entry.at("algorithm").get<std::string>());
        CHECK(c.kind == entry.at("kind").get<std::string>());
        CHECK(c.manifest.at("dtype") == "float32");
        CHECK(c.manifest.at("expected_dtype") == "float64");
        CHECK(c.hyperparameters.is_object());
        CHECK(std::isfinite(c.suggested_atol));
        CHECK(c.suggested_atol > 0.0);
        CHECK(c.arrays.size() == c.manifest.at("arrays").size());

        for (const auto& [key, a] : c.arrays) {
            INFO("array " << key);
            const auto& m = c.manifest.at("arrays").at(key);
            CHECK(a.descr == m.at("dtype").get<std::string>());
            CHECK(a.shape == m.at("shape").get<std::vector<std::size_t>>());
            CHECK(a.values.size() == muon::test::element_count(a.shape));
            CHECK(!a.values.empty());
            // Inputs are float32, everything named expected* is float64.
            CHECK(a.descr == (key.rfind("expected", 0) == 0 ? "<f8" : "<f4"));
            CHECK(std::all_of(a.values.begin(), a.values.end(), [](double v) { return std::isfinite(v); }));
            if (a.descr == "<f4") {
                CHECK(std::all_of(a.values.begin(), a.values.end(), [](double v) {
                    return static_cast<double>(static_cast<float>(v)) == v;
                }));
            }
        }

        if (c.kind == "transform") {
            CHECK(c.steps == 0);
            CHECK(c.manifest.at("steps").is_null());
            CHECK(c.array("input").shape == c.shape);
            CHECK(c.array("expected").shape == c.shape);
        } else if (c.kind == "trajectory") {
            REQUIRE(c.steps > 0);
            auto traj_shape = c.shape;
            traj_shape.insert(traj_shape.begin(), static_cast<std::size_t>(c.steps));
            CHECK(c.array("p0").shape == c.shape);
            CHECK(c.array("grads").shape == traj_shape);
            CHECK(c.array("expected").shape == traj_shape);
            CHECK(c.manifest.contains("state_init"));
        } else {
            REQUIRE(c.kind == "qk_clip");
            CHECK(c.steps == 1);
            const auto n_heads = c.hyperparameters.at("n_heads").get<std::size_t>();
            CHECK(c.array("wq").shape == c.shape);
            CHECK(c.array("expected_wk").shape == c.shape);
            CHECK(c.array("s_max").shape == std::vector<std::size_t>{n_heads});
            CHECK(c.array("expected_gamma").shape == std::vector<std::size_t>{n_heads});
        }
    }
}

TEST_CASE("golden: qk_clip case decodes to the documented values", "[golden]") {
    // A semantic spot check of the decoded numbers (README section 5, qk_clip).
    const auto c = muon::test::load_golden_case("qk_clip_h4x8_32");
    const double tau = c.hyperparameters.at("tau").get<double>();
    const auto head_dim = c.hyperparameters.at("head_dim").get<std::size_t>();
    const auto& s_max = c.array("s_max").values;
    const auto& gamma = c.array("expected_gamma").values;
    REQUIRE(s_max == std::vector<double>{50.0, 100.0, 150.0, 400.0});
    for (std::size_t h = 0; h < s_max.size(); ++h) {
        CHECK(gamma[h] == Approx(std::min(1.0, tau / s_max[h])).epsilon(1e-15));
    }
    const auto& wq = c.array("wq");
    const auto& ewq = c.array("expected_wq");
    const std::size_t cols = wq.shape[1];
    double err = 0.0;
    for (std::size_t r = 0; r < wq.shape[0]; ++r) {
        const double s = std::sqrt(gamma[r / head_dim]);
        for (std::size_t j = 0; j < cols; ++j) {
            err = std::max(err, std::abs(ewq.values[r * cols + j] - s * wq.values[r * cols + j]));
        }
    }
    CHECK(err < 1e-15);
}

TEST_CASE("golden: trajectory slices", "[golden]") {
    const auto c = muon::test::load_golden_case("adamw_48x64");
    const auto& g = c.array("grads");
    const auto& e = c.array("expected");
    REQUIRE(g.shape.size() == 3);
    const std::size_t inner = 48 * 64;
    for (std::size_t t = 0; t < g.shape[0]; ++t) {
        const auto gt = muon::test::slice(g, t);
        REQUIRE(gt.size() == inner);
        CHECK(std::equal(gt.begin(), gt.end(), g.values.begin() + static_cast<std::ptrdiff_t>(t * inner)));
        CHECK(muon::test::slice(e, t).size() == inner);
    }
    CHECK_THROWS_AS(muon::test::slice(g, g.shape[0]), std::out_of_range);
    // The parameter changes little per step: expected[0] is close to p0.
    CHECK(muon::test::max_abs_diff(muon::test::slice(e, 0), c.array("p0").values) < 1e-2);
}

TEST_CASE("golden: synthetic .npy files round-trip exactly", "[golden]") {
    TempDir dir;

    SECTION("<f4 1-D") {
        const auto v = special_floats();
        const auto p = write_file(dir.path / "f4_1d.npy", npy_bytes(dict_for("<f4", {v.size()}), f4_data(v)));
        const NpyArray a = read_npy(p);
        CHECK(a.descr == "<f4");
        CHECK(a.shape == std::vector<std::size_t>{v.size()});
        REQUIRE(a.values.size() == v.size());
        for (std::size_t i = 0; i < v.size(); ++i) CHECK(same_bits(a.values[i], static_cast<double>(v[i])));
        const auto f = muon::test::as_float(a);
        REQUIRE(f.size() == v.size());
        for (std::size_t i = 0; i < v.size(); ++i) {
            CHECK(std::bit_cast<std::uint32_t>(f[i]) == std::bit_cast<std::uint32_t>(v[i]));
        }
    }

    SECTION("<f4 3-D, C order") {
        const std::vector<std::size_t> shape = {2, 3, 5};
        std::vector<float> v;
        for (std::size_t i = 0; i < 2; ++i)
            for (std::size_t j = 0; j < 3; ++j)
                for (std::size_t k = 0; k < 5; ++k) v.push_back(static_cast<float>(100 * i + 10 * j + k) + 0.25f);
        const auto p = write_file(dir.path / "f4_3d.npy", npy_bytes(dict_for("<f4", shape), f4_data(v)));
        const NpyArray a = read_npy(p);
        CHECK(a.descr == "<f4");
        CHECK(a.shape == shape);
        REQUIRE(a.values.size() == 30);
        CHECK(a.values[(1 * 3 + 2) * 5 + 4] == 124.25);
        for (std::size_t i = 0; i < v.size(); ++i) CHECK(a.values[i] == static_cast<double>(v[i]));
        const auto s1 = muon::test::slice(a, 1);
        REQUIRE(s1.size() == 15);
        CHECK(s1.front() == 100.25);
        CHECK(s1.back() == 124.25);
    }

    SECTION("<f8 1-D") {
        const auto v = special_doubles();
        const auto p = write_file(dir.path / "f8_1d.npy", npy_bytes(dict_for("<f8", {v.size()}), f8_data(v)));
        const NpyArray a = read_npy(p);
        CHECK(a.descr == "<f8");
        CHECK(a.shape == std::vector<std::size_t>{v.size()});
        REQUIRE(a.values.size() == v.size());
        for (std::size_t i = 0; i < v.size(); ++i) CHECK(same_bits(a.values[i], v[i]));
    }

    SECTION("<f8 3-D") {
        const std::vector<std::size_t> shape = {4, 1, 7};
        std::vector<double> v;
        std::mt19937_64 gen(42);
        std::normal_distribution<double> nd;
        for (int i = 0; i < 28; ++i) v.push_back(nd(gen));
        const auto p = write_file(dir.path / "f8_3d.npy", npy_bytes(dict_for("<f8", shape), f8_data(v)));
        const NpyArray a = read_npy(p);
        CHECK(a.descr == "<f8");
        CHECK(a.shape == shape);
        REQUIRE(a.values.size() == v.size());
        for (std::size_t i = 0; i < v.size(); ++i) CHECK(same_bits(a.values[i], v[i]));
        CHECK(muon::test::max_abs_diff(a.values, v) == 0.0);
        CHECK(muon::test::slice(a, 3) == std::vector<double>(v.begin() + 21, v.end()));
    }

    SECTION("header variants NumPy may write") {
        // Keys in another order, double quotes, no trailing comma, no padding alignment.
        const std::vector<float> v = {1.5f, -2.5f, 3.5f, 4.5f, 5.5f, 6.5f};
        Bytes b = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
        const std::string h = "{\"shape\": (2,3), \"fortran_order\": False, \"descr\": \"<f4\"}\n";
        append_le(b, h.size(), 2);
        b.insert(b.end(), h.begin(), h.end());
        const auto d = f4_data(v);
        b.insert(b.end(), d.begin(), d.end());
        const NpyArray a = read_npy(write_file(dir.path / "variant.npy", b));
        CHECK(a.shape == std::vector<std::size_t>{2, 3});
        CHECK(a.values == std::vector<double>{1.5, -2.5, 3.5, 4.5, 5.5, 6.5});
    }
}

TEST_CASE("golden: malformed .npy files are rejected", "[golden]") {
    TempDir dir;
    const std::vector<float> v = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
    const Bytes good = npy_bytes(dict_for("<f4", {2, 3}), f4_data(v));
    REQUIRE_NOTHROW(read_npy(write_file(dir.path / "good.npy", good)));

    SECTION("bad magic") {
        Bytes b = good;
        b[1] = 'X';
        check_rejects(write_file(dir.path / "bad_magic.npy", b), "bad magic");
        Bytes c = good;
        c[0] = 0x94;
        check_rejects(write_file(dir.path / "bad_magic2.npy", c), "bad magic");
    }
    SECTION("unsupported version") {
        check_rejects(write_file(dir.path / "v2.npy", npy_bytes(dict_for("<f4", {2, 3}), f4_data(v), 2, 0)),
                      "version");
    }
    SECTION("truncated data") {
        Bytes b = good;
        b.pop_back();
        check_rejects(write_file(dir.path / "trunc1.npy", b), "truncated data");
        b.resize(good.size() - 4 * 6);  // header only
        check_rejects(write_file(dir.path / "trunc_all.npy", b), "truncated data");
    }
    SECTION("truncated header and tiny files") {
        Bytes b(good.begin(), good.begin() + 40);
        check_rejects(write_file(dir.path / "trunc_header.npy", b), "truncated header");
        check_rejects(write_file(dir.path / "empty.npy", {}), "too short");
        check_rejects(write_file(dir.path / "prefix.npy", Bytes(good.begin(), good.begin() + 8)), "too short");
    }
    SECTION("trailing bytes") {
        Bytes b = good;
        b.push_back(0);
        check_rejects(write_file(dir.path / "trailing.npy", b), "trailing bytes");
    }
    SECTION("big-endian >f4") {
        check_rejects(write_file(dir.path / "be.npy", npy_bytes(dict_for(">f4", {2, 3}), f4_data(v))),
                      "unsupported descr");
    }
    SECTION("other descr") {
        check_rejects(write_file(dir.path / "i4.npy", npy_bytes(dict_for("<i4", {2, 3}), f4_data(v))),
                      "unsupported descr");
        check_rejects(write_file(dir.path / "f2.npy", npy_bytes(dict_for("<f2", {6}), f4_data(v))),
                      "unsupported descr");
    }
    SECTION("fortran_order True") {
        check_rejects(write_file(dir.path / "fortran.npy",
                                 npy_bytes(dict_for("<f4", {2, 3}, "True"), f4_data(v))),
                      "fortran_order");
    }
    SECTION("malformed header dicts") {
        const std::vector<std::string> dicts = {
            "{'descr': '<f4', 'fortran_order': False, }",                          // no shape
            "{'descr': '<f4', 'shape': (6,), }",                                   // no fortran_order
            "{'descr': '<f4', 'fortran_order': False, 'shape': (6), }",            // not a tuple
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-6,), }",          // negative
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,), }",           // bad bool
            "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1, }",  // unknown key
            "{'descr': '<f4, 'fortran_order': False, 'shape': (6,), }",            // bad quoting
            "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), } junk",      // junk after dict
            "'descr': '<f4', 'fortran_order': False, 'shape': (6,)",               // no braces
        };
        for (std::size_t i = 0; i < dicts.size(); ++i) {
            check_rejects(write_file(dir.path / ("hdr" + std::to_string(i) + ".npy"), npy_bytes(dicts[i], f4_data(v))),
                          "malformed header");
        }
    }
    SECTION("shape overflow does not allocate") {
        check_rejects(write_file(dir.path / "huge.npy",
                                 npy_bytes(dict_for("<f8", {std::size_t{1} << 40, std::size_t{1} << 30}), f4_data(v))),
                      "shape too large");
        check_rejects(write_file(dir.path / "big.npy", npy_bytes(dict_for("<f8", {1000000, 1000}), f4_data(v))),
                      "truncated data");
    }
    SECTION("missing file") {
        check_rejects(dir.path / "does_not_exist.npy", "cannot open");
    }
}

TEST_CASE("golden: manifest cross-check rejects mismatching arrays", "[golden]") {
    TempDir dir;
    const std::string name = "adamw_32";
    const fs::path src = muon::test::golden_dir() / name;
    const fs::path dst = dir.path / name;
    fs::create_directories(dst);
    for (const auto& e : fs::directory_iterator(src)) {
        fs::copy_file(e.path(), dst / e.path().filename());
        fs::permissions(dst / e.path().filename(), fs::perms::owner_read | fs::perms::owner_write,
                        fs::perm_options::add);
    }
    REQUIRE_NOTHROW(muon::test::load_golden_case_at(dst));

    const auto manifest = muon::test::detail::read_json_file(dst / "manifest.json", "test");
    const auto rewrite = [&](const nlohmann::json& m) {
        std::ofstream out(dst / "manifest.json", std::ios::trunc);
        out << m.dump(2);
    };
    const auto expect_throw = [&](const std::string& reason) {
        bool threw = false;
        try {
            (void)muon::test::load_golden_case_at(dst);
        } catch (const std::runtime_error& e) {
            threw = true;
            INFO("message: " << e.what());
            CHECK(std::string(e.what()).find(reason) != std::string::npos);
        }
        CHECK(threw);
    };

    SECTION("shape mismatch") {
        auto m = manifest;
        m["arrays"]["p0"]["shape"] = {31};
        rewrite(m);
        expect_throw("shape");
    }
    SECTION("dtype mismatch") {
        auto m = manifest;
        m["arrays"]["expected"]["dtype"] = "<f4";
        rewrite(m);
        expect_throw("dtype");
    }
    SECTION("missing array file") {
        fs::remove(dst / "grads.npy");
        expect_throw("grads.npy");
    }
    SECTION("name does not match the folder") {
        auto m = manifest;
        m["name"] = "adamw_33";
        rewrite(m);
        expect_throw("folder");
    }
    SECTION("missing field") {
        auto m = manifest;
        m.erase("tolerance");
        rewrite(m);
        expect_throw("missing or mistyped");
    }
    SECTION("null steps reads as 0") {
        auto m = manifest;
        m["steps"] = nullptr;
        rewrite(m);
        CHECK(muon::test::load_golden_case_at(dst).steps == 0);
    }
}

TEST_CASE("golden: helper functions", "[golden]") {
    using muon::test::max_abs_diff;
    const std::vector<double> a = {1.0, 2.0, 3.0};
    const std::vector<double> b = {1.0, 2.5, 2.0};
    CHECK(max_abs_diff(a, b) == 1.0);
    CHECK(max_abs_diff(a, a) == 0.0);
    CHECK(max_abs_diff(std::vector<double>{}, std::vector<double>{}) == 0.0);
    CHECK_THROWS_AS(max_abs_diff(a, std::vector<double>{1.0}), std::invalid_argument);
    const double inf = std::numeric_limits<double>::infinity();
    CHECK(max_abs_diff(std::vector<double>{inf}, std::vector<double>{inf}) == 0.0);
    CHECK(std::isnan(max_abs_diff(std::vector<double>{1.0, std::nan("")}, std::vector<double>{1.0, 0.0})));

    NpyArray arr;
    arr.shape = {2, 2};
    arr.values = {0.1, 0.5, -1.0, 3.0};
    arr.descr = "<f8";
    CHECK(muon::test::as_float(arr) == std::vector<float>{0.1f, 0.5f, -1.0f, 3.0f});
    CHECK(muon::test::slice(arr, 1) == std::vector<double>{-1.0, 3.0});
    CHECK_THROWS_AS(muon::test::slice(arr, 2), std::out_of_range);
}
