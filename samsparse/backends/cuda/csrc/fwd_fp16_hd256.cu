// Forward kernels for fp16, head dim 256 (one translation unit per dtype x head dim: parallel builds).
#include "fwd_sm90.cuh"

namespace samsparse {
const char* run_fwd_fp16_hd256(FwdParams& p, void* stream) { return fwd::run_fwd_hd<__half, 256>(p, stream); }
}  // namespace samsparse
