// An Optimizer whose first argument is not a backend fails with a message naming the concept.
#include <muon/muon.hpp>

struct NotABackend {};
using Broken = muon::Optimizer<NotABackend, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                               muon::policy::NewtonSchulz, muon::policy::NoConstraint, muon::policy::AdamW>;
Broken* make() { return new Broken(); }
