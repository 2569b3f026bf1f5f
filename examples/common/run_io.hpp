#pragma once
// What users expect of a training program, shared by the examples (header-only, POSIX):
//   Progress   a bar redrawn in place on a terminal; plain lines every ~5 % when piped or logged
//   Csv        every curve as CSV, header at open, flushed every row (a killed run keeps its curve)
//   plot_png   PNG plots through gnuplot (Debian gnuplot-nox) or matplotlib (python3-matplotlib),
//              or a message naming the package to install
//   require_file  a missing data set named with the package that provides it
//   Args       --name value / --name=value / --flag; mistakes are errors that list the options
// The environment variable MUON_PLOTTER=gnuplot|matplotlib|none forces one plotter (or none).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace muon_examples {

inline bool stdout_is_terminal() { return ::isatty(::fileno(stdout)) != 0; }

namespace detail {

inline std::string format_seconds(double s) {
  char buf[32];
  if (!(s >= 0) || !std::isfinite(s)) return "?";
  const long t = std::lround(s);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

// Runs a program with arguments (no shell, so paths need no quoting); returns its exit status,
// or -1 when it could not be started.
inline int run_program(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The full path of an executable found on PATH, or "" when there is none.
inline std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    // (std::filesystem::path, not string assignment or concatenation: GCC 12 at -O3 warns
    // falsely, -Wrestrict, on those.)
    const std::filesystem::path where = dir.empty() ? std::filesystem::path(".") : std::filesystem::path(dir);
    const std::string candidate = (where / name).string();
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

// gnuplot single-quoted string: a quote inside is written twice.
inline std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += '\'';
    out += c;
  }
  out += '\'';
  return out;
}

// The 1-based index of `column` in the CSV file's header, or 0 (with a message) when absent.
inline int csv_column(const std::string& csv_path, const std::string& column) {
  std::ifstream in(csv_path);
  std::string header;
  if (!in || !std::getline(in, header)) {
    std::fprintf(stderr, "plot: cannot read %s\n", csv_path.c_str());
    return 0;
  }
  std::stringstream cells(header);
  std::string cell;
  for (int i = 1; std::getline(cells, cell, ','); ++i)
    if (cell == column) return i;
  std::fprintf(stderr, "plot: %s has no column '%s' (header: %s)\n", csv_path.c_str(), column.c_str(), header.c_str());
  return 0;
}

}  // namespace detail

// A progress bar. On a terminal one line is redrawn in place (at most 10 times a second, so
// calling update() every step costs nothing); otherwise a plain line is printed every ~5 % of
// `total` and at the end, which keeps logs short and readable.
class Progress {
 public:
  Progress(std::string label, long total)
      : label_(std::move(label)), total_(std::max(total, 1L)), tty_(stdout_is_terminal()), start_(Clock::now()) {}

  void update(long done, const std::string& status) {
    done_ = done;
    const auto now = Clock::now();
    if (tty_) {
      if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      draw(done, status, false);
    } else {
      const long bucket = std::clamp(done, 0L, total_) * 20 / total_;  // 5 % steps
      if (bucket <= last_bucket_ || done >= total_) return;            // the end is finish()'s line
      last_bucket_ = bucket;
      std::printf("%s\n", line(done, status).c_str());
      std::fflush(stdout);
    }
  }

  // The last line shows the count of the last update() (a run may stop early).
  void finish(const std::string& status) {
    if (finished_) return;
    finished_ = true;
    if (tty_) {
      draw(done_, status, true);
    } else {
      std::printf("%s\n", line(done_, status).c_str());
      std::fflush(stdout);
    }
  }

 private:
  using Clock = std::chrono::steady_clock;

  [[nodiscard]] double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

  [[nodiscard]] std::string line(long done, const std::string& status) const {
    const double e = elapsed();
    const double pct = 100.0 * static_cast<double>(done) / static_cast<double>(total_);
    std::string s = label_;
    char buf[96];
    std::snprintf(buf, sizeof buf, " %ld/%ld (%3.0f%%) %s", done, total_, pct, detail::format_seconds(e).c_str());
    s += buf;
    if (done > 0 && done < total_) {
      s += " eta ";
      s += detail::format_seconds(e * static_cast<double>(total_ - done) / static_cast<double>(done));
    }
    if (!status.empty()) {
      s += "  ";
      s += status;
    }
    return s;
  }

