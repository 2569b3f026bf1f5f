// Smoke test: the umbrella header compiles and the version matches CMake's.
#include <muon/muon.hpp>

#include <catch2/catch.hpp>

#include <string>
#include <string_view>

TEST_CASE("version_string matches the CMake project version", "[smoke]") {
  CHECK(std::string_view(muon::version_string) == MUON_TEST_EXPECTED_VERSION);
}

TEST_CASE("version_string matches the numeric version parts", "[smoke]") {
  const std::string composed = std::to_string(muon::version_major) + "." +
                               std::to_string(muon::version_minor) + "." +
                               std::to_string(muon::version_patch);
  CHECK(composed == muon::version_string);
}
