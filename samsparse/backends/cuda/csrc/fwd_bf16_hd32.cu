// Forward kernels for bf16, head dim 32 (one translation unit per dtype x head dim: parallel builds).
#include "fwd_sm90.cuh"

namespace samsparse {
const char* run_fwd_bf16_hd32(FwdParams& p, void* stream) { return fwd::run_fwd_hd<__nv_bfloat16, 32>(p, stream); }
}  // namespace samsparse
