// Compile-only check of the NCCL communicator (no GPU is needed to build it; nothing runs):
// NcclCommunicator satisfies Communicator, and Sharded instantiates over it for float and
// double compositions. The host-side Eigen backend stands in for the device backend here (the
// pointers would be device pointers with muon::backend::Cuda, which needs nvcc).
#include <muon/distributed/nccl.hpp>
#include <muon/distributed/sharded.hpp>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#ifndef MUON_WITH_NCCL
#error "nccl_compile_check.cpp is built with muon::nccl"
#endif

static_assert(muon::distributed::Communicator<muon::distributed::NcclCommunicator>);
template class muon::distributed::Sharded<muon::Muon<muon::backend::Eigen<float>>, muon::distributed::NcclCommunicator>;
template class muon::distributed::Sharded<muon::MuonClip<muon::backend::Eigen<double>>, muon::distributed::NcclCommunicator>;
