#pragma once
// Library version, kept in step with project(VERSION) in CMakeLists.txt.

namespace muon {

inline constexpr int version_major = 0;
inline constexpr int version_minor = 1;
inline constexpr int version_patch = 0;
inline constexpr const char* version_string = "0.1.0";

}  // namespace muon
