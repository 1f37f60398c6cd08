// Fused CPU kernels of qfx's train-mode fake quantization (qfx/nn/quant.py, qfx/nn/_fused.py).
//
// Nodes: one quantizer (FQ), a weight/bias pair (FQPair), a layer output quantizer followed by the next ReLU's
// (FQChain), and a whole train-mode BatchNorm with its quantizers (BNTrain). Each is one C++ autograd node: one pass
// over the data forward (only y is written) and one backward pass that recomputes masks and d = ysat - x*mask from the
// saved input with the same element function. Every element is computed with the same float32 operations, in the
// same order, as the tensor-op path in qfx/nn/quant.py (`_fq_forward` / `_fq_backward`) and qfx/nn/layers.py, and
// every reduction (the binary-point gradient's dot / sum, BatchNorm statistics, sum_to) is the same ATen call on the
// same tensor, so values and gradients are bit-identical (tests/test_fused_quant.py).
// Built with -ffp-contract=off: no multiply-add contraction may change a rounding (the one FMA, in BatchNorm's
// apply, is explicit and matches ATen's addcmul as probed at run time).
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <limits>
#include <cstdint>
#include <mutex>
#include <vector>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;

enum Rounding : int { TRN = 0, TRN_ZERO, RND, RND_ZERO, RND_INF, RND_MIN_INF, RND_CONV };
enum Path : int { P_SAT_RND = 0, P_SAT, P_SAT_ZERO, P_WRAP };

struct Spec {
  int width;
  float lo, hi;  // code range after the overflow mode's adjustment (SAT_SYM: symmetric)
  int path;
  int rounding;
  bool bounded;
  bool is_signed;
  int khot;
  float klo, khi;
};

constexpr int kMaxSpecs = 4096;
Spec g_specs[kMaxSpecs];
int g_nspecs = 0;
std::mutex g_spec_mutex;

constexpr float kLn2 = 0.693147180559945309417232121458176568f;
constexpr int kILimit = 96;
constexpr int64_t kGrain = 32768;

int64_t register_spec(int64_t width, double lo, double hi, int64_t path, int64_t rounding, bool bounded,
                      bool is_signed, int64_t khot, double klo, double khi) {
  std::lock_guard<std::mutex> lock(g_spec_mutex);
  TORCH_CHECK(g_nspecs < kMaxSpecs, "qfx fused quantizer: too many formats");
  TORCH_CHECK(path >= 0 && path <= P_WRAP && rounding >= 0 && rounding <= RND_CONV &&
                  (path != P_SAT_RND || rounding == RND),
              "qfx fused quantizer: bad spec");
  g_specs[g_nspecs] = Spec{static_cast<int>(width), static_cast<float>(lo), static_cast<float>(hi),
                           static_cast<int>(path), static_cast<int>(rounding), bounded, is_signed,
                           static_cast<int>(khot), static_cast<float>(klo), static_cast<float>(khi)};
  return g_nspecs++;
}

inline const Spec& spec_of(int64_t id) {
  TORCH_CHECK(id >= 0 && id < g_nspecs, "qfx fused quantizer: unknown spec");
  return g_specs[id];
}

// torch.clamp(v, lo, hi) on floats: NaN propagates.
inline float clampf(float v, float lo, float hi) {
  v = (v < lo) ? lo : v;
  return (hi < v) ? hi : v;
}

template <int R>
inline float round_general(float m) {
  const float fl = std::floor(m);
  const float r = m - fl;  // exact
  bool inc;
  if (R == RND) {
    inc = r >= 0.5f;
  } else if (R == RND_MIN_INF) {
    inc = r > 0.5f;
  } else if (R == RND_ZERO) {
    inc = (r > 0.5f) | ((r == 0.5f) & (m < 0.0f));
  } else {  // RND_INF
    inc = (r > 0.5f) | ((r == 0.5f) & (m > 0.0f));
  }
  return fl + (inc ? 1.0f : 0.0f);  // a select, not a bool conversion: keeps the loop vectorizable
}

// quant.py `_round(m, rounding, bounded)`.
template <int R, bool BOUNDED>
inline float round_mode(float m) {
  if (R == TRN) return std::floor(m);
  if (R == TRN_ZERO) return std::trunc(m);
  if (R == RND_CONV) return std::nearbyint(m);  // round half to even, as torch.round
  if (BOUNDED && R == RND) return std::floor(m + 0.5f);
  if (BOUNDED && R == RND_MIN_INF) return std::ceil(m - 0.5f);
  return round_general<R>(m);
}

// quant.py `khot_float` on one code.
inline float khot_elem(float q, int k, float lo, float hi) {
  float acc = 0.0f;
  for (int i = 0; i < k; ++i) {
    const float r = q - acc;
    int ex = 0;
    const float mant = std::frexp(std::fabs(r), &ex);
    const int e = ex - 1 + (mant >= 0.75f ? 1 : 0);
    const float sg = static_cast<float>(r > 0.0f) - static_cast<float>(r < 0.0f);  // torch.sign: NaN -> 0
    acc = acc + sg * std::ldexp(1.0f, e);
  }
  return clampf(acc, lo, hi);
}

struct Consts {
  float lo, hi, full, inv_full;
  bool is_signed;
  int khot;
  float klo, khi;
};

// One element: y, the in-range mask (1/0) and d = ysat - x * mask (quant.py `_fq_forward`, same float ops).
template <int R, int P, bool BOUNDED, bool KHOT>
inline void quant_elem(float xv, float inv, float step, const Consts& k, float& yv, float& mf, float& dv) {
  float q, qs;
  if (P == P_SAT_RND) {  // floor(clamp(x * inv + 1/2, lo + 1/2, hi + 1/2))
    const float m = 0.5f + xv * inv;
    const float mc = clampf(m, k.lo + 0.5f, k.hi + 0.5f);
    mf = (m == mc) ? 1.0f : 0.0f;
    q = std::floor(mc);
    if (KHOT) q = khot_elem(q, k.khot, k.klo, k.khi);
    qs = q;
  } else if (P == P_SAT) {
    const float m = xv * inv;
    const float mc = clampf(m, k.lo, k.hi);
    mf = (m == mc) ? 1.0f : 0.0f;
    q = round_mode<R, BOUNDED>(mc);
    if (KHOT) q = khot_elem(q, k.khot, k.klo, k.khi);
    qs = q;
  } else {
    const float qr = round_mode<R, false>(xv * inv);
    const bool inr = (qr >= k.lo) & (qr <= k.hi);
    mf = inr ? 1.0f : 0.0f;
    qs = clampf(qr, k.lo, k.hi);
    if (P == P_SAT_ZERO) {
      q = inr ? qr : 0.0f;
    } else {
      // WRAP: torch.remainder(q, 2**W), then the signed fold. For an integer-valued float q and W <= 24,
      // q - 2**W * floor(q * 2**-W) is exact (every step is, and the result is representable), so it equals
      // remainder's fmod-based value (up to the sign of a zero); inf/NaN give NaN in both.
      const float md = qr - k.full * std::floor(qr * k.inv_full);
      q = (k.is_signed && md > k.hi) ? md - k.full : md;
    }
    if (KHOT) {
      q = khot_elem(q, k.khot, k.klo, k.khi);
      qs = khot_elem(qs, k.khot, k.klo, k.khi);
    }
  }
  yv = q * step;
  const float ys = (P == P_SAT_RND || P == P_SAT) ? yv : qs * step;
  dv = ys + (-xv) * mf;  // addcmul(ysat, x, mask, value=-1)
}

// A block of elements sharing one step; branch-free (vectorizable) for the plain formats.
template <int R, int P, bool BOUNDED, bool M, bool D>
void block_plain(const float* __restrict x, float* __restrict y, uint8_t* __restrict mask, float* __restrict d,
                 int64_t n, float inv, float step, const Consts& kc) {
  const Consts k = kc;
  for (int64_t i = 0; i < n; ++i) {
    float yv, mf, dv;
    quant_elem<R, P, BOUNDED, false>(x[i], inv, step, k, yv, mf, dv);
    y[i] = yv;
    if (M) mask[i] = static_cast<uint8_t>(mf != 0.0f);
    if (D) d[i] = dv;
  }
}

template <int R, int P, bool BOUNDED>
void block_khot(const float* __restrict x, float* __restrict y, uint8_t* __restrict mask, float* __restrict d,
                int64_t n, float inv, float step, const Consts& kc) {
  const Consts k = kc;
  for (int64_t i = 0; i < n; ++i) {
    float yv, mf, dv;
    quant_elem<R, P, BOUNDED, true>(x[i], inv, step, k, yv, mf, dv);
    y[i] = yv;
    if (mask) mask[i] = static_cast<uint8_t>(mf != 0.0f);
    if (d) d[i] = dv;
  }
}

