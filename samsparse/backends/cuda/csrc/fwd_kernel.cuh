// Block-sparse flash attention forward with SAM's decomposed rel-pos bias fused.
//
// FlashAttention-2 structure, written with inline PTX for sm_80 / sm_90:
//   * one CTA = kBlockM query rows of one (batch, head); each warp owns 16 * MT rows
//     (MT m16 tiles, MT = 2 for D <= 128: K/V fragments read from shared memory serve
//     two m16 tiles), Q fragments stay in registers (D = 32) or are re-read from shared
//     memory with ldmatrix per k-step (D >= 64, as FlashAttention-2 does: fewer
//     registers, no spills);
//   * the key loop walks the mask's key blocks (FlexAttention index form) in key
//     tiles of kBlockN tokens; K and V tiles are gathered token by token into shared
//     memory with cp.async (16-byte chunks, zero-fill for missing tokens), double
//     buffered so that the copy of tile t+1 overlaps the math of tile t;
//   * S = Q K^T with mma.sync.m16n8k16 (fp32 accumulators), ldmatrix for K;
//   * bias + mask, online softmax in base 2 (log2(e) folded into one FFMA before
//     ex2.approx), row sums kept per thread and reduced once at the end;
//   * P stays in registers, re-packed as the A operand of P @ V (ldmatrix.trans for V);
//   * epilogue: O / l staged through shared memory, 16-byte coalesced stores to any
//     output strides; natural-log LSE (float32), -inf and 0 output for empty rows.
//
// Token <-> block maps (FwdParams::layout): 0 "sequence" (block i = tokens
// [i*b, (i+1)*b)), 1 "tiles" (row-major grid (tgh, tgw) cut into (th, tw) tiles
// numbered row-major; a token's address is computed from its tile, out-of-grid
// tokens are skipped). Dense calls are the sequence layout with one kernel tile
// per block.
//
// Bias (template kBias): SAM's bias[q, k] = rel_h[q, row(k)] + rel_w[q, col(k)].
// The CTA's rows of rel_h / rel_w are staged once in shared memory. In the "run"
// modes (kBias = W in {16, 32, 64}) each key tile is made of kBlockN / W runs of W
// consecutive key-grid columns (sequence layout with key-grid width W, or tiles of
// width W), so the row / column of every key is known from two scalars per tile and
// the per-thread loads are one rel_h value per run and one rel_w pair per 8 columns.
// Otherwise (kBias = 1, "generic") the (row, col) of each key comes from a
// per-tile table in shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "fwd_params.h"

