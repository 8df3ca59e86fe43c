// Forward kernels for bf16, head dim 256 (one translation unit per dtype x head dim: parallel builds).
#include "fwd_sm90.cuh"

namespace samsparse {
const char* run_fwd_bf16_hd256(FwdParams& p, void* stream) { return fwd::run_fwd_hd<__nv_bfloat16, 256>(p, stream); }
}  // namespace samsparse
