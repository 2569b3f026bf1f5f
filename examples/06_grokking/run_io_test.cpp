// Checks of examples/common/run_io.hpp (no test framework: the examples need only Eigen).
// Exits 1 and names every failed check.
#include "../common/run_io.hpp"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Parses argv with errors thrown; returns the error message ("" when none).
template <class Read>
std::string args_error(std::vector<std::string> words, Read read) {
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  try {
    muon_examples::Args a(static_cast<int>(argv.size()), argv.data(), "test usage\n", true);
    read(a);
    a.done();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return {};
}

void test_args() {
  long steps = 0;
  double lr = 0, shift = 0;
  bool quick = false;
  std::string name;
  auto read_all = [&](muon_examples::Args& a) {
    quick = a.flag("--quick");
    steps = a.integer("--steps", 7);
    lr = a.real("--lr", 0.1);
    shift = a.real("--shift", 0);
    name = a.text("--name", "none");
  };
  check(args_error({"prog", "--steps", "5", "--lr=2.5e-3", "--quick", "--name", "x", "--shift", "-3"}, read_all).empty(),
        "good arguments parse");
  check(steps == 5 && lr == 2.5e-3 && quick && name == "x" && shift == -3, "parsed values");
  check(args_error({"prog"}, read_all).empty() && steps == 7 && lr == 0.1 && !quick && name == "none", "defaults");

  const std::string unknown = args_error({"prog", "--stpes", "5"}, read_all);
  check(contains(unknown, "unknown option --stpes"), "unknown option named: " + unknown);
  check(contains(unknown, "--steps N (default 7)") && contains(unknown, "--lr X") && contains(unknown, "--quick"),
        "the error lists the known options: " + unknown);
  check(contains(args_error({"prog", "--steps", "5x"}, read_all), "--steps expects an integer, got '5x'"), "bad integer");
  check(contains(args_error({"prog", "--lr", "fast"}, read_all), "--lr expects a finite number"), "bad real");
  check(contains(args_error({"prog", "--lr", "inf"}, read_all), "--lr expects a finite number"), "infinite real");
  check(contains(args_error({"prog", "--quick", "1"}, read_all), "--quick takes no value"), "flag given a value");
  check(contains(args_error({"prog", "--steps"}, read_all), "--steps needs a value"), "missing value");
  check(contains(args_error({"prog", "stray"}, read_all), "unexpected argument 'stray'"), "stray word");
  check(contains(args_error({"prog", "--steps", "1", "--steps", "2"}, read_all), "--steps given twice"), "repeated option");
  check(contains(args_error({"prog", "--help"}, read_all), "help"), "--help stops");
}

void test_csv() {
  const std::string path = "run_io_test_out/curve.csv";  // the directory is created
  {
    muon_examples::Csv csv(path, {"step", "loss"});
    csv.row({1, 0.5});
    csv.row({2, 0.25});
    bool threw = false;
    try {
      csv.row({3});
    } catch (const std::invalid_argument& e) {
      threw = contains(e.what(), path) && contains(e.what(), "1 values for 2 columns");
    }
    check(threw, "a row of the wrong size is refused, naming the file");
    // Flushed every row: readable while the Csv is still open.
    check(slurp(path) == "step,loss\n1,0.5\n2,0.25\n", "CSV content while open: " + slurp(path));
  }
  bool threw = false;
  try {
    muon_examples::Csv bad(path + "/inside_a_file.csv", {"a"});
  } catch (const std::runtime_error& e) {
    threw = contains(e.what(), path + "/inside_a_file.csv");
  }
  check(threw, "an unwritable path is a runtime_error naming it");
}

void test_require_file() {
  check(muon_examples::require_file("run_io_test_out/curve.csv", "curve", "none"), "an existing file is found");
  check(!muon_examples::require_file("run_io_test_out/missing.idx", "the data set", "dataset-x"), "a missing file is reported");
}

void test_progress_when_piped() {
  // stdout to a file: not a terminal, so a plain line every 5 % and one at the end.
  std::fflush(stdout);
  const int saved = ::dup(::fileno(stdout));
  const int file = ::open("run_io_test_out/progress.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::dup2(file, ::fileno(stdout));
  {
    muon_examples::Progress bar("job", 200);
    for (long i = 1; i <= 200; ++i) bar.update(i, "loss " + std::to_string(i));
    bar.finish("done");
  }
  std::fflush(stdout);
  ::dup2(saved, ::fileno(stdout));
  ::close(saved);
  ::close(file);
  const std::string text = slurp("run_io_test_out/progress.txt");
  long lines = 0;
  for (char c : text) lines += c == '\n';
  check(lines == 20, "20 lines (19 at 5 % steps and the end), got " + std::to_string(lines) + ":\n" + text);
  check(text.find('\r') == std::string::npos, "no carriage returns when piped");
  check(contains(text, "job 10/200 (  5%)") && contains(text, "job 200/200 (100%)") && contains(text, "done"),
        "lines carry the count, the percentage and the status:\n" + text);
}

void test_plot() {
  muon_examples::Plot plot{"run_io_test_out/curve.png", "t", "step", "loss", true, {{"run_io_test_out/curve.csv", "step", "loss", "loss"}}};
  ::setenv("MUON_PLOTTER", "none", 1);
  check(!muon_examples::plot_png(plot), "MUON_PLOTTER=none draws nothing");
  ::unsetenv("MUON_PLOTTER");
  muon_examples::Plot missing = plot;
  missing.series[0].y_column = "no_such_column";
  check(!muon_examples::plot_png(missing), "a missing column is refused");
  // With gnuplot or matplotlib installed the PNG is written; without, plot_png says which
  // package to install and returns false. Either way a true result must mean a PNG file.
  if (muon_examples::plot_png(plot)) {
    const std::string png = slurp("run_io_test_out/curve.png");
    check(png.size() > 8 && png.compare(0, 4, "\x89PNG") == 0, "plot_png returned true: a PNG file is there");
  } else {
    std::printf("note: no plotting tool here; the install message above is the expected output\n");
  }
}

}  // namespace

int main() {
  test_args();
  test_csv();
  test_require_file();
  test_progress_when_piped();
  test_plot();
  if (failures == 0) std::printf("run_io: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