namespace samsparse {
namespace fwd {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }
__host__ __device__ constexpr int cdiv(int x, int m) { return (x + m - 1) / m; }

// ------------------------------------------------------------------------------ configs
// kBlockM query rows per CTA, kBlockN keys per tile, kNWarps warps, Q in registers?
template <int D> struct Cfg;
template <> struct Cfg<32> { static constexpr int kBlockM = 128, kBlockN = 64, kNWarps = 4, kMinBlocks = 2; static constexpr bool kQRegs = true; };
template <> struct Cfg<64> { static constexpr int kBlockM = 128, kBlockN = 64, kNWarps = 4, kMinBlocks = 2; static constexpr bool kQRegs = false; };
template <> struct Cfg<80> { static constexpr int kBlockM = 128, kBlockN = 64, kNWarps = 4, kMinBlocks = 2; static constexpr bool kQRegs = false; };
template <> struct Cfg<128> { static constexpr int kBlockM = 128, kBlockN = 32, kNWarps = 4, kMinBlocks = 1; static constexpr bool kQRegs = false; };
template <> struct Cfg<256> { static constexpr int kBlockM = 64, kBlockN = 32, kNWarps = 4, kMinBlocks = 1; static constexpr bool kQRegs = false; };

// Row strides (elements) of the staged rel-pos terms: == 8 (mod 16) elements keeps the
// 8 rows a warp reads at once in distinct shared-memory banks.
__host__ __device__ inline int rel_stride_h(int rgh) { return round_up(rgh > 0 ? rgh : 1, 16) + 8; }
__host__ __device__ inline int rel_stride_w(int rgw, int bias) {
  return round_up(rgw > 0 ? rgw : 1, bias >= 16 ? bias : 16) + 8;
}

// Shared memory map: [K0 V0 K1 V1] [Q if not in registers] [ints] [rel_h rel_w].
// With Q in registers, Q is staged in the K1/V1 area before the loop starts. The
// output tile is staged in the K/V area after the loop.
template <int D> struct SmemLayout {
  using C = Cfg<D>;
  static constexpr int kStride = D + 8;  // +16 bytes per row: ldmatrix without bank conflicts
  static constexpr int kKVElems = 4 * C::kBlockN * kStride;
  static constexpr int kQElems = C::kQRegs ? 0 : C::kBlockM * kStride;
  static constexpr int kIntsOffset = (kKVElems + kQElems) * 2;
  static constexpr int kInts = C::kBlockM + 6 * C::kBlockN;  // q tokens, 3 x key tokens, 3 x key (row, col)
  static constexpr int kRelOffset = kIntsOffset + kInts * 4;
  static_assert(kIntsOffset % 16 == 0 && kRelOffset % 16 == 0, "shared-memory regions must stay 16-byte aligned");
  static_assert(!C::kQRegs || C::kBlockM <= 2 * C::kBlockN, "Q staging must fit in the second K/V stage");
  static_assert(C::kBlockM <= 4 * C::kBlockN, "the output tile must fit in the K/V area");
  __host__ __device__ static int bytes(int bias, int rgh, int rgw) {
    int n = kRelOffset;
    if (bias != kBiasNone) n += C::kBlockM * (rel_stride_h(rgh) + rel_stride_w(rgw, bias)) * 2;
    return n;
  }
};

// Token at position n_in of mask block `blk` (block size `bsz` tokens, `n` tokens in all) in
// the sequence (layout 0) or tiles (layout 1) map, or -1 where the block has no token there.
__device__ __forceinline__ int block_token(const FwdParams& p, int layout, int blk, int n_in, int bsz, int n) {
  if (n_in >= bsz) return -1;
  if (layout == 0) {
    const int t0 = blk * bsz + n_in;
    return t0 < n ? t0 : -1;
  }
  const int tr = blk / p.ntw, tc = blk - tr * p.ntw;
  const int r = n_in / p.tw, c = n_in - r * p.tw;
  const int row = tr * p.th + r, col = tc * p.tw + c;
  return (row < p.tgh && col < p.tgw) ? row * p.tgw + col : -1;
}

// ------------------------------------------------------------------------------ PTX helpers
__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int src_size = pred ? 16 : 0;  // 0: fill the 16 bytes with zeros, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size) : "memory");
}
// A 16-bit global load issued where it is written: a volatile asm, so neither the compiler nor ptxas sinks
// it past the barrier that follows (an __ldg there moved to just before its use, exposing its latency).
__device__ __forceinline__ uint16_t ld_global_u16_early(const uint16_t* ptr) {
  uint16_t v;
  asm volatile("ld.global.u16 %0, [%1];\n" : "=h"(v) : "l"(ptr));
  return v;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename T> struct Num;

template <> struct Num<__half> {
  static constexpr uint16_t one_bits = 0x3C00;  // 1.0
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) { return __half22float2(*reinterpret_cast<__half2*>(&x)); }
  static __device__ __forceinline__ float to_float(uint16_t x) { return __half2float(__ushort_as_half(x)); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <> struct Num<__nv_bfloat16> {
  static constexpr uint16_t one_bits = 0x3F80;  // 1.0
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ float2 unpack(uint32_t x) {
    return make_float2(__uint_as_float(x << 16), __uint_as_float(x & 0xffff0000u));
  }
  static __device__ __forceinline__ float to_float(uint16_t x) { return __uint_as_float(static_cast<uint32_t>(x) << 16); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// ------------------------------------------------------------------------------ shared kernel pieces
// Where a CTA works: (batch, head, kv head), its sequence's token counts and starts (varlen), and
// its query tile (mask query block qb, part qs of it).
struct Site {
  int b, h, hk, nq, nk, qb, qs;
  int64_t q_start, k_start;
};

__device__ __forceinline__ Site locate(const FwdParams& p) {
  Site s;
  const int nqt = p.num_q_tiles;
  const int qt = static_cast<int>(blockIdx.x % static_cast<unsigned>(nqt));
  const int bh = static_cast<int>(blockIdx.x / static_cast<unsigned>(nqt));
  s.b = bh / p.heads;
  s.h = bh - s.b * p.heads;
  s.hk = s.h / p.kv_group;
  s.nq = p.nq;
  s.nk = p.nk;
  s.q_start = s.k_start = 0;
  if (p.cu_q != nullptr) {
    s.q_start = p.cu_q[s.b];
    s.nq = p.cu_q[s.b + 1] - p.cu_q[s.b];
    s.k_start = p.cu_k[s.b];
    s.nk = p.cu_k[s.b + 1] - p.cu_k[s.b];
  }
  s.qb = qt / p.split_m;
  s.qs = qt - s.qb * p.split_m;
  return s;
}

// Key tiles this CTA walks, and (masked calls) the row of key-block ids they come from.
__device__ __forceinline__ int key_steps(const FwdParams& p, const Site& s, int block_n, const int32_t** idx_base) {
  int n_steps;
  *idx_base = nullptr;
  if (p.kv_num == nullptr) {
    n_steps = cdiv(s.nk, block_n);
  } else {
    n_steps = p.kv_num[s.b * p.kn_sb + s.h * p.kn_sh + s.qb * p.kn_sm] * p.sub_n;
    *idx_base = p.kv_idx + s.b * p.ki_sb + s.h * p.ki_sh + s.qb * p.ki_sm;
  }
  return s.nk <= 0 ? 0 : n_steps;
}

// cp.async of the tile's query rows (tokens in sQTok, -1: zeros) into shared memory; dst(row, chunk)
// gives the shared address of 16-byte chunk `chunk` of row `row`.
template <typename T, int kRows, int kThreads, int kChunks, class Dst>
__device__ __forceinline__ void gather_q(const FwdParams& p, const Site& s, const int* sQTok, Dst dst) {
  const T* qbase = reinterpret_cast<const T*>(p.q) + s.b * p.q_sb + s.h * p.q_sh + s.q_start * p.q_sn;
  constexpr int kTotal = kRows * kChunks;
#pragma unroll
  for (int i = 0; i < cdiv(kTotal, kThreads); ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (kTotal % kThreads == 0 || c < kTotal) {
      const int row = c / kChunks, ch = c - row * kChunks;
      const int tok = sQTok[row];
      const bool ok = tok >= 0 && ch * 8 < p.head_dim;
      const T* src = ok ? qbase + static_cast<int64_t>(tok) * p.q_sn + ch * 8 : qbase;
      cp_async16(dst(row, ch), src, ok);
    }
  }
}

// Row sums reduced over the quad, the normaliser 1 / l (0 for an empty row) and the row's natural-log
// LSE written by the quad's first thread (row max m in units where p = 2^(x * mult - m * mult)).
__device__ __forceinline__ float finish_row(const FwdParams& p, const Site& s, float l, float m, float mult, int tok,
                                            int tq) {
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);
  const bool empty = !(l > 0.f);
  if (tq == 0 && tok >= 0) {
    p.lse[s.b * p.l_sb + s.h * p.l_sh + (s.q_start + tok) * p.l_sn] =
        empty ? -INFINITY : (m * mult + __log2f(l)) * kLn2;
  }
  return empty ? 0.f : 1.f / l;
}

// 16-byte coalesced stores of the output tile staged in shared memory (rows of o_stride elements).
template <typename T, int kRows, int kThreads, int kChunks>
__device__ __forceinline__ void store_out(const FwdParams& p, const Site& s, const int* sQTok, const uint16_t* sO,
                                          int o_stride) {
  T* obase = reinterpret_cast<T*>(p.o) + s.b * p.o_sb + s.h * p.o_sh + s.q_start * p.o_sn;
  constexpr int kTotal = kRows * kChunks;
#pragma unroll
  for (int i = 0; i < cdiv(kTotal, kThreads); ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (kTotal % kThreads == 0 || c < kTotal) {
      const int row = c / kChunks, ch = c - row * kChunks;
      const int tok = sQTok[row];
      if (tok >= 0 && ch * 8 < p.head_dim) {
        *reinterpret_cast<uint4*>(obase + static_cast<int64_t>(tok) * p.o_sn + ch * 8) =
            *reinterpret_cast<const uint4*>(sO + row * o_stride + ch * 8);
      }
    }
  }
}

// ------------------------------------------------------------------------------ kernel
template <typename T, int D, int kBias>
__global__ void __launch_bounds__(Cfg<D>::kNWarps * 32, Cfg<D>::kMinBlocks) attn_fwd_kernel(const FwdParams p) {
  using C = Cfg<D>;
  using L = SmemLayout<D>;
  constexpr int kBlockM = C::kBlockM;
  constexpr int kBlockN = C::kBlockN;
  constexpr int kNWarps = C::kNWarps;
  constexpr int kThreads = kNWarps * 32;
  constexpr bool kQRegs = C::kQRegs;
  constexpr int MT = kBlockM / (16 * kNWarps);  // m16 tiles per warp
  constexpr int kStride = L::kStride;
  constexpr int kChunks = D / 8;                // 16-byte chunks per row
  constexpr int NT = kBlockN / 8;               // n8 tiles of S
  constexpr int KS = D / 16;                    // k16 steps of Q K^T
  constexpr int DT = D / 8;                     // n8 tiles of O
  constexpr int PK = kBlockN / 16;              // k16 steps of P V
  constexpr bool kRun = kBias >= 16;
  constexpr int W = kRun ? kBias : 1;
  constexpr int kRuns = kRun ? kBlockN / W : 1;
  static_assert(MT >= 1 && kBlockM == MT * 16 * kNWarps, "bad warp tiling");
  static_assert(D % 16 == 0 && NT % 2 == 0 && DT % 2 == 0, "head dim and key tile must be multiples of 16");
  static_assert(!kRun || kBlockN % W == 0, "a key tile must hold whole runs");
  constexpr int QF_KS = kQRegs ? KS : 1;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sKV = reinterpret_cast<T*>(smem_raw);
  T* sQ = kQRegs ? sKV + 2 * kBlockN * kStride : sKV + 4 * kBlockN * kStride;
  int* sQTok = reinterpret_cast<int*>(smem_raw + L::kIntsOffset);  // [kBlockM]
  int* sTok = sQTok + kBlockM;                                      // [3][kBlockN] token or -1
  int* sRC = sTok + 3 * kBlockN;                                    // [3][kBlockN] (row << 16 | col) or -1
  uint16_t* sRelH = reinterpret_cast<uint16_t*>(smem_raw + L::kRelOffset);
  const int Sh = rel_stride_h(p.rgh);
  const int Sw = rel_stride_w(p.rgw, kBias);
  uint16_t* sRelW = sRelH + kBlockM * Sh;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;  // row inside an m16 tile (and +8)
  const int tq = lane & 3;  // column pair inside an n8 tile

  // ---------------------------------------------------------------- which tile
  const Site site = locate(p);
  const int b = site.b, h = site.h, hk = site.hk, nq = site.nq, nk = site.nk, qb = site.qb, qs = site.qs;
  const int64_t k_start = site.k_start;
  const bool dense = p.kv_num == nullptr;
  const int layout = p.layout;
  const int bq = p.bq, bk = p.bk;
  if (layout == 0 && qb * bq + qs * kBlockM >= nq) return;  // whole tile past this sequence (uniform)

  // ---------------------------------------------------------------- query tokens of this tile
  for (int m = tid; m < kBlockM; m += kThreads) sQTok[m] = block_token(p, layout, qb, qs * kBlockM + m, bq, nq);

  // ---------------------------------------------------------------- key steps
  const int32_t* idx_base;
  const int n_steps = key_steps(p, site, kBlockN, &idx_base);
  const int sub_n = p.sub_n;

  auto block_of = [&](int t) -> int {
    return dense ? t : __ldg(idx_base + static_cast<int64_t>(t / sub_n) * p.ki_sk);
  };

  // token (or -1) of every key of step t into table `slot` (threads < kBlockN)
  auto fill_tokens = [&](int t, int j, int slot) {
    if (tid < kBlockN) {
      const int n = tid;
      const int sub = t - (t / sub_n) * sub_n;
      const int tok = block_token(p, layout, j, sub * kBlockN + n, bk, nk);
      sTok[slot * kBlockN + n] = tok;
      if constexpr (kBias == kBiasGeneric) {
        int rc = -1;
        if (tok >= 0) {
          const int kr = tok / p.rgw;
          rc = (kr << 16) | (tok - kr * p.rgw);
        }
        sRC[slot * kBlockN + n] = rc;
      }
    }
  };

  const T* kbase = reinterpret_cast<const T*>(p.k) + b * p.k_sb + hk * p.k_sh + k_start * p.k_sn;
  const T* vbase = reinterpret_cast<const T*>(p.v) + b * p.v_sb + hk * p.v_sh + k_start * p.v_sn;
  const int head_dim = p.head_dim;

  auto load_kv = [&](int stage, int slot) {
    T* sK = sKV + stage * 2 * kBlockN * kStride;
    T* sV = sK + kBlockN * kStride;
    constexpr int kTotal = kBlockN * kChunks;
#pragma unroll
    for (int i = 0; i < cdiv(kTotal, kThreads); ++i) {
      const int c = tid + i * kThreads;
      if (kTotal % kThreads == 0 || c < kTotal) {
        const int row = c / kChunks, ch = c - row * kChunks;
        const int tok = sTok[slot * kBlockN + row];
        const bool ok = tok >= 0 && ch * 8 < head_dim;
        const T* ksrc = ok ? kbase + static_cast<int64_t>(tok) * p.k_sn + ch * 8 : kbase;
        const T* vsrc = ok ? vbase + static_cast<int64_t>(tok) * p.v_sn + ch * 8 : vbase;
        cp_async16(smem_u32(sK + row * kStride + ch * 8), ksrc, ok);
        cp_async16(smem_u32(sV + row * kStride + ch * 8), vsrc, ok);
      }
    }
  };

  // ---------------------------------------------------------------- prologue
  int j_cur = 0, j_next = 0;
  if (n_steps > 0) j_cur = block_of(0);
  if (n_steps > 1) j_next = block_of(1);
  if (n_steps > 0) fill_tokens(0, j_cur, 0);
  if (n_steps > 1) fill_tokens(1, j_next, 1);
  __syncthreads();  // sQTok and the first two token tables

  gather_q<T, kBlockM, kThreads, kChunks>(p, site, sQTok,
                                          [&](int row, int ch) { return smem_u32(sQ + row * kStride + ch * 8); });
  if (n_steps > 0) load_kv(0, 0);
  cp_async_commit();

  if constexpr (kBias != kBiasNone) {
    // stage this tile's rows of rel_h / rel_w (zeros for missing queries and padding)
    const uint16_t* rh = reinterpret_cast<const uint16_t*>(p.rel_h) + b * p.rh_sb + h * p.rh_sh;
    const uint16_t* rw = reinterpret_cast<const uint16_t*>(p.rel_w) + b * p.rw_sb + h * p.rw_sh;
    for (int m = warp; m < kBlockM; m += kNWarps) {
      const int tok = sQTok[m];
      for (int r = lane; r < Sh; r += 32) {
        uint16_t val = 0;
        if (tok >= 0 && r < p.rgh) val = rh[static_cast<int64_t>(tok) * p.rh_sq + static_cast<int64_t>(r) * p.rh_sr];
        sRelH[m * Sh + r] = val;
      }
      for (int c = lane; c < Sw; c += 32) {
        uint16_t val = 0;
        if (tok >= 0 && c < p.rgw) val = rw[static_cast<int64_t>(tok) * p.rw_sq + static_cast<int64_t>(c) * p.rw_sc];
        sRelW[m * Sw + c] = val;
      }
    }
  }

  cp_async_wait<0>();
  __syncthreads();

  const int warp_row0 = warp * 16 * MT;
  // ldmatrix row addresses (bytes): lane l feeds row (l & 7) of 8x8 matrix l >> 3.
  // A operand (Q) and the transposed B operand (V): matrices (+0 rows, +0 cols), (+8, +0), (+0, +8), (+8, +8).
  // B operand (K): (+0 keys, +0 cols), (+0, +8), (+8, +0), (+8, +8).
  const uint32_t a_lane = static_cast<uint32_t>((((lane & 7) + ((lane >> 3) & 1) * 8) * kStride + (lane >> 4) * 8) * 2);
  const uint32_t k_lane = static_cast<uint32_t>((((lane & 7) + (lane >> 4) * 8) * kStride + ((lane >> 3) & 1) * 8) * 2);
  const uint32_t sKV_u32 = smem_u32(sKV);
  const uint32_t q_addr = smem_u32(sQ) + static_cast<uint32_t>(warp_row0 * kStride * 2) + a_lane;
  constexpr uint32_t kStageBytes = 2 * kBlockN * kStride * 2;
  constexpr uint32_t kVBytes = kBlockN * kStride * 2;
  uint32_t qf[MT][QF_KS][4];
  if constexpr (kQRegs) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) ldsm_x4(qf[mt][ks], q_addr + (mt * 16 * kStride + ks * 16) * 2);
    }
    __syncthreads();  // sQ aliases the second K/V stage
  }

  const float mult = (kBias == kBiasNone) ? p.scale * kLog2e : kLog2e;
  const float scale = p.scale;

  float acc[MT][DT][4];
  float row_m[MT][2], row_l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][dt][e] = 0.f;
    }
    row_m[mt][0] = row_m[mt][1] = -INFINITY;
    row_l[mt][0] = row_l[mt][1] = 0.f;
  }

  // ---------------------------------------------------------------- main loop
  int slot = 0;  // t % 3
  for (int t = 0; t < n_steps; ++t) {
    const int j_next2 = (t + 2 < n_steps) ? block_of(t + 2) : 0;
    const int slot1 = slot == 2 ? 0 : slot + 1;
    const int slot2 = slot1 == 2 ? 0 : slot1 + 1;
    if (t + 1 < n_steps) load_kv((t + 1) & 1, slot1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();  // tile t is in shared memory for every thread

    const uint32_t k_addr = sKV_u32 + (t & 1) * kStageBytes + k_lane;
    const uint32_t v_addr = sKV_u32 + (t & 1) * kStageBytes + kVBytes + a_lane;

    // ---- S = Q K^T
    float s[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
      }
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (kQRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mt][e] = qf[mt][ks][e];
        } else {
          ldsm_x4(a[mt], q_addr + (mt * 16 * kStride + ks * 16) * 2);
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bb[4];
        ldsm_x4(bb, k_addr + (np * 16 * kStride + ks * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Num<T>::mma(s[mt][2 * np], a[mt], bb[0], bb[1]);
          Num<T>::mma(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }

    // ---- tile geometry (uniform scalars)
    const int sub = t - (t / sub_n) * sub_n;
    bool full;
    int n_valid = kBlockN;
    int row0 = 0, col0 = 0, nruns = kRuns, colcut = W;
    if (layout == 0) {
      const int t0 = j_cur * bk + sub * kBlockN;
      n_valid = min(kBlockN, min(bk - sub * kBlockN, nk - t0));
      full = n_valid == kBlockN;
      if constexpr (kRun) {
        row0 = t0 / W;
        nruns = n_valid / W;
      }
    } else {
      const int tr = j_cur / p.ntw, tc = j_cur - tr * p.ntw;
      const int n0 = sub * kBlockN;
      full = n0 + kBlockN <= bk && (tr + 1) * p.th <= p.tgh && (tc + 1) * p.tw <= p.tgw;
      if constexpr (kRun) {
        row0 = tr * p.th + n0 / W;
        col0 = tc * W;
        nruns = min(kRuns, min((bk - n0) / W, p.tgh - row0));
        colcut = min(W, p.tgw - col0);
      }
    }

    // ---- bias and mask: s becomes x (max-tracked units; p = 2^(x*mult - m*mult))
    if constexpr (kBias == kBiasNone) {
      if (!full) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int e1 = 0; e1 < 2; ++e1) {
            const int col = nt * 8 + 2 * tq + e1;
            const bool ok = layout == 0 ? col < n_valid : sTok[slot * kBlockN + col] >= 0;
            if (!ok) {
#pragma unroll
              for (int mt = 0; mt < MT; ++mt) {
                s[mt][nt][e1] = -INFINITY;
                s[mt][nt][2 + e1] = -INFINITY;
              }
            }
          }
        }
      }
    } else if constexpr (kBias == kBiasGeneric) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int2 rc2 = *reinterpret_cast<const int2*>(sRC + slot * kBlockN + nt * 8 + 2 * tq);
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
          const int rc = e1 ? rc2.y : rc2.x;
          const bool ok = rc >= 0;
          const int kr = ok ? (rc >> 16) : 0;
          const int kc = ok ? (rc & 0xffff) : 0;
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int row = warp_row0 + mt * 16 + g + hf * 8;
              const float bias = Num<T>::to_float(sRelH[row * Sh + kr]) + Num<T>::to_float(sRelW[row * Sw + kc]);
              float& x = s[mt][nt][hf * 2 + e1];
              x = ok ? fmaf(x, scale, bias) : -INFINITY;
            }
          }
        }
      }
    } else {
      // runs of W key-grid columns: one rel_h value per run, one rel_w pair per n8 tile
      const bool all_ok = nruns == kRuns && colcut == W;  // uniform: no masking needed
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int row = warp_row0 + mt * 16 + g + hf * 8;
          const uint16_t* rh_row = sRelH + row * Sh;
          const uint16_t* rw_row = sRelW + row * Sw + col0 + 2 * tq;
          float hv[kRuns];
#pragma unroll
          for (int r = 0; r < kRuns; ++r) hv[r] = Num<T>::to_float(rh_row[min(row0 + r, p.rgh - 1)]);
          if (all_ok) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const int r = (nt * 8) / W;
              const int c0 = (nt * 8) % W;
              const float2 wv = Num<T>::unpack(*reinterpret_cast<const uint32_t*>(rw_row + c0));
              s[mt][nt][hf * 2] = fmaf(s[mt][nt][hf * 2], scale, hv[r] + wv.x);
              s[mt][nt][hf * 2 + 1] = fmaf(s[mt][nt][hf * 2 + 1], scale, hv[r] + wv.y);
            }
          } else {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
              const int r = (nt * 8) / W;
              const int c0 = (nt * 8) % W;
              const float2 wv = Num<T>::unpack(*reinterpret_cast<const uint32_t*>(rw_row + c0));
              const bool run_ok = r < nruns;
#pragma unroll
              for (int e1 = 0; e1 < 2; ++e1) {
                const bool ok = run_ok && (c0 + 2 * tq + e1 < colcut);
                float& x = s[mt][nt][hf * 2 + e1];
                x = ok ? fmaf(x, scale, hv[r] + (e1 ? wv.y : wv.x)) : -INFINITY;
              }
            }
          }
        }
      }
    }

    // ---- online softmax (base 2)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][hf * 2], s[mt][nt][hf * 2 + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(row_m[mt][hf], mx);
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        const float neg = -m_use * mult;
        const float alpha = ex2((row_m[mt][hf] - m_use) * mult);
        row_m[mt][hf] = m_new;
        float rs = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
          for (int e1 = 0; e1 < 2; ++e1) {
            const float pv = ex2(fmaf(s[mt][nt][hf * 2 + e1], mult, neg));
            s[mt][nt][hf * 2 + e1] = pv;
            rs += pv;
          }
        }
        row_l[mt][hf] = row_l[mt][hf] * alpha + rs;
