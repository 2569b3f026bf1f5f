// Checkpoint fuzzing: every truncation, every single-bit flip (with the checksum left as it is,
// and recomputed so that the parser and the value checks are what stands in the way), crafted
// headers with huge counts, endless and unreadable streams. After each attempt the all-or-nothing
// rule must hold: a rejected load throws muon::Error and leaves state, parameters, step count and
// learning rates exactly as they were; an accepted one leaves an optimizer that steps to finite
// parameters. Sized to run in a few seconds.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>
#include <sstream>
#include <streambuf>
#include <string>

namespace {

using T = float;
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
using Opt = muon::Muon<muon::backend::Eigen<T>>;

// Small on purpose: the flip loops load it tens of thousands of times.
struct Model {
  Mat w = Mat::Zero(4, 6), gw = Mat::Zero(4, 6);
  Vec b = Vec::Zero(3), gb = Vec::Zero(3);
  Mat emb = Mat::Zero(5, 2), gemb = Mat::Zero(5, 2);
  Opt opt{Opt::Options{.schedule = muon::Schedule::warmup_cosine({.warmup_steps = 2, .total_steps = 50})}};

  Model() {
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = static_cast<T>(std::sin(0.3 * static_cast<double>(i)));
    for (Eigen::Index i = 0; i < emb.size(); ++i) emb.data()[i] = static_cast<T>(std::cos(0.7 * static_cast<double>(i)));
    opt.add("w", w, gw);
    opt.add("b", b, gb, {.role = muon::Role::bias, .weight_decay = 0.0});
    opt.add("embed", emb, gemb, {.role = muon::Role::embedding, .lr_scale = 2.0});
    opt.add("lm_head", emb, gemb, {.role = muon::Role::output_head, .lr_scale = 2.0});
  }
  void train(int from, int to) {
    for (int t = from; t < to; ++t) {
      auto f = [t](Eigen::Index i) { return static_cast<T>(std::sin(1.7 * t + 0.11 * static_cast<double>(i))); };
      for (Eigen::Index i = 0; i < gw.size(); ++i) gw.data()[i] = f(i);
      for (Eigen::Index i = 0; i < gb.size(); ++i) gb.data()[i] = f(i + 7);
      for (Eigen::Index i = 0; i < gemb.size(); ++i) gemb.data()[i] = f(i + 3);
      REQUIRE(opt.step().all_applied());
    }
  }
  [[nodiscard]] bool finite() const { return w.allFinite() && b.allFinite() && emb.allFinite(); }
};

// Everything load() may change.
struct Frozen {
  std::map<std::string, std::vector<double>> state;
  std::uint64_t steps;
  double lr, fallback_lr;
  std::string routing;  // shows the parameter groups
  Mat w, emb;
  Vec b;
  explicit Frozen(Model& m)
      : state(m.opt.state_snapshot()),
        steps(m.opt.steps_taken()),
        lr(m.opt.lr()),
        fallback_lr(m.opt.fallback_lr()),
        routing(m.opt.routing_report().to_string()),
        w(m.w),
        emb(m.emb),
        b(m.b) {}
  bool operator==(const Frozen& o) const {
    return state == o.state && steps == o.steps && lr == o.lr && fallback_lr == o.fallback_lr && routing == o.routing &&
           w == o.w && emb == o.emb && b == o.b;
  }
};

template <class O>
std::string saved(O& opt, bool parameters = true) {
  std::ostringstream os;
  opt.save(os, {.parameters = parameters});
  return os.str();
}

void put_checksum(std::string& bytes) {
  const auto sum = muon::detail::fnv1a64(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size() - 8);
  for (int i = 0; i < 8; ++i) bytes[bytes.size() - 8 + static_cast<std::size_t>(i)] = static_cast<char>((sum >> (8 * i)) & 0xff);
}

// Loads `bytes` into m. Returns whether it was accepted; checks the all-or-nothing rule either way.
bool attempt(Model& m, const Frozen& before, const std::string& home, const std::string& bytes) {
  std::istringstream is(bytes);
  try {
    m.opt.load(is);
  } catch (const muon::Error&) {
    const bool unchanged = Frozen(m) == before;
    if (!unchanged) {
      FAIL_CHECK("a rejected load changed the optimizer");
    }
    return false;
  }
  // Accepted (a flip in a value that is still valid): the optimizer must still step to finite
  // parameters; then it goes back to where it was.
  bool ok = true;
  try {
    m.train(0, 1);
    ok = m.finite();
  } catch (const muon::Error& e) {
    ok = false;
    INFO(e.what());
  }
  if (!ok) FAIL_CHECK("an accepted checkpoint led to a failing or non-finite step");
  std::istringstream back(home);
  m.opt.load(back);
  m.w = before.w;
  m.emb = before.emb;
  m.b = before.b;
  return true;
}

// A stream that yields `prefix` and then zero bytes forever (/dev/zero after a header).
class EndlessBuf : public std::streambuf {
 public:
  explicit EndlessBuf(std::string prefix) : prefix_(std::move(prefix)), zeros_(4096, '\0') {}