  void draw(long done, const std::string& status, bool end) {
    constexpr int width = 24;
    const long d = std::clamp(done, 0L, total_);
    const int filled = static_cast<int>(d * width / total_);
    std::string bar = "[";
    bar.append(static_cast<std::size_t>(filled), '#');
    bar.append(static_cast<std::size_t>(width - filled), '.');
    bar += "] ";
    std::string text = line(d, status);
    text.insert(label_.size() + 1, bar);
    // Pad over the previous, possibly longer, line instead of relying on terminal escapes.
    const std::size_t n = text.size();
    if (n < last_width_) text.append(last_width_ - n, ' ');
    last_width_ = n;
    std::printf("\r%s%s", text.c_str(), end ? "\n" : "");
    std::fflush(stdout);
  }

  std::string label_;
  long total_;
  bool tty_;
  Clock::time_point start_;
  Clock::time_point last_draw_{};
  long last_bucket_ = 0;
  long done_ = 0;
  std::size_t last_width_ = 0;
  bool finished_ = false;
};

// A CSV file of one curve or table. Missing parent directories are created.
class Csv {
 public:
  Csv(const std::string& path, std::vector<std::string> columns) : path_(path), columns_(std::move(columns)) {
    if (columns_.empty()) throw std::invalid_argument("Csv " + path + ": no columns");
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    out_.open(path, std::ios::out | std::ios::trunc);
    if (!out_) {
      std::string msg = "cannot open ";
      msg += path;
      msg += " for writing";
      if (ec) {
        msg += " (creating its directory: ";
        msg += ec.message();
        msg += ')';
      }
      throw std::runtime_error(msg);
    }
    for (std::size_t i = 0; i < columns_.size(); ++i) out_ << (i ? "," : "") << columns_[i];
    out_ << '\n';
    out_.flush();
  }

  void row(const std::vector<double>& values) {
    if (values.size() != columns_.size()) {
      std::string msg = "Csv ";
      msg += path_;
      msg += ": a row of ";
      msg += std::to_string(values.size());
      msg += " values for ";
      msg += std::to_string(columns_.size());
      msg += " columns";
      throw std::invalid_argument(msg);
    }
    char buf[32];
    for (std::size_t i = 0; i < values.size(); ++i) {
      std::snprintf(buf, sizeof buf, "%.9g", values[i]);  // round-trips a float; enough for curves
      out_ << (i ? "," : "") << buf;
    }
    out_ << '\n';
    out_.flush();
    if (!out_) throw std::runtime_error("Csv " + path_ + ": write failed");
  }

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::string> columns_;
  std::ofstream out_;
};

struct Series {
  std::string csv_path, x_column, y_column, title;
};
struct Plot {
  std::string png_path, title, xlabel, ylabel;
  bool log_y = false;
  std::vector<Series> series;
  bool log_x = false;  // added after the first API: kept last so that existing initialisers still compile
};