#pragma unroll
        for (int dt = 0; dt < DT; ++dt) {
          acc[mt][dt][hf * 2] *= alpha;
          acc[mt][dt][hf * 2 + 1] *= alpha;
        }
      }
    }

    // ---- O += P V
#pragma unroll
    for (int kk = 0; kk < PK; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = Num<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = Num<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = Num<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = Num<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < DT / 2; ++dp) {
        uint32_t bb[4];
        ldsm_x4_trans(bb, v_addr + (kk * 16 * kStride + dp * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Num<T>::mma(acc[mt][2 * dp], a[mt], bb[0], bb[1]);
          Num<T>::mma(acc[mt][2 * dp + 1], a[mt], bb[2], bb[3]);
        }
      }
    }

    if (t + 2 < n_steps) fill_tokens(t + 2, j_next2, slot2);
    __syncthreads();  // stage t & 1 and table `slot` are free again
    j_cur = j_next;
    j_next = j_next2;
    slot = slot1;
  }

  // ---------------------------------------------------------------- epilogue
  cp_async_wait<0>();
  __syncthreads();
  uint16_t* sO = reinterpret_cast<uint16_t*>(sKV);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = warp_row0 + mt * 16 + g + hf * 8;
      const float inv = finish_row(p, site, row_l[mt][hf], row_m[mt][hf], mult, sQTok[row], tq);
