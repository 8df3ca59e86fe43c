// Forward kernels for fp16, head dim 80 (one translation unit per dtype x head dim: parallel builds).
#include "fwd_sm90.cuh"

namespace samsparse {
const char* run_fwd_fp16_hd80(FwdParams& p, void* stream) { return fwd::run_fwd_hd<__half, 80>(p, stream); }
}  // namespace samsparse
