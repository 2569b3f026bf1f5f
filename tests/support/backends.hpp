#pragma once
// The backends every backend-generic test runs on, as one list for TEMPLATE_TEST_CASE: adding a
// backend to the suite is one line here. Tests written over it take the backend as TestType and
// its scalar as typename TestType::value_type, and register raw buffers (muon::raw), which every
// backend accepts.
#include <muon/backend/eigen.hpp>

#if defined(MUON_WITH_XTENSOR)
#include <muon/backend/xtensor.hpp>
#define MUON_TEST_BACKENDS                                                                    \
  muon::backend::Eigen<float>, muon::backend::Eigen<double>, muon::backend::Xtensor<float>, \
      muon::backend::Xtensor<double>
#else
#define MUON_TEST_BACKENDS muon::backend::Eigen<float>, muon::backend::Eigen<double>
#endif
