#pragma once
// The arithmetic an orthogonalizer's matrix products run in.
//
//   full  the backend's value_type throughout (float or double): the default, and what the
//         golden references are matched against.
//   bf16  bfloat16 operands with float accumulation and float results, as torch.optim.Muon runs
//         its Newton-Schulz by default (there every intermediate is also rounded to bf16; here
//         only the products' inputs are). About twice the product rate on CPUs with bf16 dot
//         products (AVX512_BF16, AMX) and on GPUs; singular values land in a slightly wider band
//         (docs/performance.md gives the measured accuracy). A backend without bf16 products,
//         or a CPU without the instructions, refuses it with muon::Error at registration.
namespace muon {

enum class Precision {
  full,
  bf16,
};

[[nodiscard]] constexpr const char* to_string(Precision p) { return p == Precision::bf16 ? "bf16" : "full"; }

}  // namespace muon
