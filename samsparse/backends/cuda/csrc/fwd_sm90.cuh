// Hopper (sm_90a) variant of the forward kernel: warpgroup MMA (wgmma) for both products.
//
// Serves the calls of SAM's global attention (head dims 64 and 80, sequence layout, dense
// or block-masked, no bias or the "run 64" rel-pos mode where a key tile is one row of the
// 64-wide key grid); everything else runs on the mma.sync kernel of fwd_kernel.cuh.
//
//   * one CTA = 64 or 128 query rows of one (batch, head): tiles m64w4 (one warpgroup, one 64-row
//     block), m128w8 (two warpgroups) or m128w4 (one warpgroup owning two 64-row blocks, pipelined
//     inside each step); see Rows and try_sm90;
//   * Q, K and V tiles live in shared memory in the wgmma "swizzled" layouts, filled with
//     cp.async at the swizzled chunk positions (a key tile of the sequence layout is 64 consecutive
//     tokens: rows addressed from its first token, rows past the keys zero-filled):
//     columns 0-63 as rows of 128 bytes (128-byte swizzle: 16-byte chunk c of row r at
//     chunk c ^ (r % 8)), columns 64-79 (d = 80) as a second panel of 32-byte rows
//     (32-byte swizzle: chunk c ^ ((r / 4) % 2));
//   * S = Q K^T: wgmma m64n64k16, both operands from shared memory (K-major);
//   * O += P V: wgmma m64nNk16 with P from registers (the S accumulator re-packed, the
//     same fragment layout as mma.sync) and V from shared memory (MN-major, transposed);
//   * softmax: by default the fixed offset: step 0's row max is every later step's offset, the row
//     sums come from P x ones on the tensor cores, and CTAs whose sums reach 2^64 are recomputed by a
//     second launch with the running max (SoftmaxMode, launch); SAMSPARSE_CUDA_FIXED_OFFSET=0 runs the
//     running max (online softmax with rescale);
//   * run-64 bias: the width term rel_w[q, col] is the same for every key tile, so each thread's
//     32 values per 64-row block sit in shared memory for the whole loop (float32 at d = 64, packed pairs
//     at d = 80), or in registers on m128w4 tiles at d = 64 (WidthTerms); the height term rel_h[q, row]
//     is one value per row and step, added to the row's offset (x = s * scale + rel_w,
//     p = 2^((x + rel_h - m) * log2 e)).
//
// Accumulator layout of wgmma m64nN (f32): thread t of the warpgroup (warp w = t / 32,
// lane l) holds, for n8 chunk j, d[4j + e] = C[16 w + l / 4 + 8 (e / 2)][8 j + 2 (l % 4) + e % 2].
#pragma once

#include <type_traits>

#include "fwd_kernel.cuh"