namespace detail {

inline bool plot_gnuplot(const Plot& plot, const std::string& gnuplot) {
  std::string script = "set terminal pngcairo size 900,560 noenhanced\n";
  script += "set output " + gnuplot_quote(plot.png_path) + "\n";
  // The legend goes below the plot: with several curves it would hide some of them inside.
  script += "set datafile separator ','\nset grid\nset key below\n";
  script += "set title " + gnuplot_quote(plot.title) + "\n";
  script += "set xlabel " + gnuplot_quote(plot.xlabel) + "\n";
  script += "set ylabel " + gnuplot_quote(plot.ylabel) + "\n";
  // %g ticks: gnuplot's default prints 1e-8 on a log axis as 0.00000001.
  script += "set format x '%g'\nset format y '%g'\n";
  if (plot.log_y) script += "set logscale y\n";
  if (plot.log_x) script += "set logscale x\n";
  script += "plot ";
  for (std::size_t i = 0; i < plot.series.size(); ++i) {
    const Series& s = plot.series[i];
    const int x = csv_column(s.csv_path, s.x_column), y = csv_column(s.csv_path, s.y_column);
    if (x == 0 || y == 0) return false;
    if (i) script += ", \\\n     ";
    // `every ::1` skips the header row.
    script += gnuplot_quote(s.csv_path) + " every ::1 using " + std::to_string(x) + ":" + std::to_string(y) +
              " with lines lw 2 title " + gnuplot_quote(s.title);
  }
  script += "\n";
  const std::string script_path = plot.png_path + ".gp";
  {
    std::ofstream out(script_path);
    out << script;
    if (!out) {
      std::fprintf(stderr, "plot: cannot write %s\n", script_path.c_str());
      return false;
    }
  }
  const int rc = run_program({gnuplot, script_path});
  std::remove(script_path.c_str());
  return rc == 0;
}

// Returns 1 on success, 0 on failure, 3 when matplotlib is not installed.
inline int plot_matplotlib(const Plot& plot) {
  static const char* const script = R"PY(import csv, sys
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit(3)
png, title, xlabel, ylabel, log_y, log_x = sys.argv[1:7]
fig, ax = plt.subplots(figsize=(9, 5.6), dpi=100)
rest = sys.argv[7:]
for i in range(0, len(rest), 4):
    path, xc, yc, label = rest[i:i + 4]
    xs, ys = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            xs.append(float(row[xc]))
            ys.append(float(row[yc]))
    ax.plot(xs, ys, lw=2, label=label)
if log_y == "1":
    ax.set_yscale("log")
if log_x == "1":
    ax.set_xscale("log")
ax.set_title(title)
ax.set_xlabel(xlabel)
ax.set_ylabel(ylabel)
ax.grid(True, alpha=0.4)
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
fig.savefig(png, bbox_inches="tight")
)PY";
  for (const Series& s : plot.series)
    if (csv_column(s.csv_path, s.x_column) == 0 || csv_column(s.csv_path, s.y_column) == 0) return 0;
  const std::string script_path = plot.png_path + ".py";
  {
    std::ofstream out(script_path);
    out << script;
    if (!out) return 0;
  }
  std::vector<std::string> argv{"/usr/bin/python3", script_path, plot.png_path, plot.title, plot.xlabel, plot.ylabel,
                                plot.log_y ? "1" : "0", plot.log_x ? "1" : "0"};
  for (const Series& s : plot.series) argv.insert(argv.end(), {s.csv_path, s.x_column, s.y_column, s.title});
  const int rc = run_program(argv);
  std::remove(script_path.c_str());
  return rc == 0 ? 1 : (rc == 3 ? 3 : 0);
}

}  // namespace detail

// Draws with gnuplot (Debian gnuplot-nox) when present, else /usr/bin/python3 with matplotlib
// (python3-matplotlib), else prints which package to install; returns whether the PNG was written.
inline bool plot_png(const Plot& plot) {
  if (plot.series.empty()) {
    std::fprintf(stderr, "plot %s: no series\n", plot.png_path.c_str());
    return false;
  }
  const char* forced = std::getenv("MUON_PLOTTER");
  const std::string want = forced != nullptr ? forced : "";
  if (want == "none") return false;
  for (const Series& s : plot.series)
    if (detail::csv_column(s.csv_path, s.x_column) == 0 || detail::csv_column(s.csv_path, s.y_column) == 0) return false;
  {
    const std::filesystem::path parent = std::filesystem::path(plot.png_path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  }
  bool tried = false;
  if (want.empty() || want == "gnuplot") {
    const std::string gnuplot = detail::find_on_path("gnuplot");
    if (!gnuplot.empty()) {
      tried = true;
      if (detail::plot_gnuplot(plot, gnuplot)) return true;
      std::fprintf(stderr, "plot: gnuplot failed on %s\n", plot.png_path.c_str());
    }
  }
  if ((want.empty() || want == "matplotlib") && ::access("/usr/bin/python3", X_OK) == 0) {
    const int rc = detail::plot_matplotlib(plot);
    if (rc == 1) return true;
    if (rc == 0) {
      tried = true;
      std::fprintf(stderr, "plot: matplotlib failed on %s\n", plot.png_path.c_str());
    }
  }
  if (!tried)
    std::fprintf(stderr,
                 "plot: %s not drawn: no plotting tool found; install one with: apt-get install gnuplot-nox "
                 "(or python3-matplotlib). The CSV files hold the curves.\n",
                 plot.png_path.c_str());
  return false;
}

// When `path` is missing: prints "<what> not found at <path>; install it with: apt-get install
// <package>" to stderr and returns false.
inline bool require_file(const std::string& path, const std::string& what, const std::string& package) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) return true;
  std::fprintf(stderr, "%s not found at %s; install it with: apt-get install %s\n", what.c_str(), path.c_str(),
               package.c_str());
  return false;
}