#pragma unroll
      for (int dt = 0; dt < DT; ++dt) {
        *reinterpret_cast<uint32_t*>(sO + row * kStride + dt * 8 + 2 * tq) =
            Num<T>::pack(acc[mt][dt][hf * 2] * inv, acc[mt][dt][hf * 2 + 1] * inv);
      }
    }
  }
  __syncthreads();
  store_out<T, kBlockM, kThreads, kChunks>(p, site, sQTok, sO, kStride);
}

// ------------------------------------------------------------------------------ host launch
inline const char* format_error(const char* fmt, long long a, long long b) {
  static thread_local char buf[256];
  snprintf(buf, sizeof(buf), fmt, a, b);
  return buf;
}

inline int device_smem_optin(int dev) {
  static int cache[64] = {0};
  if (dev < 0 || dev >= 64) {
    int v = 0;
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return v;
  }
  if (cache[dev] == 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
    cache[dev] = v;
  }
  return cache[dev];
}

// Launches `kernel` on one CTA per (query tile, batch, head) with `smem` bytes of dynamic shared memory,
// raising the kernel's limit first where needed (`configured`: the kernel's own per-device record).
inline const char* launch_ctas(void (*kernel)(const FwdParams), FwdParams& p, int threads, int smem,
                               int (&configured)[64], cudaStream_t stream) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int optin = device_smem_optin(dev);
  if (smem > optin) {
    return format_error("the kernel needs %lld bytes of shared memory per block, the device allows %lld", smem, optin);
  }
  if (smem > 48 * 1024 && (dev >= 64 || configured[dev] < smem)) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return cudaGetErrorString(err);
    if (dev < 64) configured[dev] = smem;
  }
  const long long ctas = static_cast<long long>(p.num_q_tiles) * p.batch * p.heads;
  if (ctas <= 0) return nullptr;
  if (ctas > INT_MAX) return format_error("too many thread blocks (%lld > %lld)", ctas, INT_MAX);
  kernel<<<static_cast<unsigned>(ctas), threads, smem, stream>>>(p);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T, int D, int kBias>