using BlockFn = void (*)(const float*, float*, uint8_t*, float*, int64_t, float, float, const Consts&);

template <int R, int P, bool BOUNDED>
BlockFn pick_store(bool khot, bool m, bool d) {
  if (khot) return block_khot<R, P, BOUNDED>;
  if (m) return d ? block_plain<R, P, BOUNDED, true, true> : block_plain<R, P, BOUNDED, true, false>;
  return d ? block_plain<R, P, BOUNDED, false, true> : block_plain<R, P, BOUNDED, false, false>;
}

template <int R>
BlockFn pick_path(int path, bool bounded, bool khot, bool m, bool d) {
  switch (path) {
    case P_SAT:
      // `bounded` only changes the RND and RND_MIN_INF formulas
      if ((R == RND || R == RND_MIN_INF) && bounded) return pick_store<R, P_SAT, true>(khot, m, d);
      return pick_store<R, P_SAT, false>(khot, m, d);
    case P_SAT_ZERO: return pick_store<R, P_SAT_ZERO, false>(khot, m, d);
    default: return pick_store<R, P_WRAP, false>(khot, m, d);
  }
}

BlockFn pick(const Spec& sp, bool m, bool d) {
  const bool kh = sp.khot > 0;
  if (sp.path == P_SAT_RND) return pick_store<RND, P_SAT_RND, true>(kh, m, d);  // registered for RND only
  switch (sp.rounding) {
    case TRN: return pick_path<TRN>(sp.path, sp.bounded, kh, m, d);
    case TRN_ZERO: return pick_path<TRN_ZERO>(sp.path, sp.bounded, kh, m, d);
    case RND: return pick_path<RND>(sp.path, sp.bounded, kh, m, d);
    case RND_ZERO: return pick_path<RND_ZERO>(sp.path, sp.bounded, kh, m, d);
    case RND_INF: return pick_path<RND_INF>(sp.path, sp.bounded, kh, m, d);
    case RND_MIN_INF: return pick_path<RND_MIN_INF>(sp.path, sp.bounded, kh, m, d);
    default: return pick_path<RND_CONV>(sp.path, sp.bounded, kh, m, d);
  }
}

Consts consts_of(const Spec& sp) {
  return Consts{sp.lo, sp.hi, std::ldexp(1.0f, sp.width), std::ldexp(1.0f, -sp.width), sp.is_signed, sp.khot, sp.klo,
                sp.khi};
}

// (2**(W-I), 2**(I-W)) for I = round(p) clamped to +-96 (NaN stays NaN, as torch.round/clamp/exp2 do).
inline void scales_of(float p, int width, float* inv, float* step) {
  if (std::isnan(p)) {
    *inv = p;
    *step = p;
    return;
  }
  float ib = std::nearbyint(p);
  ib = clampf(ib, -static_cast<float>(kILimit), static_cast<float>(kILimit));
  const int i = static_cast<int>(ib);
  *inv = std::ldexp(1.0f, width - i);
  *step = std::ldexp(1.0f, i - width);
}

constexpr int64_t kChunk = 2048;

// The value of a one-element binary point: read directly for a plain CPU float32 tensor (what `item` returns,
// without its dispatch: a dozen of these run per training step), else through `item`.
inline float scalar_of(const Tensor& p) {
  if (p.device().is_cpu() && p.scalar_type() == at::kFloat && p.layout() == at::kStrided && !p.is_neg() &&
      p.numel() == 1) {
    return *p.const_data_ptr<float>();
  }
  return p.item<float>();
}

// The binary point(s) as (2, C) float: row 0 = 2**(W-I), row 1 = 2**(I-W); C = 1 per tensor. Computed once in the
// forward and kept for the backward, which recomputes mask and d from the saved input with the same element
// function instead of storing them (less memory traffic: y is all the forward writes).
Tensor scales_tensor(const Tensor& x, const Tensor& p, const Spec& sp, int64_t axis) {
  const int64_t c = axis < 0 ? 1 : x.size(axis);
  if (axis < 0) {
    TORCH_CHECK(p.numel() == 1, "qfx fused quantizer: per-tensor binary point must have one element");
  } else {
    TORCH_CHECK(p.numel() == c, "qfx fused quantizer: ", p.numel(), " binary points for ", c, " channels");
  }
  Tensor sc = at::empty({2, c}, x.options().dtype(at::kFloat));
  float* o = sc.data_ptr<float>();
  if (axis < 0) {
    const float pv = scalar_of(p);
    TORCH_CHECK_VALUE(std::isfinite(pv), "integer bits must be finite, got ", pv);
    scales_of(pv, sp.width, o, o + 1);
  } else {
    Tensor pc = p.contiguous();
    const float* pp = pc.const_data_ptr<float>();
    for (int64_t k = 0; k < c; ++k) scales_of(pp[k], sp.width, o + k, o + c + k);
  }
  return sc;
}

// f(offset, length, inv, step) over contiguous runs sharing one step, at most kChunk long, in parallel.
template <typename F>
void for_segments(const Tensor& x, int64_t axis, const Tensor& sc, const F& f) {
  const int64_t n = x.numel();
  const float* s = sc.const_data_ptr<float>();
  if (axis < 0) {
    const float inv = s[0], step = s[1];
    at::parallel_for(0, n, kGrain, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; o += kChunk) f(o, std::min(kChunk, e - o), inv, step);
    });
    return;
  }
  const int64_t c = x.size(axis);
  int64_t inner = 1;
  for (int64_t k = axis + 1; k < x.dim(); ++k) inner *= x.size(k);
  const int64_t blocks = (c == 0 || inner == 0) ? 0 : n / inner;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t ch = blk % c, off = blk * inner;
      for (int64_t o = 0; o < inner; o += kChunk) f(off + o, std::min(kChunk, inner - o), s[ch], s[c + ch]);
    }
  });
}

// Fake-quantize contiguous float32 `x` (per tensor: axis < 0; else one binary point per index of `axis`).
Tensor quant_forward(const Tensor& x, const Tensor& sc, const Spec& sp, int64_t axis) {
  Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const BlockFn fn = pick(sp, false, false);
  const Consts kc = consts_of(sp);
  for_segments(x, axis, sc, [&](int64_t o, int64_t n, float inv, float step) {
    fn(xp + o, yp + o, nullptr, nullptr, n, inv, step, kc);
  });
  return y;
}

// The quantizer's backward from its input: gx = g * mask (into `gx` if set; `g` contiguous float) and d (into `d` if
// set), mask and d recomputed by the forward's element function; `mask_full`, if set, receives the whole mask.
void quant_recompute(const Tensor& x, const Tensor& sc, const Spec& sp, int64_t axis, const float* g, float* gx,
                     float* d, uint8_t* mask_full) {
  const float* xp = x.const_data_ptr<float>();
  const BlockFn fn = pick(sp, true, d != nullptr);
  const Consts kc = consts_of(sp);
  for_segments(x, axis, sc, [&](int64_t o, int64_t n, float inv, float step) {
    float ys[kChunk];
    uint8_t ms[kChunk];
    uint8_t* m = mask_full ? mask_full + o : ms;
    fn(xp + o, ys, m, d ? d + o : nullptr, n, inv, step, kc);
    if (gx) {
      for (int64_t i = 0; i < n; ++i) gx[o + i] = g[o + i] * static_cast<float>(m[i]);
    }
  });
}

// Thread-local scratch buffers for the backward's transient full-size arrays (d, g*d, the BatchNorm passes): a
// fresh allocation of that size per call is served by mmap and costs more in page faults than the arithmetic.
// Tensors over them never leave the function that made them (each use site has its own slot).
enum ScratchSlot : int { S_D = 0, S_GD, S_BN_G1, S_BN_GT, S_BN_PROD, S_BN_DOUT, S_BN_D2, S_CH_D1, S_CH_D2, S_CH_G1,
                         S_BN_GQ, S_BN_X2, S_COUNT };

Tensor scratch(int slot, const Tensor& like) {
  thread_local std::vector<float> bufs[S_COUNT];
  std::vector<float>& b = bufs[slot];
  const size_t n = static_cast<size_t>(like.numel());
  if (b.size() < n) {
    b.clear();
    b.shrink_to_fit();
    b.resize(n);
  }
  return at::from_blob(b.data(), like.sizes(), at::TensorOptions().dtype(at::kFloat));
}