 protected:
  int_type underflow() override {
    if (!in_prefix_done_) {
      in_prefix_done_ = true;
      if (!prefix_.empty()) {
        setg(prefix_.data(), prefix_.data(), prefix_.data() + prefix_.size());
        return traits_type::to_int_type(*gptr());
      }
    }
    served_ += zeros_.size();
    setg(zeros_.data(), zeros_.data(), zeros_.data() + zeros_.size());
    return traits_type::to_int_type(*gptr());
  }

 public:
  std::size_t served_ = 0;

 private:
  std::string prefix_, zeros_;
  bool in_prefix_done_ = false;
};

}  // namespace

TEST_CASE("checkpoint fuzz: every truncation and every bit flip is all or nothing", "[checkpoint][fuzz]") {
  Model source;
  source.train(0, 4);
  const std::string good = saved(source.opt);

  Model target;
  target.train(0, 2);
  const std::string home = saved(target.opt);
  const Frozen before(target);

  SECTION("truncation at every byte") {
    for (std::size_t cut = 0; cut < good.size(); ++cut) CHECK_FALSE(attempt(target, before, home, good.substr(0, cut)));
  }
  SECTION("single-bit flips, checksum as written: all rejected") {
    for (std::size_t i = 0; i < good.size(); ++i)
      for (int bit = 0; bit < 8; ++bit) {
        std::string bad = good;
        bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
        CHECK_FALSE(attempt(target, before, home, bad));
      }
  }
  SECTION("single-bit flips with the checksum recomputed: each rejected cleanly or safe to use") {
    std::size_t accepted = 0;
    for (std::size_t i = 0; i + 8 < good.size(); ++i)
      for (int bit = 0; bit < 8; ++bit) {
        std::string bad = good;
        bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
        put_checksum(bad);
        accepted += attempt(target, before, home, bad);
      }
    // Flips in value bits (state, parameters, rates) are legitimate values; flips in the
    // structure are not. Both kinds must occur, or the loop tests less than it claims.
    const std::size_t tried = 8 * (good.size() - 8);
    INFO(accepted << " of " << tried << " flips accepted");
    CHECK(accepted > 0);
    CHECK(tried - accepted > tried / 10);
  }
}

