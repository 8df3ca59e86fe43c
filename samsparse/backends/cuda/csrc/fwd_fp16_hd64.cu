// Forward kernels for fp16, head dim 64 (one translation unit per dtype x head dim: parallel builds).
#include "fwd_sm90.cuh"

namespace samsparse {
const char* run_fwd_fp16_hd64(FwdParams& p, void* stream) { return fwd::run_fwd_hd<__half, 64>(p, stream); }
}  // namespace samsparse