// gx = g * mask (as `g * float_mask`); a non-contiguous g goes through the same ATen op as the tensor-op path
// (the weight quantizer's gradient arrives transposed from F.linear).
Tensor grad_x(const Tensor& g, const Tensor& mask) {
  if (!g.is_contiguous() || g.scalar_type() != at::kFloat || g.sizes() != mask.sizes()) {
    return at::mul(g, mask);  // uint8 mask promoted to float: the same products, the same output layout
  }
  Tensor gx = at::empty_like(g, at::MemoryFormat::Contiguous);
  const float* gp = g.const_data_ptr<float>();
  const uint8_t* mp = mask.const_data_ptr<uint8_t>();
  float* op = gx.data_ptr<float>();
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) op[i] = gp[i] * static_cast<float>(mp[i]);
  });
  return gx;
}

// dL/dI = ln2 * sum(g * d) (per tensor: `dot`; per channel: `mul` then `sum` over the other axes).
Tensor grad_p(const Tensor& g, const Tensor& d, int64_t axis, at::IntArrayRef pshape) {
  if (axis < 0) {
    // `dot(g, d) * ln2` as in the tensor-op path (a float32 product of the float32 dot), without a second dispatch
    const float v = scalar_of(at::dot(g.reshape(-1), d.view(-1))) * kLn2;
    Tensor gp = at::scalar_tensor(v, g.options().dtype(at::kFloat));
    return pshape.empty() ? gp : gp.reshape(pshape);
  }
  std::vector<int64_t> dims;
  for (int64_t k = 0; k < g.dim(); ++k) {
    if (k != axis) dims.push_back(k);
  }
  if (dims.empty()) {  // one binary point per element (a BatchNorm's per-channel scale / shift)
    if (g.is_contiguous() && d.is_contiguous() && g.scalar_type() == at::kFloat && d.scalar_type() == at::kFloat &&
        g.sizes() == d.sizes() && c10::multiply_integers(pshape) == g.numel()) {
      // `mul(g, d).mul_(ln2)` as one loop: the same two float32 roundings, no dispatch
      Tensor gp = at::empty(pshape, g.options());
      const float *gp_in = g.const_data_ptr<float>(), *dp = d.const_data_ptr<float>();
      float* op = gp.data_ptr<float>();
      for (int64_t k = 0; k < g.numel(); ++k) op[k] = (gp_in[k] * dp[k]) * kLn2;
      return gp;
    }
    return at::mul(g, d).mul_(static_cast<double>(kLn2)).reshape(pshape);
  }
  Tensor gd;
  if (g.is_contiguous() && d.is_contiguous() && g.scalar_type() == at::kFloat && g.sizes() == d.sizes()) {
    gd = scratch(S_GD, g);  // the layout at::mul(g, d) would give (both contiguous): the same sum
    at::mul_out(gd, g, d);
  } else {
    gd = at::mul(g, d);
  }
  return gd.sum(dims).mul_(static_cast<double>(kLn2)).reshape(pshape);
}

// (dL/dx, dL/dI) of one quantizer, recomputed from its input x.
std::pair<Tensor, Tensor> quant_backward(const Tensor& g_in, const Tensor& x, const Tensor& sc, const Spec& sp,
                                         int64_t axis, bool want_x, bool want_p, at::IntArrayRef pshape) {
  // A leaf (a weight) gets a non-contiguous gradient from F.linear (a transpose). Its own gradient's layout does not
  // matter (AccumulateGrad stores param-like .grad either way) and the per-tensor dot flattens g with a copy anyway:
  // one contiguous copy serves both. Anything else keeps the tensor-op path's layout (at::mul(g, mask)).
  const bool copy_g = !g_in.is_contiguous() && x.is_leaf() && (axis < 0 || !want_p) && g_in.scalar_type() == at::kFloat;
  const Tensor g = copy_g ? g_in.contiguous() : g_in;
  Tensor gx, d;
  if (want_p) d = scratch(S_D, x);
  float* dp = want_p ? d.data_ptr<float>() : nullptr;
  if (want_x && g.is_contiguous() && g.scalar_type() == at::kFloat && g.sizes() == x.sizes()) {
    gx = at::empty_like(x, at::MemoryFormat::Contiguous);
    quant_recompute(x, sc, sp, axis, g.const_data_ptr<float>(), gx.data_ptr<float>(), dp, nullptr);
  } else if (want_x) {
    Tensor mask = at::empty(x.sizes(), x.options().dtype(at::kByte));
    quant_recompute(x, sc, sp, axis, nullptr, nullptr, dp, mask.data_ptr<uint8_t>());
    gx = grad_x(g, mask);
  } else if (want_p) {
    quant_recompute(x, sc, sp, axis, nullptr, nullptr, dp, nullptr);
  }
  Tensor gp = want_p ? grad_p(g, d, axis, pshape) : Tensor();
  return {gx, gp};
}

bool usable(const Tensor& x, const Tensor& p) {
  return x.device().is_cpu() && p.device().is_cpu() && x.scalar_type() == at::kFloat &&
         p.scalar_type() == at::kFloat && x.is_contiguous() && !x.is_conj() && !x.is_neg() &&
         x.layout() == at::kStrided;
}