const char* launch(FwdParams& p, cudaStream_t stream) {
  using C = Cfg<D>;
  auto kernel = attn_fwd_kernel<T, D, kBias>;
  const int smem = SmemLayout<D>::bytes(kBias, p.rgh, p.rgw);
  p.smem_bytes = smem;
  p.bias_mode = kBias;
  static int configured[64] = {0};
  return launch_ctas(kernel, p, C::kNWarps * 32, smem, configured, stream);
}

// Can key tiles of kernel width block_n be described as runs of w key-grid columns?
inline bool runs_fit(const FwdParams& p, int w, int block_n, bool dense) {
  if (w > block_n || block_n % w != 0) return false;
  if (p.layout == 0) return p.rgw == w && (dense || p.bk % w == 0) && p.nk == p.rgh * p.rgw;
  return p.tw == w && p.rgh == p.tgh && p.rgw == p.tgw;
}

// Query tiles of block_m rows: dense calls take the tiles as their query blocks, masked ones split
// each of the mask's query blocks into split_m of them (the Hopper kernel re-tiles with its own rows).
inline void tile_queries(FwdParams& p, int block_m) {
  if (p.kv_num == nullptr) {
    p.bq = block_m;
    p.split_m = 1;
    p.num_q_tiles = cdiv(p.nq, block_m);
  } else {
    p.split_m = cdiv(p.bq, block_m);
    p.num_q_tiles = p.num_q_blocks * p.split_m;
  }
}