namespace samsparse {
namespace fwd {
namespace sm90 {

constexpr int kBlockN = 64;  // keys per tile (one row of SAM's 64 x 64 key grid)
// Query rows per CTA: kWG warpgroups, each owning kMT blocks of 64 rows (one wgmma m64 each; a
// warp holds 16 rows of every block). Shapes: (1, 1) 64 rows, 128 threads, up to 3 CTAs per SM, no
// idle rows for masks of 64-token query blocks; (2, 1) 128 rows, 256 threads; (1, 2) 128 rows, 128
// threads (each K/V tile and each step's fixed work serve twice the logits per thread).
template <int kWG, int kMT> struct Rows {
  static constexpr int kBlockM = 64 * kMT * kWG;
  static constexpr int kThreads = 128 * kWG;
  static constexpr int kMinBlocks = (kWG == 1 && kMT == 1) ? 3 : 2;
};

// Where the run-64 width terms live: float32 (kFloat: d = 64) or packed pairs of q's type (d = 80, measured
// on the H200: pairs 1.763 against float32 1.832 ms at vit_h B = 8, whose larger tiles make shared memory
// the limit; at d = 64 float32 1.141 against 1.203 ms); in shared memory (bytes per thread, added to
// Smem::kBytes at launch) on the tiles of 2 CTAs x 8 warps or 3 x 4 per SM, whose registers the pipelined
// products need, and in registers on m128w4 at d = 64 (kRegs: 2 CTAs x 4 warps per SM, up to 255
// registers, as the Triton kernel's M128 tile keeps them; shared memory then carries only the Q / K / V
// operands; nvcc 13.0: 255 registers, no spills, with the fixed-offset softmax; at d = 80 they would spill).
template <int D, int kWG, int kMT> struct WidthTerms {
  static constexpr bool kFloat = D == 64;
  static constexpr bool kRegs = kMT == 2 && kFloat;
  static constexpr int kBytesPerThread = kRegs ? 0 : kMT * (kFloat ? 128 : 64);
  static constexpr int kF4 = kRegs ? 8 * kMT : 1;  // float4 registers per thread (kRegs: float32 only)
};

// Bytes of one tile of `rows` rows in the two panels (128-byte rows, 32-byte rows).
template <int D> struct Panels {
  static_assert(D == 64 || D == 80, "the Hopper kernel serves head dims 64 and 80");
  static constexpr int kP1 = D - 64;                // columns in the second panel (0 or 16)
  static constexpr int kRow0 = 128, kRow1 = kP1 * 2;  // bytes per row
};

// Shared memory map (offsets from a 1024-byte aligned base):
//   [Q p0 | K0 K1 V0 V1 V2 p0 | Q p1 | K0 K1 V0 V1 V2 p1 | ints]
// K has two stages, V three: the overlapped loop (one 64-row block per warpgroup) reads V of step t - 1
// while K of step t + 1 and V of step t + 1 land. The output tile is staged in the K/V area (p0) after the loop.
constexpr int kKStages = 2, kVStages = 3;
template <int D, int kBlockM> struct Smem {
  using P = Panels<D>;
  static constexpr int kTiles = kKStages + kVStages;
  static constexpr int kQ0 = 0;
  static constexpr int kK0 = kQ0 + kBlockM * P::kRow0;        // K stages, then V stages
  static constexpr int kKV0Bytes = kBlockN * P::kRow0;         // one K or V tile, panel 0
  static constexpr int kQ1 = kK0 + kTiles * kKV0Bytes;
  static constexpr int kK1 = kQ1 + kBlockM * P::kRow1;
  static constexpr int kKV1Bytes = kBlockN * P::kRow1;
  static constexpr int kInts = kK1 + kTiles * kKV1Bytes;
  static constexpr int kIntCount = kBlockM;                    // query tokens
  static constexpr int kOStride = D + 8;                       // staged output row (elements)
  // a 16 x 8 tile of ones (P x ones = the row sums of P, fixed-offset softmax), then the run-64 width terms
  static constexpr int kOnes = (kInts + kIntCount * 4 + 127) / 128 * 128;
  static constexpr int kOnesBytes = 512;
  static constexpr int kW = kOnes + kOnesBytes;
  static constexpr int kBytes = kW + 1024;  // + slack to align the base; the launch adds the width terms
  static_assert(kQ1 % 1024 == 0 && kK1 % 256 == 0 && kInts % 16 == 0, "panel alignment");
  static_assert(kBlockM * kOStride * 2 <= kTiles * kKV0Bytes, "output staging must fit in the K/V area");
};

// Byte offset of 16-byte chunk `c` of row `r` of a tile (panel 0 at base0, panel 1 at base1).
template <int D>
__host__ __device__ __forceinline__ uint32_t chunk_offset(uint32_t base0, uint32_t base1, int r, int c) {
  if (c < 8) return base0 + r * 128 + ((c ^ (r & 7)) << 4);
  const int c1 = c - 8;
  return base1 + r * 32 + ((c1 ^ ((r >> 2) & 1)) << 4);
}

// ------------------------------------------------------------------------------ wgmma helpers
// Shared-memory matrix descriptor: start address, leading / stride byte offsets, swizzle mode
// (1: 128-byte, 3: 32-byte). Offsets are encoded >> 4.
__host__ __device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, uint64_t swizzle) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (swizzle << 62);
}
// K-major operands (Q, K): 8-row groups 1024 bytes (128-byte rows) or 256 bytes (32-byte rows)
// apart; the leading offset is unused for swizzled K-major layouts.
__host__ __device__ __forceinline__ uint64_t desc_k128(uint32_t addr) { return make_desc(addr, 16, 1024, 1); }
__host__ __device__ __forceinline__ uint64_t desc_k32(uint32_t addr) { return make_desc(addr, 16, 256, 3); }
// MN-major operand (V, N = 64 or 16 = one swizzle atom wide): successive 8-key groups are one atom
// (1024 or 256 bytes) apart. With a single atom along N only the K-direction offset is read; both
// offsets carry it.
__host__ __device__ __forceinline__ uint64_t desc_mn128(uint32_t addr) { return make_desc(addr, 1024, 1024, 1); }
__host__ __device__ __forceinline__ uint64_t desc_mn32(uint32_t addr) { return make_desc(addr, 256, 256, 3); }

// Where the kernel's operands live (shared addresses from the aligned base) and the wgmma descriptors
// it hands over: one place for the kernel, the self-test and the CPU layout test
// (tests/test_cuda_backend.py::test_wgmma_layouts_read_back_the_written_tiles).
template <int D, int kBlockM> struct Operands {
  using S = Smem<D, kBlockM>;
  // 16-byte chunk `ch` of query row `row` / of key (v = false; stage < kKStages) or value (v = true;
  // stage < kVStages) row `row` of a stage
  static __host__ __device__ uint32_t q_chunk(uint32_t base, int row, int ch) {
    return chunk_offset<D>(base + S::kQ0, base + S::kQ1, row, ch);
  }
  static __host__ __device__ uint32_t kv_chunk(uint32_t base, int stage, bool v, int row, int ch) {
    const int tile = v ? kKStages + stage : stage;
    return chunk_offset<D>(base + S::kK0 + tile * S::kKV0Bytes, base + S::kK1 + tile * S::kKV1Bytes, row, ch);
  }
  // A operand of S = Q K^T: 64-row block `blk` of Q, k-step ks (columns 16 ks ... 16 ks + 15); ks = 4 is
  // the second panel (d = 80). A k-step moves a K-major start address by 32 bytes: + 2 in its field.
  static __host__ __device__ uint64_t q_desc(uint32_t base, int blk, int ks) {
    return ks < 4 ? desc_k128(base + S::kQ0 + blk * 64 * 128) + 2 * ks : desc_k32(base + S::kQ1 + blk * 64 * 32);
  }
  // B operand of S = Q K^T: the stage's K tile, k-step ks
  static __host__ __device__ uint64_t k_desc(uint32_t base, int stage, int ks) {
    return ks < 4 ? desc_k128(base + S::kK0 + stage * S::kKV0Bytes) + 2 * ks
                  : desc_k32(base + S::kK1 + stage * S::kKV1Bytes);
  }
  // B operand of P x ones (m64n8k16, K-major without swizzle): every element read is 1, so one tile
  // serves every k-step
  static __host__ __device__ uint64_t ones_desc(uint32_t base) { return make_desc(base + S::kOnes, 128, 256, 0); }
  // B operand of O += P V: keys 16 kk ... 16 kk + 15 of the stage's V tile, columns 0-63 (panel 0) or
  // 64-79 (panel 1); 16 keys are 16 rows: 2048 / 512 bytes, + 128 / + 32 in the field
  static __host__ __device__ uint64_t v_desc(uint32_t base, int stage, int panel, int kk) {
    return panel == 0 ? desc_mn128(base + S::kK0 + (kKStages + stage) * S::kKV0Bytes) + 128 * kk
                      : desc_mn32(base + S::kK1 + (kKStages + stage) * S::kKV1Bytes) + 32 * kk;
  }
};

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Orders reads of wgmma accumulators after the wait (the compiler sees the asm outputs as ready
// when the wgmma is issued): every register passes through an empty volatile asm after the wait.
template <int N> __device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
// Makes this thread's generic-proxy shared-memory writes (cp.async included, after its wait)
// visible to the async proxy that wgmma reads shared memory through.
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

template <typename T> struct Wg;

#define SAMSPARSE_WG_D32                                                                                          \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),      \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),       \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),      \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define SAMSPARSE_WG_R32                                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"

#define SAMSPARSE_WG_TYPE(T, PTXT)                                                                                 \
  template <> struct Wg<T> {                                                                                       \
    /* d[32] (+)= A (desc) B^T (desc), m64n64k16; scale_d = 0 overwrites d */                                      \
    static __device__ __forceinline__ void ss_n64(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {          \
      asm volatile(                                                                                                \
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                             \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTXT "." PTXT " " SAMSPARSE_WG_R32                         \
          ", %32, %33, p, 1, 1, 0, 0;\n}\n"                                                                        \
          : SAMSPARSE_WG_D32                                                                                       \
          : "l"(a), "l"(b), "r"(scale_d));                                                                         \
    }                                                                                                              \
    /* d[32] += A (registers) B (desc, N-major), m64n64k16 */                                                      \
    static __device__ __forceinline__ void rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {           \
      asm volatile(                                                                                                \
          "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                               \
          "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTXT "." PTXT " " SAMSPARSE_WG_R32                         \
          ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                                          \
          : SAMSPARSE_WG_D32                                                                                       \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));                                                   \
    }                                                                                                              \
    /* d[4] += A (registers) B (desc, K-major), m64n8k16 */                                                       \
    static __device__ __forceinline__ void rs_n8(float (&d)[4], const uint32_t (&a)[4], uint64_t b) {             \
      asm volatile(                                                                                                \
          "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                               \
          "wgmma.mma_async.sync.aligned.m64n8k16.f32." PTXT "." PTXT                                               \
          " {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"                                               \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                         \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));                                                   \
    }                                                                                                              \
    /* d[8] += A (registers) B (desc, N-major), m64n16k16 */                                                       \
    static __device__ __forceinline__ void rs_n16(float (&d)[8], const uint32_t (&a)[4], uint64_t b) {            \
      asm volatile(                                                                                                \
          "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                                               \
          "wgmma.mma_async.sync.aligned.m64n16k16.f32." PTXT "." PTXT                                              \
          " {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 1;\n}\n"                           \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])         \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));                                                   \
    }                                                                                                              \
  };