// --------------------------------------------------------------------------------------------- one quantizer
struct FQ : public torch::autograd::Function<FQ> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& p, int64_t spec, int64_t axis,
                        bool need_x, bool need_p) {
    const Spec& sp = spec_of(spec);
    Tensor sc = scales_tensor(x, p, sp, axis);
    Tensor y = quant_forward(x, sc, sp, axis);
    if (need_x || need_p) {
      ctx->saved_data["i"] = std::vector<int64_t>{spec, axis, need_x, need_p};
      ctx->saved_data["ps"] = p.sizes().vec();
      ctx->save_for_backward({x, sc});
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::vector<int64_t> info = ctx->saved_data["i"].toIntVector();
    variable_list sv = ctx->get_saved_variables();
    auto r = quant_backward(grads[0], sv[0], sv[1], spec_of(info[0]), info[1], info[2] && ctx->needs_input_grad(0),
                            info[3] && ctx->needs_input_grad(1), ctx->saved_data["ps"].toIntVector());
    return {r.first, r.second, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// ------------------------------------------------------------- two independent quantizers in one node (pair)
struct FQPair : public torch::autograd::Function<FQPair> {
  static variable_list forward(AutogradContext* ctx, const Tensor& a, const Tensor& pa, int64_t sa, int64_t axa,
                               const Tensor& b, const Tensor& pb, int64_t sb, int64_t axb, bool nxa, bool npa,
                               bool nxb, bool npb) {
    Tensor sca = scales_tensor(a, pa, spec_of(sa), axa), scb = scales_tensor(b, pb, spec_of(sb), axb);
    Tensor ya = quant_forward(a, sca, spec_of(sa), axa);
    Tensor yb = quant_forward(b, scb, spec_of(sb), axb);
    ctx->saved_data["i"] = std::vector<int64_t>{sa, axa, nxa, npa, sb, axb, nxb, npb};
    ctx->saved_data["psa"] = pa.sizes().vec();
    ctx->saved_data["psb"] = pb.sizes().vec();
    ctx->save_for_backward({a, sca, b, scb});
    return {ya, yb};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // needs_input_grad counts tensor arguments only (a, pa, b, pb). An output that got no gradient counts as
    // zeros (materialized by autograd), as in the Python path.
    const std::vector<int64_t> i = ctx->saved_data["i"].toIntVector();
    variable_list sv = ctx->get_saved_variables();
    auto ra = quant_backward(grads[0], sv[0], sv[1], spec_of(i[0]), i[1], i[2] && ctx->needs_input_grad(0),
                             i[3] && ctx->needs_input_grad(1), ctx->saved_data["psa"].toIntVector());
    auto rb = quant_backward(grads[1], sv[2], sv[3], spec_of(i[4]), i[5], i[6] && ctx->needs_input_grad(2),
                             i[7] && ctx->needs_input_grad(3), ctx->saved_data["psb"].toIntVector());
    return {ra.first, ra.second, Tensor(), Tensor(), rb.first, rb.second, Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor(), Tensor()};
  }
};

// --------------------------------------------------------------- two quantizers in a row (chain): q2(q1(x))
// A layer's output quantizer followed by a ReLU whose unsigned saturating quantizer absorbs the ReLU: both roundings
// in one pass, one node. y1 stays an output (other consumers may read it); its gradient adds to the chain's.
struct Scales {
  float inv, step;
};

Scales tensor_scales(const Tensor& p, int width) {
  TORCH_CHECK(p.numel() == 1, "qfx fused quantizer: per-tensor binary point must have one element");
  const float pv = scalar_of(p);
  TORCH_CHECK_VALUE(std::isfinite(pv), "integer bits must be finite, got ", pv);
  Scales sc;
  scales_of(pv, width, &sc.inv, &sc.step);
  return sc;
}

inline bool dense_float(const Tensor& g, const Tensor& like) {
  return g.defined() && g.is_contiguous() && g.scalar_type() == at::kFloat && g.sizes() == like.sizes();
}

struct FQChain : public torch::autograd::Function<FQChain> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& p1, int64_t s1, const Tensor& p2,
                               int64_t s2, bool nx, bool np1, bool np2) {
    const Spec &sp1 = spec_of(s1), &sp2 = spec_of(s2);
    const Scales c1 = tensor_scales(p1, sp1.width), c2 = tensor_scales(p2, sp2.width);
    Tensor y1 = at::empty_like(x, at::MemoryFormat::Contiguous), y2 = at::empty_like(y1);
    const BlockFn f1 = pick(sp1, false, false), f2 = pick(sp2, false, false);
    const Consts k1 = consts_of(sp1), k2 = consts_of(sp2);
    const float* xp = x.const_data_ptr<float>();
    float *y1p = y1.data_ptr<float>(), *y2p = y2.data_ptr<float>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; o += kChunk) {  // chunks: y1 is still in L1 when q2 reads it
        const int64_t n = std::min(kChunk, e - o);
        f1(xp + o, y1p + o, nullptr, nullptr, n, c1.inv, c1.step, k1);
        f2(y1p + o, y2p + o, nullptr, nullptr, n, c2.inv, c2.step, k2);
      }
    });
    ctx->set_materialize_grads(false);
    if (nx || np1 || np2) {
      ctx->saved_data["i"] = std::vector<int64_t>{s1, s2, nx, np1, np2};
      ctx->saved_data["c"] = std::vector<double>{c1.inv, c1.step, c2.inv, c2.step};
      ctx->saved_data["ps1"] = p1.sizes().vec();
      ctx->saved_data["ps2"] = p2.sizes().vec();
      ctx->save_for_backward({x});
    }
    return {y1, y2};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::vector<int64_t> i = ctx->saved_data["i"].toIntVector();
    const std::vector<double> c = ctx->saved_data["c"].toDoubleVector();
    const Spec &sp1 = spec_of(i[0]), &sp2 = spec_of(i[1]);
    const bool want_x = i[2] && ctx->needs_input_grad(0), want_p1 = i[3] && ctx->needs_input_grad(1),
               want_p2 = i[4] && ctx->needs_input_grad(2);
    const Tensor x = ctx->get_saved_variables()[0];
    const Tensor &gy1 = grads[0], &gy2 = grads[1];
    if (!gy1.defined() && !gy2.defined()) return variable_list(8);
    // recompute both quantizers' masks and d's from x, chunk by chunk (the same element functions as forward)
    const bool fast = (!gy2.defined() || dense_float(gy2, x)) && (!gy1.defined() || dense_float(gy1, x));
    Tensor d1 = want_p1 ? scratch(S_CH_D1, x) : Tensor();
    Tensor d2 = want_p2 && gy2.defined() ? scratch(S_CH_D2, x) : Tensor();
    Tensor m1f, m2f, g1, gx;
    if (!fast) {
      m1f = at::empty(x.sizes(), x.options().dtype(at::kByte));
      m2f = at::empty(x.sizes(), x.options().dtype(at::kByte));
    } else {
      if (gy2.defined()) g1 = scratch(S_CH_G1, x);
      if (want_x) gx = at::empty_like(x, at::MemoryFormat::Contiguous);
    }
    const BlockFn f1 = pick(sp1, true, d1.defined()), f2 = pick(sp2, true, d2.defined());
    const Consts k1 = consts_of(sp1), k2 = consts_of(sp2);
    const float inv1 = static_cast<float>(c[0]), st1 = static_cast<float>(c[1]), inv2 = static_cast<float>(c[2]),
                st2 = static_cast<float>(c[3]);
    const float* xp = x.const_data_ptr<float>();
    float *d1p = d1.defined() ? d1.data_ptr<float>() : nullptr, *d2p = d2.defined() ? d2.data_ptr<float>() : nullptr;
    const float* g2p = fast && gy2.defined() ? gy2.const_data_ptr<float>() : nullptr;
    const float* gyp = fast && gy1.defined() ? gy1.const_data_ptr<float>() : nullptr;
    float *g1p = g1.defined() ? g1.data_ptr<float>() : nullptr, *gxp = gx.defined() ? gx.data_ptr<float>() : nullptr;
    uint8_t* m1fp = m1f.defined() ? m1f.data_ptr<uint8_t>() : nullptr;
    uint8_t* m2fp = m2f.defined() ? m2f.data_ptr<uint8_t>() : nullptr;
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      float y1s[kChunk], y2s[kChunk];
      uint8_t m1s[kChunk], m2s[kChunk];
      for (int64_t o = b; o < e; o += kChunk) {
        const int64_t n = std::min(kChunk, e - o);
        uint8_t* m1 = m1fp ? m1fp + o : m1s;
        uint8_t* m2 = m2fp ? m2fp + o : m2s;
        f1(xp + o, y1s, m1, d1p ? d1p + o : nullptr, n, inv1, st1, k1);
        f2(y1s, y2s, m2, d2p ? d2p + o : nullptr, n, inv2, st2, k2);
        if (!fast) continue;
        for (int64_t j = 0; j < n; ++j) {
          // dL/dy1 = (q2's input gradient) + (y1's own consumers), summed as autograd's input buffer sums them
          float a;
          if (g2p) {
            a = g2p[o + j] * static_cast<float>(m2[j]);
            if (gyp) a = a + gyp[o + j];
            g1p[o + j] = a;
          } else {
            a = gyp[o + j];
          }
          if (gxp) gxp[o + j] = a * static_cast<float>(m1[j]);
        }
      }
    });
    Tensor gp1, gp2;
    if (!fast) {
      if (gy2.defined()) g1 = grad_x(gy2, m2f);
      if (gy1.defined()) g1 = g1.defined() ? at::add(g1, gy1) : gy1;
      if (want_x) gx = grad_x(g1, m1f);
    } else if (!g1.defined()) {
      g1 = gy1;
    }
    if (d2.defined()) gp2 = grad_p(gy2, d2, -1, ctx->saved_data["ps2"].toIntVector());
    if (want_p1) gp1 = grad_p(g1, d1, -1, ctx->saved_data["ps1"].toIntVector());
    return {gx, gp1, Tensor(), gp2, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// ------------------------------------------------------------------------------------- batch norm, train mode
// qfx/nn/layers.py `_QBatchNorm` in train mode (batch statistics) as one node: E[x], E[x^2] and the biased
// variance (`_BatchStats`), the running-statistics update, scale = gamma * rsqrt(var + eps) and
// shift = beta - mean * scale, their quantizers, the apply `addcmul(shift, x, scale)`, the output quantizer and
// optionally the next quantizer (the ReLU's). Every op the tensor-op path runs is either the same ATen call here
// or, for the big elementwise passes, the same float operations in one loop; the backward replays the autograd
// formulas of that graph (MulBackward, SubBackward, RsqrtBackward: -0.5 * g * r^3, AddcmulBackward with sum_to,
// `_BatchStats.backward`) in the same order.

// ATen's CPU addcmul(self, t1, t2) = self + t1 * t2 with one rounding (FMA) or two, depending on how ATen was
// compiled for this CPU: probed once on a broadcast (1, C, ...) pattern as used here; -1 = neither matched (the
// ATen op is then used as it is).
int probe_addcmul_mode(int64_t ndim) {
  std::vector<int64_t> shape = ndim == 2 ? std::vector<int64_t>{5, 37} : std::vector<int64_t>{3, 5, 3, 7};
  while (static_cast<int64_t>(shape.size()) < ndim) shape.push_back(2);
  std::vector<int64_t> cshape(shape.size(), 1);
  cshape[1] = shape[1];
  const int64_t n = c10::multiply_integers(shape), c = shape[1];
  auto opts = at::TensorOptions().dtype(at::kFloat);
  Tensor x = at::empty(shape, opts), s = at::empty(cshape, opts), h = at::empty(cshape, opts);
  float *xp = x.data_ptr<float>(), *sp = s.data_ptr<float>(), *hp = h.data_ptr<float>();
  uint32_t st = 12345u;
  auto rnd = [&st]() {
    st = st * 1664525u + 1013904223u;
    return static_cast<float>(static_cast<int32_t>(st >> 8) - (1 << 23)) / static_cast<float>(1 << 21);
  };
  for (int64_t i = 0; i < n; ++i) xp[i] = rnd();
  for (int64_t i = 0; i < c; ++i) {
    sp[i] = rnd();
    hp[i] = rnd();
  }
  Tensor r = at::addcmul(h, x, s);
  const float* rp = r.const_data_ptr<float>();
  int64_t inner = n / (shape[0] * c);
  bool fma_ok = true, sep_ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t ch = (i / inner) % c;
    fma_ok &= rp[i] == std::fma(xp[i], sp[ch], hp[ch]);
    sep_ok &= rp[i] == hp[ch] + xp[i] * sp[ch];
  }
  return fma_ok ? 1 : (sep_ok ? 0 : -1);
}

