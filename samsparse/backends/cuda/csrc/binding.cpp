// Torch binding of the block-sparse attention forward kernels (op namespace samsparse_cuda).
//
// samsparse_cuda::fwd writes into preallocated `out` / `lse`; the Python side wraps it
// in the samsparse::cuda_attention custom op (which allocates, and has a fake
// implementation for torch.compile). Only light torch headers here: the kernels live
// in their own translation units without torch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

#include "fwd_params.h"

namespace samsparse {
namespace {

thread_local int64_t g_last_bias_mode = -1;
thread_local int64_t g_last_smem = -1;
thread_local int64_t g_last_variant = -1;
thread_local int64_t g_last_softmax = -1;

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

void check_qkv(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.is_cuda(), "samsparse_cuda::fwd: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == q.device(), "samsparse_cuda::fwd: ", name, " is on ", t.device(), " but q on ", q.device());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), "samsparse_cuda::fwd: ", name, " has dtype ", t.scalar_type(),
              " but q has ", q.scalar_type());
  TORCH_CHECK(t.dim() == 4, "samsparse_cuda::fwd: ", name, " must be 4-D [B, H, N, D], got ", t.dim(), "-D");
  TORCH_CHECK(t.stride(3) == 1, "samsparse_cuda::fwd: ", name, " must have a contiguous last dim");
  TORCH_CHECK(aligned16(t), "samsparse_cuda::fwd: ", name, " must be 16-byte aligned");
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(t.stride(i) % 8 == 0 || t.size(i) == 1, "samsparse_cuda::fwd: ", name, " stride(", i, ")=", t.stride(i),
                " is not a multiple of 8 elements");
  }
}

int64_t bstride(const at::Tensor& t, int dim) { return t.size(dim) == 1 ? 0 : t.stride(dim); }

int to_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), "samsparse_cuda::fwd: ", what, "=", v, " out of range");
  return static_cast<int>(v);
}

void fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
         const std::optional<at::Tensor>& kv_num, const std::optional<at::Tensor>& kv_idx,
         const std::optional<at::Tensor>& rel_h, const std::optional<at::Tensor>& rel_w,
         const std::optional<at::Tensor>& cu_q, const std::optional<at::Tensor>& cu_k, double scale,
         c10::IntArrayRef geom) {
  TORCH_CHECK(q.is_cuda(), "samsparse_cuda::fwd: q must be a CUDA tensor");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, "samsparse_cuda::fwd: dtype must be float16 or bfloat16, got ",
              dtype);
  check_qkv(q, "q", q);
  check_qkv(k, "k", q);
  check_qkv(v, "v", q);
  check_qkv(out, "out", q);
  TORCH_CHECK(geom.size() >= 13 && geom.size() <= 16, "samsparse_cuda::fwd: geom must have 13 to 16 ints, got ",
              geom.size());
  const int64_t D = q.size(3);
  TORCH_CHECK(D % 8 == 0 && D > 0 && D <= 256 && kernel_head_dim(static_cast<int>(D)) > 0,
              "samsparse_cuda::fwd: head dim ", D, " unsupported (multiple of 8, at most 256)");
  TORCH_CHECK(k.size(3) == D && v.size(3) == D, "samsparse_cuda::fwd: q, k, v head dims differ");
  TORCH_CHECK(k.sizes() == v.sizes(), "samsparse_cuda::fwd: k and v shapes differ");
  TORCH_CHECK(out.sizes() == q.sizes(), "samsparse_cuda::fwd: out must have q's shape");
  const int64_t H = q.size(1), Hkv = k.size(1);
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "samsparse_cuda::fwd: q heads ", H, " not a multiple of k/v heads ", Hkv);
  TORCH_CHECK(scale > 0, "samsparse_cuda::fwd: scale must be positive, got ", scale);
  TORCH_CHECK(lse.is_cuda() && lse.device() == q.device() && lse.scalar_type() == at::kFloat && lse.dim() == 3,
              "samsparse_cuda::fwd: lse must be a float32 CUDA tensor [B, H, Nq]");

  FwdParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.o = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.q_sb = bstride(q, 0), p.q_sh = q.stride(1), p.q_sn = q.stride(2);
  p.k_sb = bstride(k, 0), p.k_sh = k.stride(1), p.k_sn = k.stride(2);
  p.v_sb = bstride(v, 0), p.v_sh = v.stride(1), p.v_sn = v.stride(2);
  p.o_sb = bstride(out, 0), p.o_sh = out.stride(1), p.o_sn = out.stride(2);
  p.l_sb = bstride(lse, 0), p.l_sh = lse.stride(1), p.l_sn = lse.stride(2);

  const bool varlen = cu_q.has_value();
  TORCH_CHECK(varlen == cu_k.has_value(), "samsparse_cuda::fwd: give both cu_q and cu_k, or neither");
  if (varlen) {
    for (const at::Tensor* t : {&*cu_q, &*cu_k}) {
      TORCH_CHECK(t->is_cuda() && t->device() == q.device() && t->scalar_type() == at::kInt && t->dim() == 1 &&
                      t->is_contiguous(),
                  "samsparse_cuda::fwd: cu_seqlens must be contiguous int32 CUDA vectors");
    }
    TORCH_CHECK(cu_q->size(0) == geom[10] + 1 && cu_k->size(0) == geom[10] + 1,
                "samsparse_cuda::fwd: cu_seqlens must have batch + 1 entries");
    p.cu_q = cu_q->data_ptr<int32_t>();
    p.cu_k = cu_k->data_ptr<int32_t>();
    TORCH_CHECK(q.size(0) == 1 && k.size(0) == 1, "samsparse_cuda::fwd: varlen q/k/v must be viewed as [1, H, total, D]");
    p.batch = to_int(geom[10], "batch");
    p.nq = to_int(geom[11], "max_seqlen_q");
    p.nk = to_int(geom[12], "max_seqlen_k");
    p.q_sb = p.k_sb = p.v_sb = p.o_sb = p.l_sb = 0;
  } else {
    TORCH_CHECK(k.size(0) == q.size(0), "samsparse_cuda::fwd: batch sizes differ");
    TORCH_CHECK(lse.size(0) == q.size(0) && lse.size(1) == H && lse.size(2) == q.size(2),
                "samsparse_cuda::fwd: lse must be [B, H, Nq]");
    p.batch = to_int(q.size(0), "batch");
    p.nq = to_int(q.size(2), "Nq");
    p.nk = to_int(k.size(2), "Nk");
  }
  p.heads = to_int(H, "heads");
  p.kv_group = to_int(H / Hkv, "kv group");
  p.head_dim = static_cast<int>(D);
  p.scale = static_cast<float>(scale);

  p.layout = to_int(geom[0], "layout");
  TORCH_CHECK(p.layout == 0 || p.layout == 1, "samsparse_cuda::fwd: layout must be 0 (sequence) or 1 (tiles)");
  p.bq = to_int(geom[1], "block_q");
  p.bk = to_int(geom[2], "block_k");
  p.num_q_blocks = to_int(geom[3], "num_q_blocks");
  p.tgh = to_int(geom[4], "tile grid h");
  p.tgw = to_int(geom[5], "tile grid w");
  p.th = to_int(geom[6], "tile h");
  p.tw = to_int(geom[7], "tile w");
  p.rgh = to_int(geom[8], "rel grid h");
  p.rgw = to_int(geom[9], "rel grid w");
  p.variant = geom.size() > 13 ? to_int(geom[13], "kernel variant") : 0;
  p.wgmma_tile = geom.size() > 14 ? to_int(geom[14], "wgmma tile") : 0;
  TORCH_CHECK(p.wgmma_tile >= 0 && p.wgmma_tile <= kWgmmaM128W4, "samsparse_cuda::fwd: wgmma tile must be 0 to ",
              static_cast<int>(kWgmmaM128W4), ", got ", p.wgmma_tile);
  p.softmax_mode = geom.size() > 15 ? to_int(geom[15], "softmax mode") : static_cast<int>(kSoftmaxFixed);
  TORCH_CHECK(p.softmax_mode >= kSoftmaxRunning && p.softmax_mode <= kSoftmaxFixedRedo,
              "samsparse_cuda::fwd: softmax mode must be 0 to ", static_cast<int>(kSoftmaxFixedRedo), ", got ",
              p.softmax_mode);

  TORCH_CHECK(kv_num.has_value() == kv_idx.has_value(), "samsparse_cuda::fwd: give both kv_num and kv_idx, or neither");
  if (kv_num.has_value()) {
    const at::Tensor& n = *kv_num;
    const at::Tensor& ix = *kv_idx;
    TORCH_CHECK(n.is_cuda() && ix.is_cuda() && n.device() == q.device() && ix.device() == q.device(),
                "samsparse_cuda::fwd: mask indices must be on q's device");
    TORCH_CHECK(n.scalar_type() == at::kInt && ix.scalar_type() == at::kInt, "samsparse_cuda::fwd: mask indices must be int32");
    TORCH_CHECK(n.dim() == 3 && ix.dim() == 4, "samsparse_cuda::fwd: kv_num must be [B', H', Mq], kv_idx [B', H', Mq, Mk]");
    TORCH_CHECK(n.size(0) == 1 || n.size(0) == p.batch, "samsparse_cuda::fwd: kv_num batch dim must be 1 or B");
    TORCH_CHECK(n.size(1) == 1 || n.size(1) == H, "samsparse_cuda::fwd: kv_num head dim must be 1 or H");
    TORCH_CHECK(ix.size(0) == n.size(0) && ix.size(1) == n.size(1) && ix.size(2) == n.size(2),
                "samsparse_cuda::fwd: kv_idx and kv_num disagree in [B', H', Mq]");
    TORCH_CHECK(n.size(2) >= p.num_q_blocks, "samsparse_cuda::fwd: kv_num has fewer query blocks than the call needs");
    TORCH_CHECK(p.bq > 0 && p.bk > 0, "samsparse_cuda::fwd: mask block sizes must be positive");
    p.kv_num = n.data_ptr<int32_t>();
    p.kv_idx = ix.data_ptr<int32_t>();
    p.kn_sb = bstride(n, 0), p.kn_sh = bstride(n, 1), p.kn_sm = n.stride(2);
    p.ki_sb = bstride(ix, 0), p.ki_sh = bstride(ix, 1), p.ki_sm = ix.stride(2), p.ki_sk = ix.stride(3);
  } else {
    p.layout = 0;
  }
  if (p.layout == 1) {
    TORCH_CHECK(!varlen, "samsparse_cuda::fwd: the tiles layout is not supported with varlen");
    TORCH_CHECK(static_cast<int64_t>(p.tgh) * p.tgw == q.size(2) && q.size(2) == k.size(2),
                "samsparse_cuda::fwd: tiles layout grid does not match Nq/Nk");
    TORCH_CHECK(p.th > 0 && p.tw > 0 && static_cast<int64_t>(p.th) * p.tw == p.bq && p.bq == p.bk,
                "samsparse_cuda::fwd: tile shape must match the block size");
  }

  TORCH_CHECK(rel_h.has_value() == rel_w.has_value(), "samsparse_cuda::fwd: give both rel_h and rel_w, or neither");
  if (rel_h.has_value()) {
    TORCH_CHECK(!varlen, "samsparse_cuda::fwd: rel-pos is not supported with varlen");
    const at::Tensor& a = *rel_h;
    const at::Tensor& c = *rel_w;
    TORCH_CHECK(a.is_cuda() && c.is_cuda() && a.device() == q.device() && c.device() == q.device(),
                "samsparse_cuda::fwd: rel-pos terms must be on q's device");
    TORCH_CHECK(a.scalar_type() == dtype && c.scalar_type() == dtype, "samsparse_cuda::fwd: rel-pos terms must have q's dtype");
    TORCH_CHECK(a.dim() == 4 && c.dim() == 4 && a.size(0) == q.size(0) && c.size(0) == q.size(0) && a.size(1) == H &&
                    c.size(1) == H && a.size(2) == q.size(2) && c.size(2) == q.size(2),
                "samsparse_cuda::fwd: rel_h / rel_w must be [B, H, Nq, *]");
    TORCH_CHECK(a.size(3) == p.rgh && c.size(3) == p.rgw && static_cast<int64_t>(p.rgh) * p.rgw == k.size(2),
                "samsparse_cuda::fwd: rel-pos key grid does not match the terms / Nk");
    p.rel_h = a.data_ptr();
    p.rel_w = c.data_ptr();
    p.rh_sb = bstride(a, 0), p.rh_sh = bstride(a, 1), p.rh_sq = a.stride(2), p.rh_sr = a.stride(3);
    p.rw_sb = bstride(c, 0), p.rw_sh = bstride(c, 1), p.rw_sq = c.stride(2), p.rw_sc = c.stride(3);
  }

  if (p.nq == 0 || p.batch == 0 || H == 0) return;
  c10::cuda::CUDAGuard guard(q.device());
  // The Hopper kernel's fixed-offset softmax: one flag per CTA (at most one CTA per 64 query rows of
  // each sequence or mask block); the caching allocator keeps it alive for the stream's launches.
  at::Tensor redo_flags;
  const int khd = kernel_head_dim(p.head_dim);
  if (p.variant == kVariantSm90 && p.softmax_mode != kSoftmaxRunning && p.layout == 0 && (khd == 64 || khd == 80)) {
    const int64_t blocks = p.kv_num != nullptr ? static_cast<int64_t>(p.num_q_blocks) * ((p.bq + 63) / 64) : 0;
    const int64_t tiles = std::max<int64_t>((p.nq + 63) / 64, blocks);
    redo_flags = at::empty({static_cast<int64_t>(p.batch) * p.heads * tiles}, q.options().dtype(at::kInt));
    p.redo_flags = redo_flags.data_ptr<int>();
    p.redo_capacity = redo_flags.numel();
  }
  void* stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
  const char* err = run_fwd(p, dtype == at::kBFloat16, stream);
  g_last_bias_mode = p.bias_mode;
  g_last_smem = p.smem_bytes;
  g_last_variant = p.variant;
  g_last_softmax = p.variant == kVariantSm90 ? p.softmax_ran : -1;
  TORCH_CHECK(err == nullptr, "samsparse cuda attention kernel: ", err);
}