SAMSPARSE_WG_TYPE(__half, "f16")
SAMSPARSE_WG_TYPE(__nv_bfloat16, "bf16")
#undef SAMSPARSE_WG_TYPE
#undef SAMSPARSE_WG_R32
#undef SAMSPARSE_WG_D32

// ------------------------------------------------------------------------------ kernel
// kFixed: the fixed-offset softmax; CTAs whose row sums may have
// overflowed write p.redo_flags[cta] = 1 and no output, and a second launch of the running-max kernel
// (kFixed = false with p.redo_flags set) computes exactly those CTAs.
template <typename T, int D, int kBias, int kWG, int kMT, bool kFixed>
__global__ void __launch_bounds__(Rows<kWG, kMT>::kThreads, Rows<kWG, kMT>::kMinBlocks)
    attn_fwd_sm90_kernel(const FwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBlockM = Rows<kWG, kMT>::kBlockM;
  constexpr int kThreads = Rows<kWG, kMT>::kThreads;
  using S = Smem<D, kBlockM>;
  constexpr bool kP1 = D > 64;       // second panel (d = 80)
  constexpr int kChunks = D / 8;     // 16-byte chunks per row
  constexpr int NT = kBlockN / 8;    // n8 chunks of S per thread row
  constexpr int DT0 = 8;             // n8 chunks of O in panel 0
  static_assert(kBias == kBiasNone || kBias == kBiasRun64, "the Hopper kernel serves no bias or run-64 bias");
  using WT = WidthTerms<D, kWG, kMT>;
  constexpr bool kWF = WT::kFloat;
  constexpr bool kWR = WT::kRegs;
  constexpr bool kMaySkipRescale = !(kMT == 2 && kBias == kBiasRun64);  // see the rescale below

  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw_u32 = smem_u32(smem_raw);
  const uint32_t base = (raw_u32 + 1023u) & ~1023u;  // swizzle atoms need 1024-byte alignment
  unsigned char* smem = smem_raw + (base - raw_u32);
  int* sQTok = reinterpret_cast<int*>(smem + S::kInts);  // [kBlockM]

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int wg = warp >> 2;  // warpgroup: query rows [64 kMT wg, 64 kMT (wg + 1))
  const int g = lane >> 2;
  const int tq = lane & 3;
  // this thread's rows: row_a[mt] and row_a[mt] + 8 of each 64-row block mt of its warpgroup
  int row_a[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) row_a[mt] = (wg * kMT + mt) * 64 + (warp & 3) * 16 + g;

  // ---------------------------------------------------------------- which tile (as fwd_kernel.cuh)
  const Site site = locate(p);
  const int b = site.b, h = site.h, hk = site.hk, nq = site.nq, nk = site.nk, qb = site.qb, qs = site.qs;
  const int64_t k_start = site.k_start;
  const bool dense = p.kv_num == nullptr;
  const int bq = p.bq, bk = p.bk;
  if (qb * bq + qs * kBlockM >= nq) return;  // whole tile past this sequence (uniform)
  if constexpr (!kFixed) {
    if (p.redo_flags != nullptr && p.redo_flags[blockIdx.x] == 0) return;  // the fixed-offset pass wrote it
  }

  for (int m = tid; m < kBlockM; m += kThreads) sQTok[m] = block_token(p, 0, qb, qs * kBlockM + m, bq, nq);

  const int32_t* idx_base;
  const int n_steps = key_steps(p, site, kBlockN, &idx_base);
  const int sub_n = p.sub_n;
  // key step t reads sub-tile t % sub_n of mask block t / sub_n; the loop keeps both for steps t, t + 1
  // and t + 2 as counters (no integer division per step)
  auto block_at = [&](int blk) -> int {
    return dense ? blk : __ldg(idx_base + static_cast<int64_t>(blk) * p.ki_sk);
  };
  // tile geometry of a step (uniform; sequence layout: a tile is 64 consecutive tokens): first key token and
  // valid keys; run-64 calls have whole key-grid rows in every tile (runs_fit: 64 | nk, 64 | bk)
  auto tile_keys = [&](int j, int sub, int* n_valid) {
    const int t0 = j * bk + sub * kBlockN;
    *n_valid = kBias == kBiasRun64 ? kBlockN : min(kBlockN, min(bk - sub * kBlockN, nk - t0));
    return t0;
  };

  const T* kbase = reinterpret_cast<const T*>(p.k) + b * p.k_sb + hk * p.k_sh + k_start * p.k_sn;
  const T* vbase = reinterpret_cast<const T*>(p.v) + b * p.v_sb + hk * p.v_sh + k_start * p.v_sn;
  const int head_dim = p.head_dim;
  // K/V copies: kTPR threads per key row; thread tid moves chunks kv_q + kTPR i of row tid / kTPR
  // (panel 0 while kTPR i < 8, then panel 1 for d = 80). Their swizzled offsets inside a tile are
  // fixed: computed once.
  constexpr int kTPR = kThreads / kBlockN;
  static_assert(kTPR == 2 || kTPR == 4, "threads per key row");
  constexpr int kCPT = cdiv(kChunks, kTPR);
  const int kv_row = tid / kTPR, kv_q = tid % kTPR;
  using Op = Operands<D, kBlockM>;
  uint32_t kv_off[kCPT];  // relative to stage 0 of K
  bool kv_in[kCPT];       // chunk inside the real head dim (and, d = 80, inside the row)
#pragma unroll
  for (int i = 0; i < kCPT; ++i) {
    const int ch = kv_q + kTPR * i;
    kv_off[i] = ch < kChunks ? Op::kv_chunk(0, 0, false, kv_row, ch) : 0;
    kv_in[i] = ch < kChunks && ch * 8 < head_dim;
  }
  // this thread's first K and V element in a tile, from the tile's first token (32 bits: the launcher
  // checks 64 token strides fit)
  const uint32_t k_off = static_cast<uint32_t>(kv_row * p.k_sn + kv_q * 8);
  const uint32_t v_off = static_cast<uint32_t>(kv_row * p.v_sn + kv_q * 8);
  // the K and V tile of mask block j, sub-tile sub into stages kstage / vstage; rows past the tile's keys
  // are zero-filled (their copies read nothing)
  auto load_kv = [&](int kstage, int vstage, int j, int sub) {
    int n_valid;
    const int t0 = tile_keys(j, sub, &n_valid);
    const T* krow = kbase + static_cast<int64_t>(t0) * p.k_sn + k_off;
    const T* vrow = vbase + static_cast<int64_t>(t0) * p.v_sn + v_off;
    const bool row_ok = kv_row < n_valid;
#pragma unroll
    for (int i = 0; i < kCPT; ++i) {
      const bool p0 = kTPR * i < 8;  // compile-time after unrolling
      if (p0 || kv_in[i]) {
        const bool ok = row_ok && kv_in[i];
        // other stages and V: the same chunk one or more whole tiles further (Operands::kv_chunk)
        const int tile_bytes = p0 ? S::kKV0Bytes : S::kKV1Bytes;
        const uint32_t kdst = base + kv_off[i] + kstage * tile_bytes;
        const uint32_t vdst = base + kv_off[i] + (kKStages + vstage) * tile_bytes;
        cp_async16(kdst, krow + kTPR * 8 * i, ok);
        cp_async16(vdst, vrow + kTPR * 8 * i, ok);
      }
    }
  };

  // ---------------------------------------------------------------- prologue
  int j_cur = n_steps > 0 ? block_at(0) : 0;           // mask block of step t
  int j_next = n_steps > 1 ? block_at(1 / sub_n) : 0;  // ... of step t + 1
  int sub_cur = 0, sub_next = 1 % sub_n;               // t % sub_n, (t + 1) % sub_n
  int blk2 = 2 / sub_n, sub2 = 2 - blk2 * sub_n;       // (t + 2) / sub_n, (t + 2) % sub_n
  // the key counters one step on; j2: the mask block of step t + 2 (prefetched during step t)
  auto advance_keys = [&](int j2) {
    j_cur = j_next;
    sub_cur = sub_next;
    j_next = j2;
    sub_next = sub2;
    if (++sub2 == sub_n) {
      sub2 = 0;
      ++blk2;
    }
  };
  // the ones tile of P x ones (read by wgmma after step 0's proxy fence and barrier)
  if (tid < S::kOnesBytes / 4) {
    reinterpret_cast<uint32_t*>(smem + S::kOnes)[tid] = static_cast<uint32_t>(Num<T>::one_bits) * 0x10001u;
  }
  __syncthreads();  // sQTok

  gather_q<T, kBlockM, kThreads, kChunks>(
      p, site, sQTok, [&](int row, int ch) { return Op::q_chunk(base, row, ch); });
  if (n_steps > 0) load_kv(0, 0, j_cur, sub_cur);
  cp_async_commit();

  // this thread's query tokens
  int qtok[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    qtok[mt][0] = sQTok[row_a[mt]];
    qtok[mt][1] = sQTok[row_a[mt] + 8];
  }
  // run-64 width terms: this thread's 2 rows x 32 columns of each block, kept in shared memory past the
  // ones tile (registers are what the pipelined products need), as float32 (kWF, d = 64) or as packed
  // pairs of q's type (d = 80; see WidthTerms). Float32: float4 q of
  // block mt, sWf[(8 mt + q) kThreads + tid], holds rel_w[row hf = q / 4, 8 nt + 2 tq (+1)] for nt =
  // 2 (q % 4) and + 1; pairs: uint4 q, sW[(4 mt + q) kThreads + tid], holds rel_w[row hf = q / 2,
  // 8 nt + 2 tq (+1)] for nt = 4 (q % 2) ... + 3. Consecutive threads read consecutive 16 bytes (no bank
  // conflicts); each thread reads only its own entries.
  uint4* sW = reinterpret_cast<uint4*>(smem + S::kW);
  float4* sWf = reinterpret_cast<float4*>(smem + S::kW);
  // float32 entries in registers instead (kWR: m128w4), indexed as the shared-memory slots without the thread
  float4 wf_reg[WT::kF4];
  auto width_f4 = [&](int slot) -> float4& {
    if constexpr (kWR) return wf_reg[slot];
    else return sWf[slot * kThreads + tid];
  };
  const uint16_t* rh_base = nullptr;
  if constexpr (kBias == kBiasRun64) {
    rh_base = reinterpret_cast<const uint16_t*>(p.rel_h) + b * p.rh_sb + h * p.rh_sh;
    const uint16_t* rw = reinterpret_cast<const uint16_t*>(p.rel_w) + b * p.rw_sb + h * p.rw_sh;
    auto width_term = [&](int mt, int hf, int col) -> uint16_t {
      if (qtok[mt][hf] < 0) return 0;
      return __ldg(rw + static_cast<int64_t>(qtok[mt][hf]) * p.rw_sq + static_cast<int64_t>(col) * p.rw_sc);
    };
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if constexpr (kWF) {
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const int hf = q >> 2, c0 = 16 * (q & 3) + 2 * tq;
          width_f4(8 * mt + q) =
              make_float4(Num<T>::to_float(width_term(mt, hf, c0)), Num<T>::to_float(width_term(mt, hf, c0 + 1)),
                          Num<T>::to_float(width_term(mt, hf, c0 + 8)), Num<T>::to_float(width_term(mt, hf, c0 + 9)));
        }
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int hf = q >> 1;
          uint32_t w[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int nt = 4 * (q & 1) + i;
            const uint32_t lo = width_term(mt, hf, nt * 8 + 2 * tq), hi = width_term(mt, hf, nt * 8 + 2 * tq + 1);
            w[i] = lo | (hi << 16);
          }
          sW[(4 * mt + q) * kThreads + tid] = make_uint4(w[0], w[1], w[2], w[3]);
        }
      }
    }
  }

  const float scale = p.scale;
  const float mult = (kBias == kBiasNone) ? scale * kLog2e : kLog2e;

  float acc0[kMT][DT0 * 4];
  float acc1[kMT][kP1 ? 8 : 1];
  float accl[kMT][4];  // fixed-offset softmax: P x ones, the row sums of P from the tensor cores
  float row_m[kMT][2], row_l[kMT][2];
  float s[kMT][NT * 4];  // S of the current tile (wgmma accumulator layout), then P
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < DT0 * 4; ++i) acc0[mt][i] = 0.f;
#pragma unroll
    for (int i = 0; i < (kP1 ? 8 : 1); ++i) acc1[mt][i] = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) accl[mt][i] = 0.f;