int addcmul_mode(int64_t ndim) {
  static std::mutex mu;
  static int modes[9] = {-2, -2, -2, -2, -2, -2, -2, -2, -2};
  if (ndim < 2 || ndim > 8) return -1;
  std::lock_guard<std::mutex> lock(mu);
  if (modes[ndim] == -2) modes[ndim] = probe_addcmul_mode(ndim);
  return modes[ndim];
}

template <bool FMA>
inline float muladd(float x, float s, float h) {
  return FMA ? std::fma(x, s, h) : h + x * s;
}

// One chunk [o, o + n) of the apply: t = x * s[c] + h[c] (runs of one channel) into `t`.
template <bool FMA>
inline void bn_affine(const float* x, const float* s, const float* h, int64_t o, int64_t n, int64_t c, int64_t inner,
                      float* t) {
  for (int64_t j = 0, idx = o; j < n;) {
    const int64_t ch = (idx / inner) % c, run = std::min(inner - idx % inner, n - j);
    const float sc = s[ch], hc = h[ch];
    const float* xr = x + idx;
    float* tr = t + j;
    for (int64_t u = 0; u < run; ++u) tr[u] = muladd<FMA>(xr[u], sc, hc);
    j += run;
    idx += run;
  }
}

// y = qo(x * s[c] + h[c]) and y2 = q2(y) over an (N, C, inner) layout; qo / q2 optional (null fn).
template <bool FMA>
void bn_apply(const float* x, const float* s, const float* h, int64_t total, int64_t c, int64_t inner, float* y,
              BlockFn fo, Scales co, const Consts& ko, BlockFn f2, Scales c2, const Consts& k2, float* y2) {
  at::parallel_for(0, total, kGrain, [&](int64_t b, int64_t e) {
    float scratch[kChunk];
    for (int64_t o = b; o < e; o += kChunk) {
      const int64_t n = std::min(kChunk, e - o);
      float* t = fo ? scratch : y + o;
      bn_affine<FMA>(x, s, h, o, n, c, inner, t);
      float* yo = y + o;
      if (fo) fo(t, yo, nullptr, nullptr, n, co.inv, co.step, ko);
      if (f2) f2(yo, y2 + o, nullptr, nullptr, n, c2.inv, c2.step, k2);
    }
  });
}

// The backward's first pass, recomputing the output quantizers from x: their masks (into full arrays when mo_full /
// m2_full are set) and d's (dout, d2 when set); with the incoming gradients (contiguous; g2 and/or gy) it also
// forms g1 = g2 * m2 (+ gy) (stored when g1_out is set), gt = g1 * mo and prod = gt * x.
template <bool FMA>
void bn_back_pass(const float* x, const float* s, const float* h, int64_t total, int64_t c, int64_t inner,
                  BlockFn fo, Scales co, const Consts& ko, BlockFn f2, Scales c2, const Consts& k2, float* dout,
                  float* d2, uint8_t* mo_full, uint8_t* m2_full, const float* g2, const float* gy, float* g1_out,
                  float* gt, float* prod) {
  at::parallel_for(0, total, kGrain, [&](int64_t b, int64_t e) {
    float t[kChunk], yo[kChunk], y2[kChunk];
    uint8_t mos[kChunk], m2s[kChunk];
    for (int64_t o = b; o < e; o += kChunk) {
      const int64_t n = std::min(kChunk, e - o);
      uint8_t* mo = mo_full ? mo_full + o : mos;
      uint8_t* m2 = m2_full ? m2_full + o : m2s;
      if (fo || f2) bn_affine<FMA>(x, s, h, o, n, c, inner, t);
      const float* ys = t;
      if (fo) {
        fo(t, yo, mo, dout ? dout + o : nullptr, n, co.inv, co.step, ko);
        ys = yo;
      }
      if (f2) f2(ys, y2, m2, d2 ? d2 + o : nullptr, n, c2.inv, c2.step, k2);
      if (!gt) continue;
      for (int64_t j = 0; j < n; ++j) {
        float a;
        if (g2) {
          a = g2[o + j] * static_cast<float>(m2[j]);
          if (gy) a = a + gy[o + j];  // autograd's input buffer sums the two consumers' gradients
        } else {
          a = gy[o + j];
        }
        if (g1_out) g1_out[o + j] = a;
        const float tt = fo ? a * static_cast<float>(mo[j]) : a;
        gt[o + j] = tt;
        prod[o + j] = tt * x[o + j];
      }
    }
  });
}

// gx = gt * s[c] + (x * k[c] + cc[c]) (the apply's and the statistics' input gradients, summed)
template <bool FMA>
void bn_grad_x(const float* gt, const float* x, const float* s, const float* k, const float* cc, int64_t total,
               int64_t c, int64_t inner, float* gx) {
  at::parallel_for(0, total, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t idx = b; idx < e;) {
      const int64_t ch = (idx / inner) % c, run = std::min(inner - idx % inner, e - idx);
      const float sc = s[ch], kc = k[ch], ccc = cc[ch];
      for (int64_t u = idx; u < idx + run; ++u) {
        const float a = gt[u] * sc;
        const float bb = muladd<FMA>(x[u], kc, ccc);
        gx[u] = a + bb;
      }
      idx += run;
    }
  });
}

// Per-channel vectors the plain loops of BNTrain may read: float32, contiguous, C elements, one dimension.
bool channel_vectors_ok(std::initializer_list<Tensor> ts, int64_t c) {
  for (const Tensor& t : ts) {
    if (!t.defined() || t.scalar_type() != at::kFloat || !t.is_contiguous() || t.dim() != 1 || t.size(0) != c ||
        !t.device().is_cpu() || t.is_neg() || t.is_conj()) {
      return false;
    }
  }
  return true;
}

// The producer quantizer's backward inside BNTrain: (dL/dx_in, dL/dI) from dL/dxq into out[0] and out[19]
// (needs_input_grad counts tensor arguments: pc is the 11th).
void bn_pre_backward(AutogradContext* ctx, const Tensor& x_in, const Tensor& g, const std::vector<double>& cv,
                     int64_t sc, variable_list& out) {
  Tensor scl = at::empty({2, 1}, x_in.options());
  scl.data_ptr<float>()[0] = static_cast<float>(cv[4]);
  scl.data_ptr<float>()[1] = static_cast<float>(cv[5]);
  auto r = quant_backward(g, x_in, scl, spec_of(sc), -1, ctx->needs_input_grad(0), ctx->needs_input_grad(10),
                          ctx->saved_data["pc"].toIntVector());
  if (ctx->needs_input_grad(0)) out[0] = r.first;
  if (ctx->needs_input_grad(10)) out[19] = r.second;
}

// `_QBatchNorm.scale_shift`'s running-statistics update (momentum < 0: cumulative average).
void update_running_stats(Tensor running_mean, Tensor running_var, Tensor nbt, const Tensor& mean, const Tensor& var,
                          double momentum, int64_t n) {
  at::NoGradGuard no_grad;
  nbt.add_(1);
  const double mom = momentum >= 0.0 ? momentum : 1.0 / static_cast<double>(nbt.item<int64_t>());
  running_mean.lerp_(mean, mom);
  running_var.lerp_(at::mul(var, static_cast<double>(n) / static_cast<double>(std::max<int64_t>(n - 1, 1))), mom);
}