void wgmma_selftest_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& s, at::Tensor& o) {
  TORCH_CHECK(q.is_cuda() && q.dim() == 2 && q.size(0) == 64 && (q.size(1) == 64 || q.size(1) == 80) &&
                  q.is_contiguous() && (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16),
              "samsparse_cuda::wgmma_selftest: q must be a contiguous float16/bfloat16 CUDA tensor [64, 64 or 80]");
  for (const at::Tensor* t : {&k, &v}) {
    TORCH_CHECK(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() && t->device() == q.device() &&
                    t->is_contiguous(),
                "samsparse_cuda::wgmma_selftest: k and v must be like q");
  }
  TORCH_CHECK(s.device() == q.device() && s.scalar_type() == at::kFloat && s.is_contiguous() && s.dim() == 2 &&
                  s.size(0) == 64 && s.size(1) == 64,
              "samsparse_cuda::wgmma_selftest: s must be a contiguous float32 CUDA tensor [64, 64]");
  TORCH_CHECK(o.device() == q.device() && o.scalar_type() == at::kFloat && o.is_contiguous() && o.sizes() == q.sizes(),
              "samsparse_cuda::wgmma_selftest: o must be a contiguous float32 CUDA tensor like q");
  c10::cuda::CUDAGuard guard(q.device());
  void* stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
  const char* err = wgmma_selftest(q.data_ptr(), k.data_ptr(), v.data_ptr(), s.data_ptr<float>(), o.data_ptr<float>(),
                                   static_cast<int>(q.size(1)), q.scalar_type() == at::kBFloat16, stream);
  TORCH_CHECK(err == nullptr, "samsparse_cuda::wgmma_selftest: ", err);
}