#pragma unroll
    for (int i = 0; i < NT * 4; ++i) s[mt][i] = 0.f;
    row_m[mt][0] = row_m[mt][1] = -INFINITY;
    row_l[mt][0] = row_l[mt][1] = 0.f;
  }

  // ---------------------------------------------------------------- pieces of a key step
  // height term of key tile t0's key-grid row for this thread's rows (run-64 only; loaded before the product)
  auto height_terms = [&](int t0, float (&hv)[kMT][2]) {
    const int krow = min(t0 / kBlockN, p.rgh - 1);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      hv[mt][0] = hv[mt][1] = 0.f;
      if constexpr (kBias == kBiasRun64) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          if (qtok[mt][hf] >= 0) {
            hv[mt][hf] = Num<T>::to_float(ld_global_u16_early(rh_base + static_cast<int64_t>(qtok[mt][hf]) * p.rh_sq +
                                                              static_cast<int64_t>(krow) * p.rh_sr));
          }
        }
      }
    }
  };
  // S = Q K^T of 64-row block mt against K stage kst (one wgmma group; the caller fences)
  auto issue_qk = [&](int mt, int kst) {
#pragma unroll
    for (int ks = 0; ks < (kP1 ? 5 : 4); ++ks) {
      Wg<T>::ss_n64(s[mt], Op::q_desc(base, wg * kMT + mt, ks), Op::k_desc(base, kst, ks), ks > 0);
    }
    wg_commit();
  };
  // O += P V of block mt against V stage vst, P packed as the register A operand (16 keys per k-step);
  // kSums: also the row sums of P, accl += P x ones
  auto issue_pv = [&](auto sums_tag, int mt, const uint32_t (&a)[4][4], int vst) {
    constexpr bool kSums = decltype(sums_tag)::value;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      Wg<T>::rs_n64(acc0[mt], a[kk], Op::v_desc(base, vst, 0, kk));
      if constexpr (kP1) Wg<T>::rs_n16(acc1[mt], a[kk], Op::v_desc(base, vst, 1, kk));
      if constexpr (kSums) Wg<T>::rs_n8(accl[mt], a[kk], Op::ones_desc(base));
    }
    wg_commit();
  };
  // bias and the key mask on block mt's S (kFull: every column of the tile is a key; a separate
  // instantiation, so full tiles pay no per-logit column test)
  auto bias_and_mask = [&](auto full_tag, int mt, int n_valid) {
    constexpr bool kFull = decltype(full_tag)::value;
    if constexpr (kBias == kBiasRun64 && kWF) {
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const float4 w4 = width_f4(8 * mt + q);
        const int hf = q >> 2, nt = 2 * (q & 3);
        float* x = &s[mt][nt * 4 + 2 * hf];
        x[0] = fmaf(x[0], scale, w4.x);
        x[1] = fmaf(x[1], scale, w4.y);
        x[4] = fmaf(x[4], scale, w4.z);
        x[5] = fmaf(x[5], scale, w4.w);
      }
    } else if constexpr (kBias == kBiasRun64) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const uint4 w4 = sW[(4 * mt + q) * kThreads + tid];
        const uint32_t w[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int e1 = 0; e1 < 2; ++e1) {
            float& x = s[mt][(4 * (q & 1) + i) * 4 + 2 * (q >> 1) + e1];
            x = fmaf(x, scale, Num<T>::to_float(static_cast<uint16_t>(e1 ? (w[i] >> 16) : (w[i] & 0xffffu))));
          }
        }
      }
    }
    if constexpr (!kFull) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = nt * 8 + 2 * tq + (e & 1);
          if (col >= n_valid) s[mt][nt * 4 + e] = -INFINITY;
        }
      }
    }
  };
  // the maximum of row half hf of block mt's tile (the four threads of a row agree)
  auto tile_row_max = [&](int mt, int hf) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt * 4 + 2 * hf], s[mt][nt * 4 + 2 * hf + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    return fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  };
  // S -> P = 2^(S mult + off) on row half hf of block mt; returns this thread's part of the row sum
  auto exp_row = [&](int mt, int hf, float off) {
    float rs = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e1 = 0; e1 < 2; ++e1) {
        float& x = s[mt][nt * 4 + 2 * hf + e1];
        x = ex2(fmaf(x, mult, off));
        rs += x;
      }
    }
    return rs;
  };
  // online softmax (base 2) of block mt; the height term enters through the row max. S becomes P,
  // alpha the factor the output must be scaled by before this tile's P V.
  auto softmax = [&](int mt, const float (&hvm)[2], float (&alpha)[2]) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float m_tile = tile_row_max(mt, hf) + hvm[hf];  // -inf stays -inf
      const float m_new = fmaxf(row_m[mt][hf], m_tile);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float off = (hvm[hf] - m_use) * mult;
      alpha[hf] = ex2((row_m[mt][hf] - m_use) * mult);
      row_m[mt][hf] = m_new;
      row_l[mt][hf] = row_l[mt][hf] * alpha[hf] + exp_row(mt, hf, off);
    }
  };
  // fixed-offset softmax (base 2) of block mt: every step subtracts the offset of step 0 (kFirst: its row
  // max, computed here and kept in row_m) instead of a running max, so a logit costs one FMA and an exp2
  // and the output is never rescaled; the row sums come from the tensor cores (P x ones, issue_pv). Exact
  // while every row's sum stays below 2^64 (checked after the loop; a second pass with the running max
  // serves the CTAs whose rows do not).
  auto softmax_fixed = [&](auto first_tag, int mt, const float (&hvm)[2]) {
    constexpr bool kFirst = decltype(first_tag)::value;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      if constexpr (kFirst) {
        const float m_tile = tile_row_max(mt, hf) + hvm[hf];
        row_m[mt][hf] = m_tile == -INFINITY ? 0.f : m_tile;  // a row without keys in step 0 takes offset 0
      }
      exp_row(mt, hf, (hvm[hf] - row_m[mt][hf]) * mult);  // (the sums come from the tensor cores)
    }
  };
  // P of block mt (in s) packed as the register A operand of O += P V (16 keys per k-step)
  auto pack_p = [&](int mt, uint32_t (&a)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      a[kk][0] = Num<T>::pack(s[mt][(2 * kk) * 4 + 0], s[mt][(2 * kk) * 4 + 1]);
      a[kk][1] = Num<T>::pack(s[mt][(2 * kk) * 4 + 2], s[mt][(2 * kk) * 4 + 3]);
      a[kk][2] = Num<T>::pack(s[mt][(2 * kk + 1) * 4 + 0], s[mt][(2 * kk + 1) * 4 + 1]);
      a[kk][3] = Num<T>::pack(s[mt][(2 * kk + 1) * 4 + 2], s[mt][(2 * kk + 1) * 4 + 3]);
    }
  };
  // output of block mt times alpha; alpha is exactly 1 while a row's max holds, so a warp skips the
  // multiplies when none of its rows moved (not on m128w4 tiles with the bias: the branch costs spills there)
  auto rescale = [&](int mt, const float (&alpha)[2]) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      if (!kMaySkipRescale || __any_sync(0xffffffffu, alpha[hf] != 1.f)) {
#pragma unroll
        for (int dt = 0; dt < DT0; ++dt) {
          acc0[mt][dt * 4 + 2 * hf] *= alpha[hf];
          acc0[mt][dt * 4 + 2 * hf + 1] *= alpha[hf];
        }
        if constexpr (kP1) {
#pragma unroll
          for (int dt = 0; dt < 2; ++dt) {
            acc1[mt][dt * 4 + 2 * hf] *= alpha[hf];
            acc1[mt][dt * 4 + 2 * hf + 1] *= alpha[hf];
          }
        }
      }
    }
  };
  auto fence_out = [&](int mt) {
    fence_regs(acc0[mt]);
    if constexpr (kP1) fence_regs(acc1[mt]);
    if constexpr (kFixed) fence_regs(accl[mt]);  // written by P x ones in the fixed-offset kernel only
  };
  // ---------------------------------------------------------------- main loop
  if constexpr (kMT == 1) {
    // One 64-row block per warpgroup: step t issues S_t = Q K_t^T and then O += P_{t-1} V_{t-1}, and runs
    // the softmax of S_t while the second product is in flight (its output factor is applied after it).
    // K_{t+1} and V_{t+1} are loaded during step t into the stages steps t - 1 and t - 2 used: K has two
    // stages, V three. One barrier per step.
    uint32_t a_prev[4][4];
    using FixedTag = std::bool_constant<kFixed>;  // issue_pv adds P x ones in the fixed-offset kernel
    int vst = 0;                                  // t % kVStages
    // one step; the first (kFirst) has no P V to overlap. Separate instantiations keep the wgmma
    // pipeline free of branches (ptxas serializes the products of a stage it cannot follow, C7514).
    auto step = [&](auto first_tag, int t) {
      constexpr bool kFirst = decltype(first_tag)::value;
      const int vst_prev = vst == 0 ? kVStages - 1 : vst - 1;
      const int vst_next = vst == kVStages - 1 ? 0 : vst + 1;
      int n_valid;
      const int t0 = tile_keys(j_cur, sub_cur, &n_valid);
      float hv[kMT][2];
      height_terms(t0, hv);
      cp_async_wait<0>();
      fence_async_smem();
      __syncthreads();  // tile t (and Q) in shared memory; every warp is done with step t - 1
      fence_regs(s[0]);
      fence_out(0);
      wg_fence();
      issue_qk(0, t & 1);
      if constexpr (!kFirst) issue_pv(FixedTag{}, 0, a_prev, vst_prev);
      // the next tile's copies are issued while the products run
      if (t + 1 < n_steps) load_kv((t + 1) & 1, vst_next, j_next, sub_next);
      cp_async_commit();
      const int j_next2 = (t + 2 < n_steps) ? block_at(blk2) : 0;  // used by step t + 1's copies
      wg_wait<kFirst ? 0 : 1>();
      fence_regs(s[0]);
      if (n_valid == kBlockN) {
        bias_and_mask(std::true_type{}, 0, n_valid);
      } else {
        bias_and_mask(std::false_type{}, 0, n_valid);
      }
      float alpha[2];  // (running max only)
      if constexpr (kFixed) {
        softmax_fixed(first_tag, 0, hv[0]);
      } else {
        softmax(0, hv[0], alpha);
      }
      if constexpr (!kFirst) {
        wg_wait<0>();
        fence_out(0);
      }
      if constexpr (!kFixed) rescale(0, alpha);
      pack_p(0, a_prev);  // a_prev is free once the P V that read it is done

      vst = vst_next;
      advance_keys(j_next2);
    };
    if (n_steps > 0) step(std::true_type{}, 0);
    for (int t = 1; t < n_steps; ++t) step(std::false_type{}, t);
    if (n_steps > 0) {  // the last tile's P V
      const int vst_prev = vst == 0 ? kVStages - 1 : vst - 1;
      fence_out(0);
      wg_fence();
      issue_pv(FixedTag{}, 0, a_prev, vst_prev);
      wg_wait<0>();
      fence_out(0);
    }
  } else {
    // Two 64-row blocks per warpgroup, one wgmma group per block, pipelined inside the step: block 1's
    // Q K^T runs while block 0 does its softmax, and block 0's P V while block 1 does its own (groups
    // complete in issue order). K and V share their stage index; one barrier per step: the next tile's
    // copies are issued after it, while the step's first products run, into the stage step t - 1 read
    // (every warp waited for step t - 1's products before the barrier). The fixed-offset kernel's first
    // step (kFirst: its row maxima become the offsets) is a separate instantiation.
    using FixedTag = std::bool_constant<kFixed>;  // issue_pv adds P x ones in the fixed-offset kernel
    auto step = [&](auto first_tag, int t) {
      const int j_next2 = (t + 2 < n_steps) ? block_at(blk2) : 0;
      int n_valid;
      const int t0 = tile_keys(j_cur, sub_cur, &n_valid);
      float hv[kMT][2];
      height_terms(t0, hv);
      cp_async_wait<0>();
      fence_async_smem();
      __syncthreads();  // tile t (and Q) in shared memory, visible to wgmma; step t - 1's stage is free

#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) fence_regs(s[mt]);
      wg_fence();
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) issue_qk(mt, t & 1);
      if (t + 1 < n_steps) load_kv((t + 1) & 1, (t + 1) & 1, j_next, sub_next);
      cp_async_commit();

#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        // block mt's product is done once at most the later blocks' products (block 0) or the previous
        // block's P V (block 1) are pending
        if (mt == 0) {
          wg_wait<kMT - 1>();
        } else {
          wg_wait<1>();
        }
        fence_regs(s[mt]);
        if (n_valid == kBlockN) {
          bias_and_mask(std::true_type{}, mt, n_valid);
        } else {
          bias_and_mask(std::false_type{}, mt, n_valid);
        }
        uint32_t a[4][4];
        if constexpr (kFixed) {
          softmax_fixed(first_tag, mt, hv[mt]);
          pack_p(mt, a);
        } else {
          float alpha[2];
          softmax(mt, hv[mt], alpha);
          pack_p(mt, a);
          rescale(mt, alpha);
        }
        fence_out(mt);
        wg_fence();
        issue_pv(FixedTag{}, mt, a, t & 1);
      }
      wg_wait<0>();  // (the next step's copies overwrite this step's stage after its barrier)
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) fence_out(mt);
      advance_keys(j_next2);
    };
    if constexpr (kFixed) {
      if (n_steps > 0) step(std::true_type{}, 0);
      for (int t = 1; t < n_steps; ++t) step(std::false_type{}, t);
    } else {
      for (int t = 0; t < n_steps; ++t) step(std::false_type{}, t);
    }
  }
  if constexpr (kFixed) {
    // accl holds each row's sum of P in all four threads of the row (finish_row adds the four: a
    // quarter each, exact). A row whose sum reached 2^64 (a logit ~44 nats above step 0's maximum)
    // may have overflowed: the CTA leaves its tile to the second launch (running max).
    bool redo = p.softmax_mode == kSoftmaxFixedRedo;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        row_l[mt][hf] = accl[mt][2 * hf] * 0.25f;
        if (qtok[mt][hf] >= 0 && !(accl[mt][2 * hf] < 0x1p64f)) redo = true;
      }
    }
    redo = __syncthreads_or(redo);
    if (tid == 0) p.redo_flags[blockIdx.x] = redo ? 1 : 0;
    if (redo) return;
  }

  // ---------------------------------------------------------------- epilogue (as fwd_kernel.cuh)
  cp_async_wait<0>();
  __syncthreads();
  uint16_t* sO = reinterpret_cast<uint16_t*>(smem + S::kK0);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = row_a[mt] + 8 * hf;
      const float inv = finish_row(p, site, row_l[mt][hf], row_m[mt][hf], mult, qtok[mt][hf], tq);
