// An orthogonalizer given where a Fallback belongs fails with a message naming the concept.
#include <muon/muon.hpp>

using Broken = muon::Optimizer<muon::backend::Eigen<float>, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                               muon::policy::NewtonSchulz, muon::policy::NoConstraint, muon::policy::NewtonSchulz>;
Broken* make() { return new Broken(); }