// Command-line options: --name value, --name=value, --flag. Every option is read by name with
// its default; done() then refuses anything left over. A mistake (unknown option, bad number,
// missing value, a flag given a value) is reported by done(): it prints the error and the usage
// with every option read, and exits with status 2; with throw_errors it throws std::invalid_argument instead (tests).
class Args {
 public:
  Args(int argc, char** argv, std::string usage, bool throw_errors = false)
      : usage_(std::move(usage)), throw_(throw_errors) {
    program_ = argc > 0 ? argv[0] : "program";
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "-h" || a == "--help") {
        help_ = true;
        continue;
      }
      if (a.size() < 3 || a.compare(0, 2, "--") != 0) {
        error("unexpected argument '" + a + "'");
        continue;
      }
      Given g;
      std::string name = a;
      if (const auto eq = a.find('='); eq != std::string::npos) {
        name = a.substr(0, eq);
        g.value = a.substr(eq + 1);
        g.has_value = true;
      } else if (i + 1 < argc && !starts_option(argv[i + 1])) {
        g.value = argv[++i];
        g.has_value = true;
      }
      if (given_.count(name) != 0) error(name + " given twice");
      given_[name] = g;
    }
  }

  bool flag(const std::string& name) {
    known(name, "");
    const auto it = given_.find(name);
    if (it == given_.end()) return false;
    it->second.used = true;
    if (it->second.has_value) error(name + " takes no value (got '" + it->second.value + "')");
    return true;
  }

  long integer(const std::string& name, long fallback) {
    known(name, "N (default " + std::to_string(fallback) + ")");
    const std::string* v = value(name);
    if (v == nullptr) return fallback;
    long out = 0;
    const auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
    if (ec != std::errc() || end != v->data() + v->size()) {
      error(name + " expects an integer, got '" + *v + "'");
      return fallback;
    }
    return out;
  }

  double real(const std::string& name, double fallback) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "X (default %g)", fallback);
    known(name, buf);
    const std::string* v = value(name);
    if (v == nullptr) return fallback;
    double out = 0;
    const auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
    if (ec != std::errc() || end != v->data() + v->size() || !std::isfinite(out)) {
      error(name + " expects a finite number, got '" + *v + "'");
      return fallback;
    }
    return out;
  }

  std::string text(const std::string& name, const std::string& fallback) {
    known(name, "TEXT (default '" + fallback + "')");
    const std::string* v = value(name);
    return v == nullptr ? fallback : *v;
  }

  // Call after reading every option: prints the usage and exits 0 on --help, refuses leftovers.
  void done() {
    if (help_) {
      if (throw_) throw std::invalid_argument("help\n" + help_text());
      std::printf("%s", help_text().c_str());
      std::exit(0);
    }
    for (const auto& [name, g] : given_)
      if (!g.used) error("unknown option " + name);
    if (!errors_.empty()) fail(errors_);
  }

  // The usage and the options read so far, one a line.
  [[nodiscard]] std::string help_text() const {
    std::string s = "usage: " + program_ + " [options]\n" + usage_;
    if (!usage_.empty() && usage_.back() != '\n') s += '\n';
    s += "options:\n";
    for (const auto& [name, what] : known_) s += "  " + name + (what.empty() ? "" : " " + what) + "\n";
    s += "  --help\n";
    return s;
  }

 private:
  struct Given {
    std::string value;
    bool has_value = false;
    bool used = false;
  };

  static bool starts_option(const char* s) {
    // "-1" and "-.5" are values, "--x" and "-h" are not.
    return s[0] == '-' && !(std::isdigit(static_cast<unsigned char>(s[1])) || s[1] == '.');
  }

  void known(const std::string& name, const std::string& what) {
    for (const auto& k : known_)
      if (k.first == name) return;
    known_.emplace_back(name, what);
  }

  const std::string* value(const std::string& name) {
    const auto it = given_.find(name);
    if (it == given_.end()) return nullptr;
    it->second.used = true;
    if (!it->second.has_value) {
      error(name + " needs a value");
      return nullptr;
    }
    return &it->second.value;
  }

  // Mistakes are reported together by done(), once every option is known for the usage text.
  void error(const std::string& msg) {
    if (!errors_.empty()) errors_ += "; ";
    errors_ += msg;
  }

  [[noreturn]] void fail(const std::string& msg) {
    if (throw_) throw std::invalid_argument(msg + "\n" + help_text());
    std::fprintf(stderr, "%s: %s\n%s", program_.c_str(), msg.c_str(), help_text().c_str());
    std::exit(2);
  }

  std::string usage_, program_;
  bool throw_;
  bool help_ = false;
  std::string errors_;
  std::map<std::string, Given> given_;
  std::vector<std::pair<std::string, std::string>> known_;
};

}  // namespace muon_examples