#pragma unroll
      for (int dt = 0; dt < DT0; ++dt) {
        *reinterpret_cast<uint32_t*>(sO + row * S::kOStride + dt * 8 + 2 * tq) =
            Num<T>::pack(acc0[mt][dt * 4 + 2 * hf] * inv, acc0[mt][dt * 4 + 2 * hf + 1] * inv);
      }
      if constexpr (kP1) {
#pragma unroll
        for (int dt = 0; dt < 2; ++dt) {
          *reinterpret_cast<uint32_t*>(sO + row * S::kOStride + 64 + dt * 8 + 2 * tq) =
              Num<T>::pack(acc1[mt][dt * 4 + 2 * hf] * inv, acc1[mt][dt * 4 + 2 * hf + 1] * inv);
        }
      }
    }
  }
  __syncthreads();
  store_out<T, kBlockM, kThreads, kChunks>(p, site, sQTok, sO, S::kOStride);
#else
  // compiled without sm_90a features: never return silently wrong results
  __trap();
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ------------------------------------------------------------------------------ host launch
// Is the current device compute capability 9.0 (the only one sm_90a code runs on)? Cached per device.
inline bool device_is_sm90() {
  static int cache[64] = {0};  // 0 unknown, 1 yes, 2 no
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev >= 0 && dev < 64 && cache[dev] != 0) return cache[dev] == 1;
  int major = 0, minor = 0;
  const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess;
  const bool yes = ok && major == 9 && minor == 0;
  if (ok && dev >= 0 && dev < 64) cache[dev] = yes ? 1 : 2;
  return yes;
}