int64_t smem_bytes(int64_t head_dim, int64_t bias_mode, int64_t rgh, int64_t rgw) {
  return fwd_smem_bytes(static_cast<int>(head_dim), static_cast<int>(bias_mode), static_cast<int>(rgh),
                        static_cast<int>(rgw));
}

int64_t compiled_head_dim(int64_t head_dim) { return kernel_head_dim(static_cast<int>(head_dim)); }

std::vector<int64_t> last_launch() { return {g_last_bias_mode, g_last_smem, g_last_variant, g_last_softmax}; }

}  // namespace
}  // namespace samsparse

TORCH_LIBRARY(samsparse_cuda, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse, Tensor? kv_num, Tensor? kv_idx, "
      "Tensor? rel_h, Tensor? rel_w, Tensor? cu_q, Tensor? cu_k, float scale, int[] geom) -> ()");
  m.def("smem_bytes(int head_dim, int bias_mode, int rgh, int rgw) -> int", &samsparse::smem_bytes);
  m.def("kernel_head_dim(int head_dim) -> int", &samsparse::compiled_head_dim);
  m.def("last_launch() -> int[]", &samsparse::last_launch);
  m.def("wgmma_selftest(Tensor q, Tensor k, Tensor v, Tensor(a!) s, Tensor(b!) o) -> ()");
}

TORCH_LIBRARY_IMPL(samsparse_cuda, CUDA, m) {
  m.impl("fwd", &samsparse::fwd);
  m.impl("wgmma_selftest", &samsparse::wgmma_selftest_op);
}
