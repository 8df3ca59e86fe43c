// Forward kernels for fp16, head dim 128 (one translation unit per dtype x head dim: parallel builds).
#include "fwd_sm90.cuh"

namespace samsparse {
const char* run_fwd_fp16_hd128(FwdParams& p, void* stream) { return fwd::run_fwd_hd<__half, 128>(p, stream); }
}  // namespace samsparse