template <typename T, int D, int kBias, int kWG, int kMT>
const char* launch(FwdParams& p, cudaStream_t stream) {
  constexpr int kBlockM = Rows<kWG, kMT>::kBlockM;
  // + the run-64 width terms (see the kernel)
  const int smem = Smem<D, kBlockM>::kBytes +
                   (kBias == kBiasRun64 ? Rows<kWG, kMT>::kThreads * WidthTerms<D, kWG, kMT>::kBytesPerThread : 0);
  tile_queries(p, kBlockM);  // run_fwd_hd tiled for the mma.sync kernel's rows
  p.smem_bytes = smem;
  p.bias_mode = kBias;
  p.block_m = kBlockM;
  p.block_n = kBlockN;
  p.variant = kVariantSm90;
  static int configured_running[64] = {0};
  auto running = attn_fwd_sm90_kernel<T, D, kBias, kWG, kMT, false>;
  const long long ctas = static_cast<long long>(p.num_q_tiles) * p.batch * p.heads;
  if (p.softmax_mode != kSoftmaxRunning && p.redo_flags != nullptr && ctas <= p.redo_capacity) {
    // the fixed-offset pass, then the running max for the CTAs it flagged (the others return at once)
    static int configured_fixed[64] = {0};
    p.softmax_ran = p.softmax_mode;
    const char* err = launch_ctas(attn_fwd_sm90_kernel<T, D, kBias, kWG, kMT, true>, p, Rows<kWG, kMT>::kThreads,
                                  smem, configured_fixed, stream);
    if (err != nullptr) return err;
    return launch_ctas(running, p, Rows<kWG, kMT>::kThreads, smem, configured_running, stream);
  }
  FwdParams q = p;
  q.redo_flags = nullptr;  // every CTA
  p.softmax_ran = kSoftmaxRunning;
  return launch_ctas(running, q, Rows<kWG, kMT>::kThreads, smem, configured_running, stream);
}

}  // namespace sm90

