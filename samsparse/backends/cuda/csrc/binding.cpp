// Torch binding of the block-sparse attention forward kernels (op namespace samsparse_cuda).
//
// samsparse_cuda::fwd writes into preallocated `out` / `lse`; the Python side wraps it
// in the samsparse::cuda_attention custom op (which allocates, and has a fake
// implementation for torch.compile). Only light torch headers here: the kernels live
// in their own translation units without torch.
//
// The ops never throw: a refused call returns its reason as a string (empty: done), which the
// Python side raises as RuntimeError. The reasons are built without ostreams: on the H200 machine
// (torch 2.11, g++ 13.3) any number streamed through an ostream inside an extension killed the
// process (c10::str, TORCH_CHECK with a number; scripts/probe_cxx_strings.py shows it).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "fwd_params.h"

namespace samsparse {
namespace {

// A refusal's reason, built with std::string and std::to_string only (no ostream: see the top of the file).
inline void append_to(std::string& s, const char* v) { s += v; }
inline void append_to(std::string& s, const std::string& v) { s += v; }
inline void append_to(std::string& s, double v) { s += std::to_string(v); }
inline void append_to(std::string& s, at::ScalarType v) { s += c10::toString(v); }
inline void append_to(std::string& s, const c10::Device& v) {
  if (v.is_cuda()) {
    s += "cuda:" + std::to_string(static_cast<int>(v.index()));
  } else {
    s += v.is_cpu() ? "cpu" : "another device";
  }
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
inline void append_to(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename... Parts>
std::string reason(const Parts&... parts) {
  std::string s;
  (append_to(s, parts), ...);
  return s;
}

// Return the reason (std::string) from the enclosing function unless `cond` holds.
#define REQUIRE_ARG(cond, ...)                 \
  do {                                         \
    if (!(cond)) return reason(__VA_ARGS__);   \
  } while (0)
// dst = v as an int, or return why not.
#define TO_INT_ARG(dst, v, what)                                                                                   \
  do {                                                                                                             \
    const int64_t v_ = (v);                                                                                        \
    REQUIRE_ARG(v_ >= 0 && v_ <= std::numeric_limits<int>::max(), "samsparse_cuda::fwd: ", what, "=", v_,          \
                " out of range");                                                                                  \
    dst = static_cast<int>(v_);                                                                                    \
  } while (0)

thread_local int64_t g_last_bias_mode = -1;
thread_local int64_t g_last_smem = -1;
thread_local int64_t g_last_variant = -1;
thread_local int64_t g_last_softmax = -1;

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

std::string check_qkv(const at::Tensor& t, const char* name, const at::Tensor& q) {
  REQUIRE_ARG(t.is_cuda(), "samsparse_cuda::fwd: ", name, " must be a CUDA tensor");
  REQUIRE_ARG(t.device() == q.device(), "samsparse_cuda::fwd: ", name, " is on ", t.device(), " but q on ", q.device());
  REQUIRE_ARG(t.scalar_type() == q.scalar_type(), "samsparse_cuda::fwd: ", name, " has dtype ", t.scalar_type(),
              " but q has ", q.scalar_type());
  REQUIRE_ARG(t.dim() == 4, "samsparse_cuda::fwd: ", name, " must be 4-D [B, H, N, D], got ", t.dim(), "-D");
  REQUIRE_ARG(t.stride(3) == 1, "samsparse_cuda::fwd: ", name, " must have a contiguous last dim");
  REQUIRE_ARG(aligned16(t), "samsparse_cuda::fwd: ", name, " must be 16-byte aligned");
  for (int i = 0; i < 3; ++i) {
    REQUIRE_ARG(t.stride(i) % 8 == 0 || t.size(i) == 1, "samsparse_cuda::fwd: ", name, " stride(", i, ")=", t.stride(i),
                " is not a multiple of 8 elements");
  }
  return {};
}

int64_t bstride(const at::Tensor& t, int dim) { return t.size(dim) == 1 ? 0 : t.stride(dim); }

std::string fwd_checked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
         const std::optional<at::Tensor>& kv_num, const std::optional<at::Tensor>& kv_idx,
         const std::optional<at::Tensor>& rel_h, const std::optional<at::Tensor>& rel_w,
         const std::optional<at::Tensor>& cu_q, const std::optional<at::Tensor>& cu_k, double scale,
         c10::IntArrayRef geom) {
  REQUIRE_ARG(q.is_cuda(), "samsparse_cuda::fwd: q must be a CUDA tensor");
  const auto dtype = q.scalar_type();
  REQUIRE_ARG(dtype == at::kHalf || dtype == at::kBFloat16, "samsparse_cuda::fwd: dtype must be float16 or bfloat16, got ",
              dtype);
  using Named = std::pair<const at::Tensor*, const char*>;
  for (const auto& [t, name] : {Named{&q, "q"}, Named{&k, "k"}, Named{&v, "v"}, Named{&out, "out"}}) {
    std::string why = check_qkv(*t, name, q);
    if (!why.empty()) return why;
  }
  REQUIRE_ARG(geom.size() >= 13 && geom.size() <= 16, "samsparse_cuda::fwd: geom must have 13 to 16 ints, got ",
              geom.size());
  const int64_t D = q.size(3);
  REQUIRE_ARG(D % 8 == 0 && D > 0 && D <= 256 && kernel_head_dim(static_cast<int>(D)) > 0,
              "samsparse_cuda::fwd: head dim ", D, " unsupported (multiple of 8, at most 256)");
  REQUIRE_ARG(k.size(3) == D && v.size(3) == D, "samsparse_cuda::fwd: q, k, v head dims differ");
  REQUIRE_ARG(k.sizes() == v.sizes(), "samsparse_cuda::fwd: k and v shapes differ");
  REQUIRE_ARG(out.sizes() == q.sizes(), "samsparse_cuda::fwd: out must have q's shape");
  const int64_t H = q.size(1), Hkv = k.size(1);
  REQUIRE_ARG(Hkv > 0 && H % Hkv == 0, "samsparse_cuda::fwd: q heads ", H, " not a multiple of k/v heads ", Hkv);
  REQUIRE_ARG(scale > 0, "samsparse_cuda::fwd: scale must be positive, got ", scale);
  REQUIRE_ARG(lse.is_cuda() && lse.device() == q.device() && lse.scalar_type() == at::kFloat && lse.dim() == 3,
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
  REQUIRE_ARG(varlen == cu_k.has_value(), "samsparse_cuda::fwd: give both cu_q and cu_k, or neither");
  if (varlen) {
    for (const at::Tensor* t : {&*cu_q, &*cu_k}) {
      REQUIRE_ARG(t->is_cuda() && t->device() == q.device() && t->scalar_type() == at::kInt && t->dim() == 1 &&
                      t->is_contiguous(),
                  "samsparse_cuda::fwd: cu_seqlens must be contiguous int32 CUDA vectors");
    }
    REQUIRE_ARG(cu_q->size(0) == geom[10] + 1 && cu_k->size(0) == geom[10] + 1,
                "samsparse_cuda::fwd: cu_seqlens must have batch + 1 entries");
    p.cu_q = cu_q->data_ptr<int32_t>();
    p.cu_k = cu_k->data_ptr<int32_t>();
    REQUIRE_ARG(q.size(0) == 1 && k.size(0) == 1, "samsparse_cuda::fwd: varlen q/k/v must be viewed as [1, H, total, D]");
    TO_INT_ARG(p.batch, geom[10], "batch");
    TO_INT_ARG(p.nq, geom[11], "max_seqlen_q");
    TO_INT_ARG(p.nk, geom[12], "max_seqlen_k");
    p.q_sb = p.k_sb = p.v_sb = p.o_sb = p.l_sb = 0;
  } else {
    REQUIRE_ARG(k.size(0) == q.size(0), "samsparse_cuda::fwd: batch sizes differ");
    REQUIRE_ARG(lse.size(0) == q.size(0) && lse.size(1) == H && lse.size(2) == q.size(2),
                "samsparse_cuda::fwd: lse must be [B, H, Nq]");
    TO_INT_ARG(p.batch, q.size(0), "batch");
    TO_INT_ARG(p.nq, q.size(2), "Nq");
    TO_INT_ARG(p.nk, k.size(2), "Nk");
  }
  TO_INT_ARG(p.heads, H, "heads");
  TO_INT_ARG(p.kv_group, H / Hkv, "kv group");
  p.head_dim = static_cast<int>(D);
  p.scale = static_cast<float>(scale);

  TO_INT_ARG(p.layout, geom[0], "layout");
  REQUIRE_ARG(p.layout == 0 || p.layout == 1, "samsparse_cuda::fwd: layout must be 0 (sequence) or 1 (tiles)");
  TO_INT_ARG(p.bq, geom[1], "block_q");
  TO_INT_ARG(p.bk, geom[2], "block_k");
  TO_INT_ARG(p.num_q_blocks, geom[3], "num_q_blocks");
  TO_INT_ARG(p.tgh, geom[4], "tile grid h");
  TO_INT_ARG(p.tgw, geom[5], "tile grid w");
  TO_INT_ARG(p.th, geom[6], "tile h");
  TO_INT_ARG(p.tw, geom[7], "tile w");
  TO_INT_ARG(p.rgh, geom[8], "rel grid h");
  TO_INT_ARG(p.rgw, geom[9], "rel grid w");
  p.variant = 0;
  p.wgmma_tile = 0;
  if (geom.size() > 13) TO_INT_ARG(p.variant, geom[13], "kernel variant");
  if (geom.size() > 14) TO_INT_ARG(p.wgmma_tile, geom[14], "wgmma tile");
  REQUIRE_ARG(p.wgmma_tile >= 0 && p.wgmma_tile <= kWgmmaM128W4, "samsparse_cuda::fwd: wgmma tile must be 0 to ",
              static_cast<int>(kWgmmaM128W4), ", got ", p.wgmma_tile);
  p.softmax_mode = kSoftmaxFixed;
  if (geom.size() > 15) TO_INT_ARG(p.softmax_mode, geom[15], "softmax mode");
  REQUIRE_ARG(p.softmax_mode >= kSoftmaxRunning && p.softmax_mode <= kSoftmaxFixedRedo,
              "samsparse_cuda::fwd: softmax mode must be 0 to ", static_cast<int>(kSoftmaxFixedRedo), ", got ",
              p.softmax_mode);

  REQUIRE_ARG(kv_num.has_value() == kv_idx.has_value(), "samsparse_cuda::fwd: give both kv_num and kv_idx, or neither");
  if (kv_num.has_value()) {
    const at::Tensor& n = *kv_num;
    const at::Tensor& ix = *kv_idx;
    REQUIRE_ARG(n.is_cuda() && ix.is_cuda() && n.device() == q.device() && ix.device() == q.device(),
                "samsparse_cuda::fwd: mask indices must be on q's device");
    REQUIRE_ARG(n.scalar_type() == at::kInt && ix.scalar_type() == at::kInt, "samsparse_cuda::fwd: mask indices must be int32");
    REQUIRE_ARG(n.dim() == 3 && ix.dim() == 4, "samsparse_cuda::fwd: kv_num must be [B', H', Mq], kv_idx [B', H', Mq, Mk]");
    REQUIRE_ARG(n.size(0) == 1 || n.size(0) == p.batch, "samsparse_cuda::fwd: kv_num batch dim must be 1 or B");
    REQUIRE_ARG(n.size(1) == 1 || n.size(1) == H, "samsparse_cuda::fwd: kv_num head dim must be 1 or H");
    REQUIRE_ARG(ix.size(0) == n.size(0) && ix.size(1) == n.size(1) && ix.size(2) == n.size(2),
                "samsparse_cuda::fwd: kv_idx and kv_num disagree in [B', H', Mq]");
    REQUIRE_ARG(n.size(2) >= p.num_q_blocks, "samsparse_cuda::fwd: kv_num has fewer query blocks than the call needs");
    REQUIRE_ARG(p.bq > 0 && p.bk > 0, "samsparse_cuda::fwd: mask block sizes must be positive");
    p.kv_num = n.data_ptr<int32_t>();
    p.kv_idx = ix.data_ptr<int32_t>();
    p.kn_sb = bstride(n, 0), p.kn_sh = bstride(n, 1), p.kn_sm = n.stride(2);
    p.ki_sb = bstride(ix, 0), p.ki_sh = bstride(ix, 1), p.ki_sm = ix.stride(2), p.ki_sk = ix.stride(3);
  } else {
    p.layout = 0;
  }
  if (p.layout == 1) {
    REQUIRE_ARG(!varlen, "samsparse_cuda::fwd: the tiles layout is not supported with varlen");
    REQUIRE_ARG(static_cast<int64_t>(p.tgh) * p.tgw == q.size(2) && q.size(2) == k.size(2),
                "samsparse_cuda::fwd: tiles layout grid does not match Nq/Nk");
    REQUIRE_ARG(p.th > 0 && p.tw > 0 && static_cast<int64_t>(p.th) * p.tw == p.bq && p.bq == p.bk,
                "samsparse_cuda::fwd: tile shape must match the block size");
  }

  REQUIRE_ARG(rel_h.has_value() == rel_w.has_value(), "samsparse_cuda::fwd: give both rel_h and rel_w, or neither");
  if (rel_h.has_value()) {
    REQUIRE_ARG(!varlen, "samsparse_cuda::fwd: rel-pos is not supported with varlen");
    const at::Tensor& a = *rel_h;
    const at::Tensor& c = *rel_w;
    REQUIRE_ARG(a.is_cuda() && c.is_cuda() && a.device() == q.device() && c.device() == q.device(),
                "samsparse_cuda::fwd: rel-pos terms must be on q's device");
    REQUIRE_ARG(a.scalar_type() == dtype && c.scalar_type() == dtype, "samsparse_cuda::fwd: rel-pos terms must have q's dtype");
    REQUIRE_ARG(a.dim() == 4 && c.dim() == 4 && a.size(0) == q.size(0) && c.size(0) == q.size(0) && a.size(1) == H &&
                    c.size(1) == H && a.size(2) == q.size(2) && c.size(2) == q.size(2),
                "samsparse_cuda::fwd: rel_h / rel_w must be [B, H, Nq, *]");
    REQUIRE_ARG(a.size(3) == p.rgh && c.size(3) == p.rgw && static_cast<int64_t>(p.rgh) * p.rgw == k.size(2),
                "samsparse_cuda::fwd: rel-pos key grid does not match the terms / Nk");
    p.rel_h = a.data_ptr();
    p.rel_w = c.data_ptr();
    p.rh_sb = bstride(a, 0), p.rh_sh = bstride(a, 1), p.rh_sq = a.stride(2), p.rh_sr = a.stride(3);
    p.rw_sb = bstride(c, 0), p.rw_sh = bstride(c, 1), p.rw_sq = c.stride(2), p.rw_sc = c.stride(3);
  }

  if (p.nq == 0 || p.batch == 0 || H == 0) return {};
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
  REQUIRE_ARG(err == nullptr, "samsparse cuda attention kernel: ", err);
  return {};
}

// Anything torch itself throws inside (allocation, ...) comes back as the reason too.
std::string fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                const std::optional<at::Tensor>& kv_num, const std::optional<at::Tensor>& kv_idx,
                const std::optional<at::Tensor>& rel_h, const std::optional<at::Tensor>& rel_w,
                const std::optional<at::Tensor>& cu_q, const std::optional<at::Tensor>& cu_k, double scale,
                c10::IntArrayRef geom) {
  try {
    return fwd_checked(q, k, v, out, lse, kv_num, kv_idx, rel_h, rel_w, cu_q, cu_k, scale, geom);
  } catch (const std::exception& e) {
    return std::string("samsparse_cuda::fwd: ") + e.what();
  }
}

std::string wgmma_selftest_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& s,
                              at::Tensor& o) {
  REQUIRE_ARG(q.is_cuda() && q.dim() == 2 && q.size(0) == 64 && (q.size(1) == 64 || q.size(1) == 80) &&
                  q.is_contiguous() && (q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16),
              "samsparse_cuda::wgmma_selftest: q must be a contiguous float16/bfloat16 CUDA tensor [64, 64 or 80]");
  for (const at::Tensor* t : {&k, &v}) {
    REQUIRE_ARG(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() && t->device() == q.device() &&
                    t->is_contiguous(),
                "samsparse_cuda::wgmma_selftest: k and v must be like q");
  }
  REQUIRE_ARG(s.device() == q.device() && s.scalar_type() == at::kFloat && s.is_contiguous() && s.dim() == 2 &&
                  s.size(0) == 64 && s.size(1) == 64,
              "samsparse_cuda::wgmma_selftest: s must be a contiguous float32 CUDA tensor [64, 64]");
  REQUIRE_ARG(o.device() == q.device() && o.scalar_type() == at::kFloat && o.is_contiguous() && o.sizes() == q.sizes(),
              "samsparse_cuda::wgmma_selftest: o must be a contiguous float32 CUDA tensor like q");
  c10::cuda::CUDAGuard guard(q.device());
  void* stream = c10::cuda::getCurrentCUDAStream(q.device().index()).stream();
  const char* err = wgmma_selftest(q.data_ptr(), k.data_ptr(), v.data_ptr(), s.data_ptr<float>(), o.data_ptr<float>(),
                                   static_cast<int>(q.size(1)), q.scalar_type() == at::kBFloat16, stream);
  REQUIRE_ARG(err == nullptr, "samsparse_cuda::wgmma_selftest: ", err);
  return {};
}

int64_t smem_bytes(int64_t head_dim, int64_t bias_mode, int64_t rgh, int64_t rgw) {
  return fwd_smem_bytes(static_cast<int>(head_dim), static_cast<int>(bias_mode), static_cast<int>(rgh),
                        static_cast<int>(rgw));
}

int64_t compiled_head_dim(int64_t head_dim) { return kernel_head_dim(static_cast<int>(head_dim)); }

std::vector<int64_t> last_launch() { return {g_last_bias_mode, g_last_smem, g_last_variant, g_last_softmax}; }

#undef TO_INT_ARG
#undef REQUIRE_ARG

}  // namespace
}  // namespace samsparse

TORCH_LIBRARY(samsparse_cuda, m) {
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse, Tensor? kv_num, Tensor? kv_idx, "
      "Tensor? rel_h, Tensor? rel_w, Tensor? cu_q, Tensor? cu_k, float scale, int[] geom) -> str");
  m.def("smem_bytes(int head_dim, int bias_mode, int rgh, int rgw) -> int", &samsparse::smem_bytes);
  m.def("kernel_head_dim(int head_dim) -> int", &samsparse::compiled_head_dim);
  m.def("last_launch() -> int[]", &samsparse::last_launch);
  m.def("wgmma_selftest(Tensor q, Tensor k, Tensor v, Tensor(a!) s, Tensor(b!) o) -> str");
}

TORCH_LIBRARY_IMPL(samsparse_cuda, CUDA, m) {
  m.impl("fwd", &samsparse::fwd);
  m.impl("wgmma_selftest", &samsparse::wgmma_selftest_op);
}
