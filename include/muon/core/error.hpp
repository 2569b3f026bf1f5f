#pragma once
// The one exception type the library throws. Messages name the parameter (or the option) at
// fault; every check runs before any state changes, so a caught Error leaves the optimizer as
// it was.
#include <stdexcept>
#include <string>

namespace muon {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

[[noreturn]] inline void fail(const std::string& message) { throw Error("muon: " + message); }

[[noreturn]] inline void fail_param(const std::string& param, const std::string& message) {
  throw Error("muon: parameter '" + param + "': " + message);
}

}  // namespace detail
}  // namespace muon
