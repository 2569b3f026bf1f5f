// Compile-fail placeholder: proves that muon_add_compile_fail_test sees a failed
// compilation and matches its diagnostic. Real ones check the concept messages.
#include <muon/muon.hpp>

template <class T>
inline constexpr bool false_v = false;

template <class T>
void placeholder_concept_check() {
  static_assert(false_v<T>, "muon: placeholder concept check");
}

int main() {
  placeholder_concept_check<int>();
}