struct BNTrain : public torch::autograd::Function<BNTrain> {
  // ps/ph per channel (axis 0 of the C-vectors) or per tensor; po, p2 per tensor (so / s2 < 0: none).
  static variable_list forward(AutogradContext* ctx, const Tensor& x_in, const Tensor& weight, const Tensor& bias,
                               const Tensor& ps, const Tensor& ph, const Tensor& po, const Tensor& p2,
                               Tensor running_mean, Tensor running_var, Tensor nbt, double momentum, double eps,
                               int64_t ss, int64_t sh, int64_t so, int64_t s2, int64_t axs, int64_t axh, int64_t mode,
                               const Tensor& pc, int64_t sc) {
    const int64_t nd = x_in.dim(), c = x_in.size(1), total = x_in.numel();
    // the producer's (a conv's) output quantizer first, when given: x = qc(x_in), written once, an output of this node
    const bool has_c = sc >= 0;
    Scales cq{1.0f, 1.0f};
    Tensor x = x_in;
    if (has_c) {
      cq = tensor_scales(pc, spec_of(sc).width);
      x = at::empty_like(x_in, at::MemoryFormat::Contiguous);
      const float* xip = x_in.const_data_ptr<float>();
      float* xqp = x.data_ptr<float>();
      const BlockFn fc = pick(spec_of(sc), false, false);
      const Consts kc = consts_of(spec_of(sc));
      at::parallel_for(0, total, kGrain, [&](int64_t b, int64_t e) {
        for (int64_t o = b; o < e; o += kChunk) fc(xip + o, xqp + o, nullptr, nullptr, std::min(kChunk, e - o), cq.inv,
                                                   cq.step, kc);
      });
    }
    const int64_t inner = total / std::max<int64_t>(x.size(0) * c, 1);
    std::vector<int64_t> dims{0};
    for (int64_t k = 2; k < nd; ++k) dims.push_back(k);
    // _BatchStats.forward
    Tensor mean = at::mean(x, dims);
    Tensor x2 = scratch(S_BN_X2, x);  // x * x into a reused buffer (a fresh full-size array page-faults): same mean
    at::mul_out(x2, x, x);
    Tensor ex2 = at::mean(x2, dims);
    // the per-channel arithmetic in plain loops where the vectors are simple (the same IEEE float32 operations as
    // the ATen calls of the else branches, minus a dispatch each); rsqrt and lerp stay ATen calls (their
    // vectorized and scalar CPU kernels round differently from 1/sqrt and from the textbook formula)
    const bool plain = channel_vectors_ok({mean, ex2, weight, bias}, c);
    Tensor var;
    if (plain) {
      var = at::empty_like(mean);
      const float *mp = mean.const_data_ptr<float>(), *ep = ex2.const_data_ptr<float>();
      float* vp = var.data_ptr<float>();
      for (int64_t k = 0; k < c; ++k) {
        const float v = ep[k] - mp[k] * mp[k];
        vp[k] = v < 0.0f ? 0.0f : v;  // clamp_min_(0): NaN stays NaN
      }
    } else {
      var = at::sub(ex2, at::mul(mean, mean)).clamp_min_(0.0);
    }
    const int64_t n = total / c;
    // running statistics, as `scale_shift` (with a producer quantizer: by the caller, when it takes y)
    if (!has_c) update_running_stats(running_mean, running_var, nbt, mean, var, momentum, n);
    Tensor r, scale, shift;
    if (plain) {
      Tensor vpe = at::empty_like(var);
      const float eps_f = static_cast<float>(eps);  // a double Scalar meets a float tensor as a float
      const float* vp = var.const_data_ptr<float>();
      float* ve = vpe.data_ptr<float>();
      for (int64_t k = 0; k < c; ++k) ve[k] = vp[k] + eps_f;
      r = at::rsqrt(vpe);
      scale = at::empty_like(var);
      shift = at::empty_like(var);
      const float *rp = r.const_data_ptr<float>(), *wp = weight.const_data_ptr<float>(),
                  *bp = bias.const_data_ptr<float>(), *mp = mean.const_data_ptr<float>();
      float *scp = scale.data_ptr<float>(), *shp = shift.data_ptr<float>();
      for (int64_t k = 0; k < c; ++k) {
        scp[k] = wp[k] * rp[k];
        shp[k] = bp[k] - mp[k] * scp[k];
      }
    } else {
      r = at::rsqrt(at::add(var, eps));
      scale = at::mul(weight, r).contiguous();
      shift = at::sub(bias, at::mul(mean, scale)).contiguous();
    }
    Tensor scs = scales_tensor(scale, ps, spec_of(ss), axs), sch = scales_tensor(shift, ph, spec_of(sh), axh);
    Tensor sq = quant_forward(scale, scs, spec_of(ss), axs);
    Tensor hq = quant_forward(shift, sch, spec_of(sh), axh);
    const bool has_o = so >= 0, has_2 = s2 >= 0;
    Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
    Tensor y2 = has_2 ? at::empty_like(y) : Tensor();
    BlockFn fo = nullptr, f2 = nullptr;
    Scales co{1.0f, 1.0f}, c2{1.0f, 1.0f};
    Consts ko{}, k2{};
    if (has_o) {
      fo = pick(spec_of(so), false, false);
      co = tensor_scales(po, spec_of(so).width);
      ko = consts_of(spec_of(so));
    }
    if (has_2) {
      f2 = pick(spec_of(s2), false, false);
      c2 = tensor_scales(p2, spec_of(s2).width);
      k2 = consts_of(spec_of(s2));
    }
    const float *xp = x.const_data_ptr<float>(), *sqp = sq.const_data_ptr<float>(), *hqp = hq.const_data_ptr<float>();
    float* yp = y.data_ptr<float>();
    float* y2p = has_2 ? y2.data_ptr<float>() : nullptr;
    if (mode == 1) {
      bn_apply<true>(xp, sqp, hqp, total, c, inner, yp, fo, co, ko, f2, c2, k2, y2p);
    } else {
      bn_apply<false>(xp, sqp, hqp, total, c, inner, yp, fo, co, ko, f2, c2, k2, y2p);
    }
    ctx->set_materialize_grads(false);
    ctx->saved_data["i"] = std::vector<int64_t>{axs, axh, mode, n, ss, sh, so, s2, sc};
    ctx->saved_data["c"] = std::vector<double>{co.inv, co.step, c2.inv, c2.step, cq.inv, cq.step};
    ctx->saved_data["pc"] = has_c ? pc.sizes().vec() : std::vector<int64_t>{};
    ctx->saved_data["ps"] = ps.sizes().vec();
    ctx->saved_data["ph"] = ph.sizes().vec();
    ctx->saved_data["po"] = has_o ? po.sizes().vec() : std::vector<int64_t>{};
    ctx->saved_data["p2"] = has_2 ? p2.sizes().vec() : std::vector<int64_t>{};
    ctx->save_for_backward({x, weight, mean, r, scale, shift, sq, hq, scs, sch, has_c ? x_in : Tensor()});
    variable_list res{y};
    if (has_2) res.push_back(y2);
    if (has_c) {  // xq (a differentiable output: other consumers' gradients add in), then the batch statistics
      Tensor mo = mean.clone();
      ctx->mark_non_differentiable({mo, var});
      res.push_back(x);
      res.push_back(mo);
      res.push_back(var);
    }
    return res;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list sv = ctx->get_saved_variables();
    const Tensor &x = sv[0], &weight = sv[1], &mean = sv[2], &r = sv[3], &scale = sv[4], &shift = sv[5], &sq = sv[6],
                 &hq = sv[7], &scs = sv[8], &sch = sv[9];
    const std::vector<int64_t> info = ctx->saved_data["i"].toIntVector();
    const std::vector<double> cv = ctx->saved_data["c"].toDoubleVector();
    const int64_t axs = info[0], axh = info[1], mode = info[2], n = info[3], ss = info[4], sh = info[5], so = info[6],
                  s2 = info[7], sc = info[8];
    const bool has_o = so >= 0, has_2 = s2 >= 0, has_c = sc >= 0;
    const Tensor gy = grads[0];
    const Tensor gy2 = has_2 && grads.size() > 1 ? grads[1] : Tensor();
    const Tensor gxq = has_c ? grads[has_2 ? 2 : 1] : Tensor();  // xq's other consumers
    variable_list out(21);
    const bool want_c = has_c && (ctx->needs_input_grad(0) || ctx->needs_input_grad(10));
    if (!gy.defined() && !gy2.defined()) {
      if (want_c && gxq.defined()) bn_pre_backward(ctx, sv[10], gxq, cv, sc, out);
      return out;
    }
    const int64_t nd = x.dim(), c = x.size(1), total = x.numel();
    const int64_t inner = total / std::max<int64_t>(x.size(0) * c, 1);
    std::vector<int64_t> cshape(nd, 1);
    cshape[1] = c;
    // pass 1: the output quantizer and the ReLU's, recomputed from x; g1, gt = dL/d(apply), prod = gt * x
    const bool want_p2 = gy2.defined() && ctx->needs_input_grad(6), want_po = has_o && ctx->needs_input_grad(5);
    const bool fast = (!gy2.defined() || dense_float(gy2, x)) && (!gy.defined() || dense_float(gy, x));
    Tensor d2 = want_p2 ? scratch(S_BN_D2, x) : Tensor();
    Tensor dout = want_po ? scratch(S_BN_DOUT, x) : Tensor();
    Tensor mo_f, m2_f, g1, gt, prod;
    if (fast) {
      if (want_po && gy2.defined()) g1 = scratch(S_BN_G1, x);
      gt = scratch(S_BN_GT, x);
      prod = scratch(S_BN_PROD, x);
    } else {
      if (has_o) mo_f = at::empty(x.sizes(), x.options().dtype(at::kByte));
      if (gy2.defined()) m2_f = at::empty(x.sizes(), x.options().dtype(at::kByte));
    }
    BlockFn fo = nullptr, f2 = nullptr;
    Consts ko{}, k2{};
    const Scales co{static_cast<float>(cv[0]), static_cast<float>(cv[1])},
        c2{static_cast<float>(cv[2]), static_cast<float>(cv[3])};
    if (has_o) {
      fo = pick(spec_of(so), true, dout.defined());
      ko = consts_of(spec_of(so));
    }
    if (gy2.defined()) {  // q2 only matters when its output got a gradient
      f2 = pick(spec_of(s2), true, d2.defined());
      k2 = consts_of(spec_of(s2));
    }
    auto fp = [](const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
    auto bp = [](const Tensor& t) { return t.defined() ? t.data_ptr<uint8_t>() : nullptr; };
    const float* g2p = fast && gy2.defined() ? gy2.const_data_ptr<float>() : nullptr;
    const float* gyp = fast && gy.defined() ? gy.const_data_ptr<float>() : nullptr;
    const float *xp = x.const_data_ptr<float>(), *sqp = sq.const_data_ptr<float>(), *hqp = hq.const_data_ptr<float>();
    if (mode == 1) {
      bn_back_pass<true>(xp, sqp, hqp, total, c, inner, fo, co, ko, f2, c2, k2, fp(dout), fp(d2), bp(mo_f), bp(m2_f),
                         g2p, gyp, fp(g1), fp(gt), fp(prod));
    } else {
      bn_back_pass<false>(xp, sqp, hqp, total, c, inner, fo, co, ko, f2, c2, k2, fp(dout), fp(d2), bp(mo_f), bp(m2_f),
                          g2p, gyp, fp(g1), fp(gt), fp(prod));
    }
    if (!fast) {  // the same values through ATen ops (non-contiguous incoming gradients)
      if (gy2.defined()) g1 = grad_x(gy2, m2_f);
      if (gy.defined()) g1 = g1.defined() ? at::add(g1, gy) : gy;
      gt = has_o ? grad_x(g1, mo_f) : g1;
      prod = at::mul(gt, x);
    } else if (!g1.defined()) {
      g1 = gy2.defined() ? Tensor() : gy;
    }
    if (want_p2) out[6] = grad_p(gy2, d2, -1, ctx->saved_data["p2"].toIntVector());
    if (want_po) out[5] = grad_p(g1, dout, -1, ctx->saved_data["po"].toIntVector());
    // AddcmulBackward (self = shift_q, tensor1 = x, tensor2 = scale_q; broadcast grads reduced by sum_to)
    Tensor gsq = at::sum_to(prod, cshape).reshape({c});
    Tensor ghq = at::sum_to(gt, cshape).reshape({c});
    // the pair quantizer of scale and shift
    auto rs = quant_backward(gsq, scale, scs, spec_of(ss), axs, true, ctx->needs_input_grad(3),
                             ctx->saved_data["ps"].toIntVector());
    auto rh = quant_backward(ghq, shift, sch, spec_of(sh), axh, true, ctx->needs_input_grad(4),
                             ctx->saved_data["ph"].toIntVector());
    const Tensor &gs = rs.first, &gh = rh.first;
    if (ctx->needs_input_grad(3)) out[3] = rs.second;
    if (ctx->needs_input_grad(4)) out[4] = rh.second;
    // shift = bias - mean * scale; scale = weight * r; r = rsqrt(var + eps)
    Tensor gw, k, cc;
    if (channel_vectors_ok({gs, gh, scale, mean, r, weight}, c)) {
      // the ATen calls of the else branch as float32 loops: neg, mul, add, mul; pow(r, 3) is (r * r) * r in ATen;
      // double / integer Scalars meet float tensors as floats
      gw = at::empty_like(r);
      k = at::empty_like(r);
      cc = at::empty_like(r);
      const float *gsp = gs.const_data_ptr<float>(), *ghp = gh.const_data_ptr<float>(),
                  *scp = scale.const_data_ptr<float>(), *mp = mean.const_data_ptr<float>(),
                  *rp = r.const_data_ptr<float>(), *wp = weight.const_data_ptr<float>();
      float *gwp = gw.data_ptr<float>(), *kp = k.data_ptr<float>(), *ccp = cc.data_ptr<float>();
      const float two_n = static_cast<float>(2.0 / static_cast<double>(n)), nf = static_cast<float>(n);
      for (int64_t j = 0; j < c; ++j) {
        const float ngh = -ghp[j];
        const float gmean = ngh * scp[j];
        const float gscale = gsp[j] + ngh * mp[j];
        gwp[j] = gscale * rp[j];
        const float gr = gscale * wp[j];
        const float r3 = rp[j] * rp[j] * rp[j];
        const float gvar = (gr * -0.5f) * r3;
        kp[j] = gvar * two_n;
        ccp[j] = gmean / nf - kp[j] * mp[j];
      }
    } else {
      Tensor ngh = at::neg(gh);
      Tensor gmean = at::mul(ngh, scale);
      Tensor gscale = at::add(gs, at::mul(ngh, mean));
      gw = at::mul(gscale, r);
      Tensor gr = at::mul(gscale, weight);
      Tensor gvar = at::mul(at::mul(gr, -0.5), at::pow(r, 3));
      // _BatchStats.backward
      k = at::mul(gvar, 2.0 / static_cast<double>(n));
      cc = at::sub(at::div(gmean, n), at::mul(k, mean));
    }
    if (ctx->needs_input_grad(2)) out[2] = gh;
    if (ctx->needs_input_grad(1)) out[1] = gw;
    if (ctx->needs_input_grad(0) || want_c) {
      Tensor gtc = gt.contiguous();
      if (gtc.scalar_type() == at::kFloat) {
        // dL/dxq only feeds the producer quantizer's backward: a scratch buffer, not a fresh (page-faulting) array
        Tensor gx = has_c && !gxq.defined() ? scratch(S_BN_GQ, x) : at::empty_like(x, at::MemoryFormat::Contiguous);
        Tensor kc = k.contiguous(), ccc = cc.contiguous();
        if (mode == 1) {
          bn_grad_x<true>(gtc.const_data_ptr<float>(), xp, sqp, kc.const_data_ptr<float>(),
                          ccc.const_data_ptr<float>(), total, c, inner, gx.data_ptr<float>());
        } else {
          bn_grad_x<false>(gtc.const_data_ptr<float>(), xp, sqp, kc.const_data_ptr<float>(),
                           ccc.const_data_ptr<float>(), total, c, inner, gx.data_ptr<float>());
        }
        out[0] = gx;
      } else {
        std::vector<int64_t> vshape(nd, 1);
        vshape[1] = -1;
        out[0] = at::add(at::mul(gt, at::mul(sq.reshape(vshape), 1)),
                         at::addcmul(cc.reshape(vshape), x, k.reshape(vshape)));
      }
      if (has_c) {  // through the producer's quantizer: its input buffer sums xq's gradients first
        Tensor gq = gxq.defined() ? at::add(out[0], gxq) : out[0];
        out[0] = Tensor();
        bn_pre_backward(ctx, sv[10], gq, cv, sc, out);
      }
    }
    return out;
  }
};

// ------------------------------------------------------------------------------------- max pooling, train mode
// F.max_pool2d(x, k) with stride k, no padding, no dilation (non-overlapping windows), float32, as ATen's CPU kernel
// computes it: per window the first strict maximum in row-major order, a NaN replacing it (`val > max || isnan(val)`),
// index 0 for a window of -inf; backward adds each output gradient onto zeros at its window's index. ATen's
// general kernel costs ~200-300 us on a 64x16x8x8 batch here; this loop a small fraction of that.
// One plane of max pooling; K > 0 fixes the window at compile time (unrolled), K = 0 reads it from `kr`.
template <int K>
void pool_plane(const float* __restrict xpl, float* __restrict ypl, uint8_t* __restrict ipl, int64_t w, int64_t oh,
                int64_t ow, int64_t kr) {
  const int64_t k = K > 0 ? K : kr;
  for (int64_t oy = 0; oy < oh; ++oy) {
    const float* rows = xpl + oy * k * w;
    for (int64_t ox = 0; ox < ow; ++ox) {
      float mv = -std::numeric_limits<float>::infinity();
      int mi = 0;
      for (int64_t dy = 0; dy < k; ++dy) {
        for (int64_t dx = 0; dx < k; ++dx) {
          const float v = rows[dy * w + ox * k + dx];
          const bool take = (v > mv) | (v != v);  // branch-free `val > maxval || isnan(val)`
          mv = take ? v : mv;
          mi = take ? static_cast<int>(dy * k + dx) : mi;
        }
      }
      ypl[oy * ow + ox] = mv;
      ipl[oy * ow + ox] = static_cast<uint8_t>(mi);
    }
  }
}

struct MaxPool : public torch::autograd::Function<MaxPool> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, int64_t k) {
    const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
    const int64_t oh = (h - k) / k + 1, ow = (w - k) / k + 1;
    Tensor y = at::empty({x.size(0), x.size(1), oh, ow}, x.options());
    Tensor idx = at::empty(y.sizes(), x.options().dtype(at::kByte));
    const float* xp = x.const_data_ptr<float>();
    float* yp = y.data_ptr<float>();
    uint8_t* ip = idx.data_ptr<uint8_t>();
    at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / std::max<int64_t>(h * w, 1)), [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const float* xpl = xp + pl * h * w;
        float* ypl = yp + pl * oh * ow;
        uint8_t* ipl = ip + pl * oh * ow;
        if (k == 2) {
          pool_plane<2>(xpl, ypl, ipl, w, oh, ow, k);
        } else if (k == 3) {
          pool_plane<3>(xpl, ypl, ipl, w, oh, ow, k);
        } else {
          pool_plane<0>(xpl, ypl, ipl, w, oh, ow, k);
        }
      }
    });
    ctx->set_materialize_grads(false);
    ctx->saved_data["s"] = std::vector<int64_t>{h, w, k};
    ctx->save_for_backward({idx});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {Tensor(), Tensor()};
    const std::vector<int64_t> s = ctx->saved_data["s"].toIntVector();
    const int64_t h = s[0], w = s[1], k = s[2];
    const Tensor idx = ctx->get_saved_variables()[0];
    const Tensor g = grads[0].to(at::kFloat).contiguous();
    const int64_t oh = idx.size(2), ow = idx.size(3), planes = idx.size(0) * idx.size(1);
    Tensor gx = at::zeros({idx.size(0), idx.size(1), h, w}, g.options());
    const float* gp = g.const_data_ptr<float>();
    const uint8_t* ip = idx.const_data_ptr<uint8_t>();
    float* op = gx.data_ptr<float>();
    std::vector<int64_t> off(static_cast<size_t>(k * k));  // window index -> offset from the window's corner
    for (int64_t j = 0; j < k * k; ++j) off[j] = (j / k) * w + j % k;
    const int64_t* offp = off.data();
    at::parallel_for(0, planes, std::max<int64_t>(1, kGrain / std::max<int64_t>(h * w, 1)), [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const uint8_t* ipl = ip + pl * oh * ow;
        const float* gpl = gp + pl * oh * ow;
        float* opl = op + pl * h * w;
        for (int64_t oy = 0; oy < oh; ++oy) {
          for (int64_t ox = 0; ox < ow; ++ox) {
            float& dst = opl[oy * k * w + ox * k + offp[ipl[oy * ow + ox]]];
            dst = dst + gpl[oy * ow + ox];  // onto zeros, as ATen's backward (0 + -0 = +0 included)
          }
        }
      }
    });
    return {gx, Tensor()};
  }
};

