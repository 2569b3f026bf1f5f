#pragma once
// Umbrella header: the only include a user needs.
#include "muon/version.hpp"