TEST_CASE("checkpoint fuzz: crafted headers with huge counts are rejected without huge allocations",
          "[checkpoint][fuzz]") {
  Model target;
  target.train(0, 2);
  const std::string home = saved(target.opt);
  const Frozen before(target);

  // A header as save() writes it, then whatever the case adds, then a valid checksum.
  auto crafted = [](auto&& body, std::uint64_t steps = 3, double lr = 0.02, double fallback_lr = 1e-3) {
    muon::detail::CheckpointWriter w;
    w.put_raw(muon::detail::k_checkpoint_magic, 8);
    w.put(muon::detail::k_checkpoint_version);
    w.put(std::uint32_t{4});
    w.put(steps);
    w.put(lr);
    w.put(0.95);
    w.put(std::uint8_t{1});
    w.put(0.0);
    w.put(std::uint32_t{0});
    w.put(fallback_lr);
    w.put(std::uint8_t{0});
    body(w);
    std::ostringstream os;
    w.finish(os);
    return os.str();
  };
  auto rejected_with = [&](const std::string& bytes, const std::string& needle) {
    std::istringstream is(bytes);
    try {
      target.opt.load(is);
      FAIL_CHECK("accepted a crafted checkpoint (expected: " << needle << ")");
    } catch (const muon::Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK(Frozen(target) == before);
  };

  rejected_with(crafted([](auto& w) { w.put(std::uint64_t{0xffffffffffffffffull}); }), "truncated");
  rejected_with(crafted([](auto& w) {
                  w.put(std::uint64_t{1});
                  w.put(std::uint32_t{0xffffffffu});  // name length
                }),
                "truncated");
  rejected_with(crafted([](auto& w) {
                  w.put(std::uint64_t{1});
                  w.put_string("w");
                  w.put(std::uint8_t{0});
                  w.put(std::uint32_t{3});
                  for (int d = 0; d < 3; ++d) w.put(std::int64_t{1} << 40);  // 2^120 elements
                }),
                "invalid shape");
  rejected_with(crafted([](auto& w) {
                  w.put(std::uint64_t{1});
                  w.put_string("w");
                  w.put(std::uint8_t{0});
                  w.put(std::uint32_t{2});
                  w.put(std::int64_t{4});
                  w.put(std::int64_t{6});
                  w.put(1.0);
                  w.put(std::uint8_t{0});
                  w.put(0.0);
                  w.put(std::uint32_t{1});
                  w.put_string("momentum");
                  w.put(std::uint8_t{0});
                  w.put(std::uint8_t{4});
                  w.put(std::uint64_t{1} << 61);  // elements
                }),
                "truncated");
  // Values a crafted file may hold with a valid checksum.
  rejected_with(crafted([](auto& w) { w.put(std::uint64_t{0}); }, std::uint64_t{0xffffffffffffffffull}), "step count");
  rejected_with(crafted([](auto& w) { w.put(std::uint64_t{0}); }, 3, std::numeric_limits<double>::infinity()),
                "learning rate");
  rejected_with(crafted([](auto& w) { w.put(std::uint64_t{0}); }, 3, 0.02, std::numeric_limits<double>::infinity()),
                "learning rate");
  rejected_with(crafted([](auto& w) { w.put(std::uint64_t{0}); }, 3, 0.02, 1e300), "learning rate");
}

TEST_CASE("checkpoint: values that load() would apply are checked before anything is written", "[checkpoint][bad_input]") {
  Model source;
  source.train(0, 3);
  Model target;
  target.train(0, 2);
  const std::string home = saved(target.opt);
  const Frozen before(target);

  // Rewrites one state counter / value of `source`'s checkpoint in place, with a valid checksum.
  const std::string good = saved(source.opt);
  auto with_counter = [&](const std::string& key, std::uint64_t value) {
    std::string bytes = good;
    const auto at = bytes.find(key);
    REQUIRE(at != std::string::npos);
    const std::size_t v = at + key.size() + 1;  // after the key: u8 kind (1), u64 value
    REQUIRE(bytes[v - 1] == 1);
    for (int i = 0; i < 8; ++i) bytes[v + static_cast<std::size_t>(i)] = static_cast<char>((value >> (8 * i)) & 0xff);
    put_checksum(bytes);
    return bytes;
  };
  auto rejected_with = [&](const std::string& bytes, const std::string& needle) {
    std::istringstream is(bytes);
    try {
      target.opt.load(is);
      FAIL_CHECK("accepted (expected: " << needle << ")");
    } catch (const muon::Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK(Frozen(target) == before);
  };
  SECTION("an AdamW step count that would wrap") {
    rejected_with(with_counter("fallback/step", 0xffffffffffffffffull), "out of range");
  }
  SECTION("a negative second moment") {
    std::string bytes = good;
    const std::string key = "fallback/exp_avg_sq";
    const auto at = bytes.find(key);
    REQUIRE(at != std::string::npos);
    const std::size_t first = at + key.size() + 1 + 1 + 8;  // kind, element size, count
    const float negative = -1.0f;
    std::memcpy(bytes.data() + first, &negative, sizeof(float));
    put_checksum(bytes);
    rejected_with(bytes, "negative");
  }
  SECTION("a non-finite momentum") {
    std::string bytes = good;
    const std::string key = "momentum";
    const auto at = bytes.find(key);
    REQUIRE(at != std::string::npos);
    const std::size_t first = at + key.size() + 1 + 1 + 8;
    const float inf = std::numeric_limits<float>::infinity();
    std::memcpy(bytes.data() + first, &inf, sizeof(float));
    put_checksum(bytes);
    rejected_with(bytes, "non-finite");
  }
  SECTION("a valid file still loads") {
    std::istringstream is(good);
    target.opt.load(is);
    CHECK(target.opt.steps_taken() == 3);
  }
}

TEST_CASE("checkpoint streams: header first, bounded, every failure a muon::Error", "[checkpoint][bad_input]") {
  Model m;
  m.train(0, 2);
  const Frozen before(m);
  const std::string good = saved(m.opt);

  SECTION("an endless stream of zeros is refused after its header") {
    EndlessBuf zeros("");
    std::istream is(&zeros);
    CHECK_THROWS_WITH(m.opt.load(is), Catch::Contains("not a muon checkpoint"));
    CHECK(zeros.served_ <= 4096);
  }
  SECTION("a valid header followed by an endless stream is read no further than any checkpoint could be") {
    EndlessBuf endless(good.substr(0, 40));
    std::istream is(&endless);
    CHECK_THROWS_WITH(m.opt.load(is), Catch::Contains("longer than any checkpoint"));
    CHECK(endless.served_ <= m.opt.checkpoint_size_bound() + (std::size_t{1} << 21));
  }
  SECTION("a directory") {
    std::ifstream dir("/tmp");
    CHECK_THROWS_AS(m.opt.load(dir), muon::Error);
    std::ifstream dir_throwing;
    dir_throwing.exceptions(std::ios::failbit | std::ios::badbit);
    dir_throwing.open("/tmp");
    CHECK_THROWS_AS(m.opt.load(dir_throwing), muon::Error);
  }
  SECTION("saving to a full disk reports the failure") {
    std::ofstream full("/dev/full");
    if (!full) {
      WARN("/dev/full is not available here; skipped");
      return;
    }
    CHECK_THROWS_WITH(m.opt.save(full), Catch::Contains("writing"));
    std::ofstream full_throwing;
    full_throwing.exceptions(std::ios::failbit | std::ios::badbit);
    full_throwing.open("/dev/full");
    CHECK_THROWS_AS(m.opt.save(full_throwing), muon::Error);
  }
  CHECK(Frozen(m) == before);
}

TEST_CASE("checkpoint: QK-Clip's stored max logits must be >= 0", "[checkpoint][bad_input][qk_clip]") {
  using Clip = muon::MuonClip<muon::backend::Eigen<T>>;
  auto model = [](Clip& opt, Mat& q, Mat& k, Mat& gq, Mat& gk) {
    q = Mat::Constant(8, 6, 0.1f);
    k = Mat::Constant(8, 6, 0.2f);
    gq = Mat::Constant(8, 6, 0.01f);
    gk = Mat::Constant(8, 6, 0.02f);
    opt.add("q", q, gq, {.role = muon::Role::query, .heads = 2});
    opt.add("k", k, gk, {.role = muon::Role::key, .heads = 2});
  };
  Mat q, k, gq, gk, q2, k2, gq2, gk2;
  Clip source, target;
  model(source, q, k, gq, gk);
  model(target, q2, k2, gq2, gk2);
  const std::vector<T> logits{50.0f, 200.0f};
  muon::set_max_logits(source, "q", "k", std::span<const T>(logits));
  std::string bytes = saved(source);
  const std::string key = "constraint/max_logits";
  const auto at = bytes.find(key);
  REQUIRE(at != std::string::npos);
  const std::size_t size_at = at + key.size() + 1;  // after the kind byte: u8 element size
  REQUIRE(static_cast<unsigned char>(bytes[size_at]) == sizeof(T));
  const T negative = -1.0f;
  std::memcpy(bytes.data() + size_at + 1 + 8, &negative, sizeof(T));
  put_checksum(bytes);
  const auto before = target.state_snapshot();
  std::istringstream is(bytes);
  CHECK_THROWS_WITH(target.load(is), Catch::Contains("negative"));
  CHECK(target.state_snapshot() == before);
}


namespace {

using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A ManifoldModel with one tensor in each group, small enough to load every damaged variant.
struct Model4 {
  RowMat qkv = RowMat::Zero(8, 4), gqkv = RowMat::Zero(8, 4);
  RowMat embed = RowMat::Zero(6, 4), gembed = RowMat::Zero(6, 4);
  RowMat gate = RowMat::Zero(3, 4), ggate = RowMat::Zero(3, 4);
  Vec norm = Vec::Ones(4), gnorm = Vec::Zero(4);
  muon::ManifoldModel<muon::backend::Eigen<T>> opt{{.threads = 1}};
  Model4() {
    for (Eigen::Index i = 0; i < qkv.size(); ++i) qkv.data()[i] = static_cast<T>(std::sin(0.3 * static_cast<double>(i)));
    for (Eigen::Index i = 0; i < embed.size(); ++i) embed.data()[i] = static_cast<T>(std::cos(0.2 * static_cast<double>(i)));
    for (Eigen::Index i = 0; i < gate.size(); ++i) gate.data()[i] = static_cast<T>(std::sin(0.9 * static_cast<double>(i)));
    opt.add("qkv", qkv, gqkv);
    opt.add("embed", embed, gembed, {.role = muon::Role::embedding});
    opt.add("gate", gate, ggate, {.role = muon::Role::router_gate});
    opt.add("norm", norm, gnorm, {.role = muon::Role::norm});
  }
  void train(int from, int to) {
    for (int t = from; t < to; ++t) {
      auto f = [t](Eigen::Index i) { return static_cast<T>(std::sin(1.3 * t + 0.17 * static_cast<double>(i))); };
      for (Eigen::Index i = 0; i < gqkv.size(); ++i) gqkv.data()[i] = f(i);
      for (Eigen::Index i = 0; i < gembed.size(); ++i) gembed.data()[i] = f(i + 5);
      for (Eigen::Index i = 0; i < ggate.size(); ++i) ggate.data()[i] = f(i + 9);
      for (Eigen::Index i = 0; i < gnorm.size(); ++i) gnorm.data()[i] = f(i + 2);
      REQUIRE(opt.step().all_applied());
    }
  }
  // Everything load() may change, as one comparable value.
  [[nodiscard]] std::vector<double> frozen() {
    std::vector<double> v{static_cast<double>(opt.steps_taken())};
    for (const auto* m : {&qkv, &embed, &gate}) v.insert(v.end(), m->data(), m->data() + m->size());
    v.insert(v.end(), norm.data(), norm.data() + norm.size());
    auto add = [&v](auto& g) {
      for (const auto& [key, values] : g.state_snapshot()) v.insert(v.end(), values.begin(), values.end());
      v.push_back(g.steps_taken());
      v.push_back(g.lr());
      v.push_back(g.fallback_lr());
    };
    add(opt.stiefel());
    add(opt.embeddings());
    add(opt.router_gates());
    add(opt.norms());
    return v;
  }
};

}  // namespace

TEST_CASE("checkpoint fuzz: ManifoldModel containers are all or nothing across groups", "[checkpoint][fuzz][manifold_model]") {
  Model4 source;
  source.train(0, 3);
  std::ostringstream os;
  source.opt.save(os, {.parameters = true});
  const std::string good = os.str();
  Model4 target;
  target.train(0, 1);
  const auto before = target.frozen();

  auto rejected = [&](const std::string& bytes) {
    std::istringstream is(bytes);
    try {
      target.opt.load(is);
    } catch (const muon::Error&) {
      return target.frozen() == before;
    }
    return false;
  };
  SECTION("every truncation") {
    for (std::size_t cut = 0; cut < good.size(); cut += 3) CHECK(rejected(good.substr(0, cut)));
  }
  SECTION("every single-bit flip of a group's bytes, container checksum recomputed") {
    // A group's own checksum must stop it, and no group before it may have been loaded.
    std::size_t pos = 8 + 4 + 8 + 4, flips = 0;
    for (int group = 0; group < 4; ++group) {
      std::uint32_t len = 0;
      std::memcpy(&len, good.data() + pos, 4);
      pos += 4 + len;
      std::uint64_t size = 0;
      std::memcpy(&size, good.data() + pos, 8);
      pos += 8;
      for (std::size_t i = pos; i < pos + size; i += 5, ++flips) {
        std::string bad = good;
        bad[i] = static_cast<char>(bad[i] ^ (1 << (i % 8)));
        put_checksum(bad);
        CHECK(rejected(bad));
      }
      pos += size;
    }
    CHECK(flips > 200);
  }
  SECTION("the last group's fallback lr set to +Inf, both checksums recomputed") {
    std::string bad = good;
    std::size_t pos = 8 + 4 + 8 + 4;
    std::size_t last_at = 0, last_size = 0;
    for (int group = 0; group < 4; ++group) {
      std::uint32_t len = 0;
      std::memcpy(&len, bad.data() + pos, 4);
      const std::string name = bad.substr(pos + 4, len);
      pos += 4 + len;
      std::uint64_t size = 0;
      std::memcpy(&size, bad.data() + pos, 8);
      pos += 8;
      if (name == "norms") last_at = pos, last_size = size;
      pos += size;
    }
    REQUIRE(last_size > 0);
    std::string blob = bad.substr(last_at, last_size);
    const double inf = std::numeric_limits<double>::infinity();
    std::memcpy(blob.data() + 8 + 4 + 4 + 8 + 8 + 8 + 1 + 8 + 4, &inf, sizeof(double));  // fallback_lr
    put_checksum(blob);
    bad.replace(last_at, last_size, blob);
    put_checksum(bad);
    std::istringstream is(bad);
    CHECK_THROWS_WITH(target.opt.load(is), Catch::Contains("group 'norms'"));
    CHECK(target.frozen() == before);
  }
  SECTION("the good file loads") {
    std::istringstream is(good);
    target.opt.load(is);
    CHECK(target.opt.steps_taken() == 3);
  }
}