// Undefined (None) where the fused path does not apply: not a CPU float32 contiguous 4-D input, a window of 1 or
// over 15, or smaller than the window.
Tensor max_pool(const Tensor& x, int64_t k) {
  if (!usable(x, x) || x.dim() != 4 || k < 2 || k > 15 || x.size(2) < k || x.size(3) < k || x.numel() == 0) {
    return Tensor();
  }
  return MaxPool::apply(x, k);
}

// Function::apply needs every tensor argument defined: an absent quantizer passes an empty placeholder (no grad).
Tensor or_placeholder(const std::optional<Tensor>& t) {
  return t.has_value() ? *t : at::empty({0}, at::TensorOptions().dtype(at::kFloat));
}

// Returns [y] or [y, y2]; an empty list where the fused path does not apply.
variable_list bn_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                       Tensor running_var, Tensor nbt, double momentum, double eps, const Tensor& ps, int64_t ss,
                       int64_t axs, const Tensor& ph, int64_t sh, int64_t axh, const std::optional<Tensor>& po,
                       int64_t so, const std::optional<Tensor>& p2, int64_t s2, const std::optional<Tensor>& pc,
                       int64_t sc) {
  if (x.dim() < 2 || x.size(1) == 0 || x.numel() == 0 || !usable(x, ps) || !usable(x, ph)) return {};
  if (pc.has_value() && (!usable(x, *pc) || pc->numel() != 1)) return {};
  if (weight.scalar_type() != at::kFloat || bias.scalar_type() != at::kFloat || !weight.device().is_cpu()) return {};
  if ((po.has_value() && !usable(x, *po)) || (p2.has_value() && !usable(x, *p2))) return {};
  const int mode = addcmul_mode(x.dim());
  if (mode < 0) return {};
  return BNTrain::apply(x, weight, bias, ps, ph, or_placeholder(po), or_placeholder(p2), running_mean,
                        running_var, nbt, momentum, eps, ss, sh, po.has_value() ? so : -1, p2.has_value() ? s2 : -1,
                        axs, axh, static_cast<int64_t>(mode), or_placeholder(pc), pc.has_value() ? sc : -1);
}

