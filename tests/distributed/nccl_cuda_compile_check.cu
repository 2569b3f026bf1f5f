// Compile-only check (nvcc): Sharded over the CUDA backend and the NCCL communicator, the
// combination a GPU trainer uses. Nothing runs (no GPU is needed to build it).
#include <muon/backend/cuda/cuda.cuh>
#include <muon/distributed/nccl.hpp>
#include <muon/distributed/sharded.hpp>
#include <muon/optimizers/muon.hpp>

template class muon::distributed::Sharded<muon::Muon<muon::backend::Cuda<float>>, muon::distributed::NcclCommunicator>;
template class muon::distributed::Sharded<muon::MuonClip<muon::backend::Cuda<float>>, muon::distributed::NcclCommunicator>;
