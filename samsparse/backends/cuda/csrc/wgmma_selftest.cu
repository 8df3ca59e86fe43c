// One-tile check of the Hopper kernel's building blocks (csrc/fwd_sm90.cuh), for diagnosis on a GPU:
// Q, K, V [64, D] are placed by the kernel's own Operands (64-row tiles, K and V in stage 1), S = Q K^T
// runs through the same descriptors and wgmma wrappers as the kernel, and so does O = bf16/fp16(S) V
// (no softmax). A wrong S points at the K-major layouts; a right S with a wrong O at the MN-major V
// layout or the register A operand; a wrong result at d = 80 only, at the second panel.
#include "fwd_sm90.cuh"

namespace samsparse {
namespace fwd {
namespace sm90 {

template <typename T, int D>
__global__ void __launch_bounds__(128, 1) wgmma_selftest_kernel(const T* q, const T* k, const T* v, float* s_out,
                                                                float* o_out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Op = Operands<D, 64>;
  constexpr int kStage = 1;
  constexpr bool kP1 = D > 64;
  constexpr int kChunks = D / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw_u32 = smem_u32(smem_raw);
  const uint32_t base = (raw_u32 + 1023u) & ~1023u;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  for (int c = tid; c < 64 * kChunks; c += 128) {
    const int row = c / kChunks, ch = c - row * kChunks;
    cp_async16(Op::q_chunk(base, row, ch), q + row * D + ch * 8, true);
    cp_async16(Op::kv_chunk(base, kStage, false, row, ch), k + row * D + ch * 8, true);
    cp_async16(Op::kv_chunk(base, kStage, true, row, ch), v + row * D + ch * 8, true);
  }
  cp_async_commit();
  cp_async_wait<0>();
  fence_async_smem();
  __syncthreads();

  float s[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.f;
  fence_regs(s);
  wg_fence();
#pragma unroll
  for (int ks = 0; ks < (kP1 ? 5 : 4); ++ks) Wg<T>::ss_n64(s, Op::q_desc(base, 0, ks), Op::k_desc(base, kStage, ks), ks > 0);
  wg_commit();
  wg_wait<0>();
  fence_regs(s);
  const int row0 = warp * 16 + g;
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int nt = i >> 2, e = i & 3;
    s_out[(row0 + 8 * (e >> 1)) * 64 + nt * 8 + 2 * tq + (e & 1)] = s[i];
  }

  uint32_t a[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    a[kk][0] = Num<T>::pack(s[(2 * kk) * 4 + 0], s[(2 * kk) * 4 + 1]);
    a[kk][1] = Num<T>::pack(s[(2 * kk) * 4 + 2], s[(2 * kk) * 4 + 3]);
    a[kk][2] = Num<T>::pack(s[(2 * kk + 1) * 4 + 0], s[(2 * kk + 1) * 4 + 1]);
    a[kk][3] = Num<T>::pack(s[(2 * kk + 1) * 4 + 2], s[(2 * kk + 1) * 4 + 3]);
  }
  float o0[32], o1[8];
#pragma unroll
  for (int i = 0; i < 32; ++i) o0[i] = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) o1[i] = 0.f;
  fence_regs(o0);
  fence_regs(o1);
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    Wg<T>::rs_n64(o0, a[kk], Op::v_desc(base, kStage, 0, kk));
    if constexpr (kP1) Wg<T>::rs_n16(o1, a[kk], Op::v_desc(base, kStage, 1, kk));
  }
  wg_commit();
  wg_wait<0>();
  fence_regs(o0);
  fence_regs(o1);
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    const int nt = i >> 2, e = i & 3;
    o_out[(row0 + 8 * (e >> 1)) * D + nt * 8 + 2 * tq + (e & 1)] = o0[i];
  }
  if constexpr (kP1) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int nt = i >> 2, e = i & 3;
      o_out[(row0 + 8 * (e >> 1)) * D + 64 + nt * 8 + 2 * tq + (e & 1)] = o1[i];
    }
  }
#else
  __trap();
#endif
}

template <typename T, int D>
const char* launch_selftest(const void* q, const void* k, const void* v, float* s, float* o, cudaStream_t stream) {
  constexpr int smem = Smem<D, 64>::kBytes;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(wgmma_selftest_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  wgmma_selftest_kernel<T, D><<<1, 128, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), s, o);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace sm90
}  // namespace fwd

const char* wgmma_selftest(const void* q, const void* k, const void* v, float* s, float* o, int head_dim, bool bf16,
                           void* stream) {
  if (!fwd::sm90::device_is_sm90()) return "the wgmma self-test needs a compute capability 9.0 device";
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  using fwd::sm90::launch_selftest;
  if (head_dim == 64) return bf16 ? launch_selftest<__nv_bfloat16, 64>(q, k, v, s, o, st) : launch_selftest<__half, 64>(q, k, v, s, o, st);
  if (head_dim == 80) return bf16 ? launch_selftest<__nv_bfloat16, 80>(q, k, v, s, o, st) : launch_selftest<__half, 80>(q, k, v, s, o, st);
  return "the wgmma self-test serves head dims 64 and 80";
}

}  // namespace samsparse