// The Hopper kernel for this call, if it serves it: head dim 64 or 80, sequence layout, no bias or
// run-64 bias. Tile shape (p.wgmma_tile, kWgmma* in fwd_params.h): 64 rows / 4 warps when the mask's
// query blocks have at most 64 tokens (no idle rows); else 128 rows / 8 warps, the fastest measured
// (H200) for every dense call. A nonzero p.wgmma_tile forces one for A/B runs.
template <typename T, int D, int kBias>
const char* launch_shape(FwdParams& p, cudaStream_t stream, int tile) {
  switch (tile) {
    case kWgmmaM64W4: return sm90::launch<T, D, kBias, 1, 1>(p, stream);
    case kWgmmaM128W8: return sm90::launch<T, D, kBias, 2, 1>(p, stream);
    default: return sm90::launch<T, D, kBias, 1, 2>(p, stream);
  }
}

template <typename T, int D>
const char* try_sm90(FwdParams& p, cudaStream_t stream, bool* taken) {
  *taken = false;
  if constexpr (D == 64 || D == 80) {
    static_assert(Cfg<D>::kBlockN == sm90::kBlockN, "the Hopper kernel shares the launcher's 64-key tiles");
    if (p.layout != 0 || !sm90::device_is_sm90()) return nullptr;
    // the copies address a tile's rows with 32-bit offsets from its first token (64 token strides)
    if (p.k_sn >= (int64_t{1} << 25) || p.v_sn >= (int64_t{1} << 25)) return nullptr;
    const bool dense = p.kv_num == nullptr;
    const bool run64 = p.rel_h != nullptr && runs_fit(p, 64, sm90::kBlockN, dense);
    if (p.rel_h != nullptr && !run64) return nullptr;
    const int tile = p.wgmma_tile != 0 ? p.wgmma_tile : (!dense && p.bq <= 64) ? kWgmmaM64W4 : kWgmmaM128W8;
    *taken = true;
    return run64 ? launch_shape<T, D, kBiasRun64>(p, stream, tile) : launch_shape<T, D, kBiasNone>(p, stream, tile);
  }
  return nullptr;
}

}  // namespace fwd
}  // namespace samsparse