// The entry points return undefined tensors (None in Python) where the fused path does not apply (not CPU float32,
// not contiguous); the caller then runs the tensor-op path.
Tensor fq(const Tensor& x, const Tensor& p, int64_t spec, int64_t axis) {
  if (!usable(x, p)) return Tensor();
  const bool grad = at::GradMode::is_enabled();
  return FQ::apply(x, p, spec, axis, grad && x.requires_grad(), grad && p.requires_grad());
}

std::tuple<Tensor, Tensor> fq_pair(const Tensor& a, const Tensor& pa, int64_t sa, int64_t axa, const Tensor& b,
                                   const Tensor& pb, int64_t sb, int64_t axb) {
  if (!usable(a, pa) || !usable(b, pb)) return {Tensor(), Tensor()};
  const bool grad = at::GradMode::is_enabled();
  variable_list out = FQPair::apply(a, pa, sa, axa, b, pb, sb, axb, grad && a.requires_grad(),
                                    grad && pa.requires_grad(), grad && b.requires_grad(), grad && pb.requires_grad());
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor> fq_chain(const Tensor& x, const Tensor& p1, int64_t s1, const Tensor& p2, int64_t s2) {
  if (!usable(x, p1) || !usable(x, p2) || p1.numel() != 1 || p2.numel() != 1) return {Tensor(), Tensor()};
  const bool grad = at::GradMode::is_enabled();
  variable_list out = FQChain::apply(x, p1, s1, p2, s2, grad && x.requires_grad(), grad && p1.requires_grad(),
                                     grad && p2.requires_grad());
  return {out[0], out[1]};
}

}  // namespace

PYBIND11_MODULE(_qfx_fused, m) {
  m.doc() = "qfx fused fake-quantization kernels (built at first use by qfx.nn._fused)";
  m.def("register_spec", &register_spec);
  m.def("fq", &fq);
  m.def("fq_pair", &fq_pair);
  m.def("fq_chain", &fq_chain);
  m.def("bn_train", &bn_train);
  m.def("addcmul_mode", &addcmul_mode);
  m.def("update_running_stats", &update_running_stats);
  m.def("max_pool", &max_pool);
}