// The Hopper kernel (fwd_sm90.cuh) when it serves the call; *taken says whether it did.
template <typename T, int D> const char* try_sm90(FwdParams& p, cudaStream_t stream, bool* taken);

template <typename T, int D>
const char* run_fwd_hd(FwdParams& p, void* stream_ptr) {
  using C = Cfg<D>;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  p.block_m = C::kBlockM;
  p.block_n = C::kBlockN;
  const bool dense = p.kv_num == nullptr;
  if (dense) {
    p.layout = 0;
    p.bk = C::kBlockN;
    p.sub_n = 1;
  } else {
    if (p.bq <= 0 || p.bk <= 0) return "mask block sizes must be positive";
    p.sub_n = cdiv(p.bk, C::kBlockN);
  }
  tile_queries(p, C::kBlockM);
  if (p.layout == 1) {
    if (p.th <= 0 || p.tw <= 0 || p.tgh <= 0 || p.tgw <= 0) return "tiles layout needs a positive grid and tile";
    p.ntw = cdiv(p.tgw, p.tw);
  } else {
    p.ntw = 1;
  }
  if (p.num_q_tiles <= 0 || p.batch <= 0 || p.heads <= 0) return nullptr;  // nothing to do
  if (p.rel_h != nullptr && (p.rgh <= 0 || p.rgw <= 0 || p.rgh >= 32768 || p.rgw >= 65536)) {
    return "rel-pos key grid out of range";
  }
  if (p.variant == kVariantSm90) {
    bool taken = false;
    const char* err = try_sm90<T, D>(p, stream, &taken);
    if (taken) return err;
  }
  p.variant = kVariantMmaSync;
  if (p.rel_h == nullptr) return launch<T, D, kBiasNone>(p, stream);
  if constexpr (C::kBlockN >= 64) {
    if (runs_fit(p, 64, C::kBlockN, dense)) return launch<T, D, kBiasRun64>(p, stream);
  }
  if (runs_fit(p, 32, C::kBlockN, dense)) return launch<T, D, kBiasRun32>(p, stream);
  if (runs_fit(p, 16, C::kBlockN, dense)) return launch<T, D, kBiasRun16>(p, stream);
  return launch<T, D, kBiasGeneric>(p, stream);
}

}  // namespace fwd
}  // namespace samsparse
