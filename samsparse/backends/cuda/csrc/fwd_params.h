// Plain-C++ description of one forward attention launch (no CUDA or torch headers),
// shared by the kernel translation units (*.cu) and the torch binding (binding.cpp).
#pragma once

#include <cstdint>

namespace samsparse {

// Bias modes the launcher picks (FwdParams::bias_mode is an output of run_fwd).
enum BiasMode : int {
  kBiasNone = 0,     // no rel-pos bias
  kBiasGeneric = 1,  // per key column (row, col) from a shared-memory table
  kBiasRun16 = 16,   // key tile = runs of 16 consecutive key-grid columns
  kBiasRun32 = 32,   // ... of 32
  kBiasRun64 = 64,   // ... of 64 (SAM global attention: one key-grid row per tile)
};

enum KernelVariant : int {
  kVariantMmaSync = 0,  // fwd_kernel.cuh: mma.sync (sm_80+)
  kVariantSm90 = 1,     // fwd_sm90.cuh: wgmma (sm_90a)
};

// Tile shapes of the Hopper kernel: query rows per CTA / warps.
enum WgmmaTile : int {
  kWgmmaM64W4 = 1,   // one warpgroup, one 64-row block
  kWgmmaM128W8 = 2,  // two warpgroups of 64 rows
  kWgmmaM128W4 = 3,  // one warpgroup, two 64-row blocks
};

// Softmax of the Hopper kernel (every tile).
enum SoftmaxMode : int {
  kSoftmaxRunning = 0,    // running max, rescaled output (the mma.sync kernel's softmax)
  kSoftmaxFixed = 1,      // step 0's row max as a fixed offset; CTAs with a row sum >= 2^64 run again (running)
  kSoftmaxFixedRedo = 2,  // the same, every CTA running again (tests of the second pass)
};

struct FwdParams {
  // Tensors. q [B, H, Nq, D], k/v [B, Hkv, Nk, D], out like q: element strides for
  // batch, head and token (the head-dim stride is 1, pointers and strides 16-byte aligned).
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;  // [B, H, Nq] float32 natural-log LSE
  int64_t q_sb = 0, q_sh = 0, q_sn = 0;
  int64_t k_sb = 0, k_sh = 0, k_sn = 0;
  int64_t v_sb = 0, v_sh = 0, v_sn = 0;
  int64_t o_sb = 0, o_sh = 0, o_sn = 0;
  int64_t l_sb = 0, l_sh = 0, l_sn = 0;

  // Block mask in FlexAttention's index form; kv_num == nullptr means dense.
  // kv_num [B', H', Mq], kv_idx [B', H', Mq, Mk]; strides are 0 on broadcast dims.
  const int32_t* kv_num = nullptr;
  const int32_t* kv_idx = nullptr;
  int64_t kn_sb = 0, kn_sh = 0, kn_sm = 0;
  int64_t ki_sb = 0, ki_sh = 0, ki_sm = 0, ki_sk = 0;

  // SAM's decomposed rel-pos terms (q's dtype), nullptr for none:
  // rel_h [B, H, Nq, rgh], rel_w [B, H, Nq, rgw]; any strides.
  const void* rel_h = nullptr;
  const void* rel_w = nullptr;
  int64_t rh_sb = 0, rh_sh = 0, rh_sq = 0, rh_sr = 0;
  int64_t rw_sb = 0, rw_sh = 0, rw_sq = 0, rw_sc = 0;

  // Packed variable-length batches: cumulative starts [batch + 1] (int32) or nullptr.
  const int32_t* cu_q = nullptr;
  const int32_t* cu_k = nullptr;

  int batch = 0, heads = 0, kv_group = 1;  // kv_group = H / Hkv
  int nq = 0, nk = 0;                      // tokens (max over the batch when varlen)
  int head_dim = 0;                        // the real head dim (multiple of 8)
  float scale = 0.f;                       // softmax scale (> 0)

  int layout = 0;                          // 0 sequence, 1 tiles
  int bq = 0, bk = 0;                      // mask block size in tokens
  int num_q_blocks = 0;                    // Mq of the mask (ignored when dense)
  int tgh = 0, tgw = 0, th = 0, tw = 0;    // tiles layout: token grid and tile
  int rgh = 0, rgw = 0;                    // rel-pos key grid (rgh * rgw == nk)

  // Kernel variant: in, the one asked for (kVariantSm90: the Hopper kernel where it serves the
  // call; only on sm_90 devices with an sm_90a build); out, the one that ran.
  int variant = 0;
  int wgmma_tile = 0;  // Hopper kernel's tile shape: 0 its rule, else a WgmmaTile (forced)
  int softmax_mode = kSoftmaxFixed;  // Hopper kernel's softmax (SoftmaxMode)
  // Scratch of the fixed-offset softmax: one int per CTA (which CTAs the second launch computes), at
  // least redo_capacity of them; nullptr: the running max only.
  int* redo_flags = nullptr;
  long long redo_capacity = 0;

  // Filled in by the launcher (outputs, for diagnostics).
  int bias_mode = 0;
  int split_m = 1, sub_n = 1, ntw = 1, num_q_tiles = 0;
  int block_m = 0, block_n = 0;
  int smem_bytes = 0;
  int softmax_ran = kSoftmaxRunning;  // SoftmaxMode of the Hopper kernel's launch
};

// Head dim the kernels are compiled for that serves `head_dim` (0: none).
int kernel_head_dim(int head_dim);

// Shared memory (bytes) one CTA needs; bias_mode as in BiasMode (rgh/rgw ignored without bias).
int fwd_smem_bytes(int head_dim, int bias_mode, int rgh, int rgw);

// Runs the forward kernel on `stream` (a cudaStream_t). Returns nullptr on success,
// else a static, human-readable error message. Never synchronises the host.
const char* run_fwd(FwdParams& p, bool bf16, void* stream);

// One 64-row tile through the Hopper kernel's layouts and wgmma wrappers (wgmma_selftest.cu):
// q, k, v [64, head_dim] contiguous (head_dim 64 or 80), s [64, 64] = q k^T and o [64, head_dim] =
// round(s) v, both float32. nullptr on success, else a static message.
const char* wgmma_selftest(const void* q, const void* k, const void* v, float* s, float* o, int head_dim, bool bf16,
                           void* stream);

}  // namespace samsparse
