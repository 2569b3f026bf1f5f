// A fallback given where an Orthogonalizer belongs fails with a message naming the concept.
#include <muon/muon.hpp>

using Broken = muon::Optimizer<muon::backend::Eigen<float>, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                               muon::policy::AdamW, muon::policy::NoConstraint, muon::policy::AdamW>;
Broken* make() { return new Broken(); }
