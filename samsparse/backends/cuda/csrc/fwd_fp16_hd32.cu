// Forward kernels for fp16, head dim 32 (one translation unit per dtype x head dim: parallel builds).
#include "fwd_sm90.cuh"

namespace samsparse {
const char* run_fwd_fp16_hd32(FwdParams& p, void* stream) { return fwd::run_fwd_hd<__half, 32>(p, stream); }
}  // namespace samsparse
