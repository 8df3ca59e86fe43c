// Head-dim / dtype dispatch of the forward kernels (no torch headers).
#include "fwd_kernel.cuh"

namespace samsparse {

#define SAMSPARSE_DECLARE(dt, d) const char* run_fwd_##dt##_hd##d(FwdParams& p, void* stream);
SAMSPARSE_DECLARE(fp16, 32)
SAMSPARSE_DECLARE(fp16, 64)
SAMSPARSE_DECLARE(fp16, 80)
SAMSPARSE_DECLARE(fp16, 128)
SAMSPARSE_DECLARE(fp16, 256)
SAMSPARSE_DECLARE(bf16, 32)
SAMSPARSE_DECLARE(bf16, 64)
SAMSPARSE_DECLARE(bf16, 80)
SAMSPARSE_DECLARE(bf16, 128)
SAMSPARSE_DECLARE(bf16, 256)
#undef SAMSPARSE_DECLARE

int kernel_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 8 != 0) return 0;
  if (head_dim <= 32) return 32;
  if (head_dim <= 64) return 64;
  if (head_dim <= 80) return 80;
  if (head_dim <= 128) return 128;
  if (head_dim <= 256) return 256;
  return 0;
}

int fwd_smem_bytes(int head_dim, int bias_mode, int rgh, int rgw) {
  switch (kernel_head_dim(head_dim)) {
    case 32: return fwd::SmemLayout<32>::bytes(bias_mode, rgh, rgw);
    case 64: return fwd::SmemLayout<64>::bytes(bias_mode, rgh, rgw);
    case 80: return fwd::SmemLayout<80>::bytes(bias_mode, rgh, rgw);
    case 128: return fwd::SmemLayout<128>::bytes(bias_mode, rgh, rgw);
    case 256: return fwd::SmemLayout<256>::bytes(bias_mode, rgh, rgw);
    default: return -1;
  }
}

const char* run_fwd(FwdParams& p, bool bf16, void* stream) {
  switch (kernel_head_dim(p.head_dim)) {
    case 32: return bf16 ? run_fwd_bf16_hd32(p, stream) : run_fwd_fp16_hd32(p, stream);
    case 64: return bf16 ? run_fwd_bf16_hd64(p, stream) : run_fwd_fp16_hd64(p, stream);
    case 80: return bf16 ? run_fwd_bf16_hd80(p, stream) : run_fwd_fp16_hd80(p, stream);
    case 128: return bf16 ? run_fwd_bf16_hd128(p, stream) : run_fwd_fp16_hd128(p, stream);
    case 256: return bf16 ? run_fwd_bf16_hd256(p, stream) : run_fwd_fp16_hd256(p, stream);
    default: return "unsupported head dim (needs a multiple of 8, at most 256)";
  }
}

}  // namespace samsparse
