// Compiled CPU causal depthwise convolution with optional SiLU (the convolution of a Mamba /
// mLSTM mixer), forward and backward: causal_conv1d's `causal_conv1d_fn` on CPU.
//
//   pre_t = bias + sum_{k<K} w_k x_{t-(K-1)+k}     (x_s = 0 for s < 0)
//   y_t   = silu(pre_t) = pre_t sigmoid(pre_t)     (or y_t = pre_t)
//
// Layout: x, y, dy, dx [batch, D, L] fp32 contiguous (the Python wrapper casts); w [D, K];
// bias [D] optional. Why by hand: oneDNN's depthwise convolution backward on a 2-core CPU
// takes ~60 ms for [4, 384, 512] with K = 4 (memory passes over im2col-like buffers), about
// as long as the selective scan's own backward; a row of L steps needs only K multiply-adds
// per step, so one pass per row, with the SiLU fused, runs at memory speed.
//
// Threads (at::parallel_for, so torch.set_num_threads applies): forward over rows (batch x
// channel); backward over channels, each task owning its channels' dw and dbias (sums over
// batch and time, accumulated in double per channel) and its rows of dx: no atomics, and the
// result does not depend on the thread count. The backward recomputes pre_t rather than
// saving it. Loops over time are plain `omp simd` loops (sigmoid is the scan's exp2
// polynomial written in scalar form so the compiler vectorises it, no libm call).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

// 2^x = 2^k p(f), k = round(x), f = x - k, p the degree-6 fit of csrc/selective_scan_cpu.cpp.
constexpr float kP0 = 1.000000000e+00f, kP1 = 6.931471825e-01f, kP2 = 2.402264625e-01f,
                kP3 = 5.550328642e-02f, kP4 = 9.618489072e-03f, kP5 = 1.339993090e-03f,
                kP6 = 1.534580515e-04f;
constexpr float kLog2e = 1.4426950408889634f;

// sigmoid(v) = 1 / (1 + 2^(-v log2 e)); the exponent is clamped to +-127 octaves (a sigmoid of
// 0 or 1 to fp32 precision there). Rounds with the 1.5 * 2^23 trick (IEEE order: this file is
// never compiled with -ffast-math).
inline float sigmoid_f(float v) {
  float x = -v * kLog2e;
  x = x < -127.f ? -127.f : (x > 127.f ? 127.f : x);
  const float k = (x + 12582912.0f) - 12582912.0f;
  const float f = x - k;
  float p = kP6 * f + kP5;
  p = p * f + kP4;
  p = p * f + kP3;
  p = p * f + kP2;
  p = p * f + kP1;
  p = p * f + kP0;
  const int32_t e = (static_cast<int32_t>(k) + 127) << 23;
  float s;
  std::memcpy(&s, &e, sizeof(s));
  return 1.f / (1.f + p * s);
}

// pre[t] for t in [0, L) of one row. KT > 0: the width as a compile-time constant; KT == 0: K.
template <int KT>
inline void conv_row(const float* __restrict x, const float* __restrict w, int K_, float b0, int64_t L,
                     float* __restrict pre) {
  const int K = KT > 0 ? KT : K_;
  const int64_t head = std::min<int64_t>(K - 1, L);
  for (int64_t t = 0; t < head; ++t) {  // the first K-1 steps see the zero padding
    float acc = b0;
    for (int k = K - 1 - static_cast<int>(t); k < K; ++k) acc += w[k] * x[t - (K - 1) + k];
    pre[t] = acc;
  }
#pragma omp simd
  for (int64_t t = K - 1; t < L; ++t) {
    float acc = b0;
    for (int k = 0; k < K; ++k) acc += w[k] * x[t - (K - 1) + k];
    pre[t] = acc;
  }
}

template <int KT>
void fwd_impl(const float* xp, const float* wp, const float* bp, float* yp, int64_t B, int64_t D, int64_t L,
              int K, bool silu) {
  at::parallel_for(0, B * D, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> pre(silu ? L : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t d = r % D;
      float* yr = yp + r * L;
      float* out = silu ? pre.data() : yr;
      conv_row<KT>(xp + r * L, wp + d * K, K, bp ? bp[d] : 0.f, L, out);
      if (silu) {
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) {
          const float v = out[t];
          yr[t] = v * sigmoid_f(v);
        }
      }
    }
  });
}

template <int KT>
void bwd_impl(const float* xp, const float* wp, const float* bp, const float* gp, float* dxp, float* dwp,
              float* dbp, int64_t B, int64_t D, int64_t L, int K, bool silu) {
  at::parallel_for(0, D, 1, [&](int64_t d0, int64_t d1) {
    std::vector<float> buf(L + K);
    float* g = buf.data();  // dL/dpre of one row, followed by K zeros (the steps past L)
    std::vector<double> dw_acc(K);
    for (int64_t d = d0; d < d1; ++d) {
      const float* w = wp + d * K;
      const float b0 = bp ? bp[d] : 0.f;
      std::fill(dw_acc.begin(), dw_acc.end(), 0.0);
      double db_acc = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t r = b * D + d;
        const float* x = xp + r * L;
        const float* dy = gp + r * L;
        float* dx = dxp + r * L;
        if (silu) {
          conv_row<KT>(x, w, K, b0, L, g);
#pragma omp simd
          for (int64_t t = 0; t < L; ++t) {  // silu'(v) = s (1 + v (1 - s))
            const float v = g[t], s = sigmoid_f(v);
            g[t] = dy[t] * s * (1.f + v * (1.f - s));
          }
        } else {
          std::memcpy(g, dy, L * sizeof(float));
        }
        std::fill(g + L, g + L + K, 0.f);
        float sb = 0.f;
#pragma omp simd reduction(+ : sb)
        for (int64_t t = 0; t < L; ++t) sb += g[t];
        db_acc += sb;
        const int Kc = KT > 0 ? KT : K;
        for (int k = 0; k < Kc; ++k) {  // dw_k = sum_t g_t x_{t-(K-1)+k}
          const int64_t shift = Kc - 1 - k;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t t = shift; t < L; ++t) s += g[t] * x[t - shift];
          dw_acc[k] += s;
        }
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) {  // dx_s = sum_k w_k g_{s+(K-1)-k}
          float acc = 0.f;
          for (int k = 0; k < Kc; ++k) acc += w[k] * g[t + (Kc - 1 - k)];
          dx[t] = acc;
        }
      }
      for (int k = 0; k < K; ++k) dwp[d * K + k] = static_cast<float>(dw_acc[k]);
      if (dbp) dbp[d] = static_cast<float>(db_acc);
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  auto ok = [](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), "causal_conv1d_cpu: ", name, " must be a CPU tensor");
    TORCH_CHECK(t.scalar_type() == at::kFloat, "causal_conv1d_cpu: ", name, " must be float32");
    TORCH_CHECK(t.is_contiguous(), "causal_conv1d_cpu: ", name, " must be contiguous");
  };
  ok(x, "x");
  ok(w, "weight");
  TORCH_CHECK(x.dim() == 3, "causal_conv1d_cpu: x must be [batch, D, L]");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(1) && w.size(1) >= 1,
              "causal_conv1d_cpu: weight must be [D, K]");
  if (bias.has_value() && bias->defined()) {
    ok(*bias, "bias");
    TORCH_CHECK(bias->numel() == x.size(1), "causal_conv1d_cpu: bias must be [D]");
  }
}

const float* opt_ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<float>() : nullptr;
}

#define DISPATCH_WIDTH(K, CALL) \
  switch (K) {                  \
    case 2: CALL(2); break;     \
    case 3: CALL(3); break;     \
    case 4: CALL(4); break;     \
    default: CALL(0); break;    \
  }

}  // namespace

at::Tensor conv_fwd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias, bool silu) {
  check(x, w, bias);
  at::Tensor y = at::empty_like(x);
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
  const int K = static_cast<int>(w.size(1));
  if (y.numel() == 0) return y;
#define CALL(KT) fwd_impl<KT>(x.data_ptr<float>(), w.data_ptr<float>(), opt_ptr(bias), y.data_ptr<float>(), B, D, L, K, silu)
  DISPATCH_WIDTH(K, CALL)
#undef CALL
  return y;
}

// Returns {dx [batch, D, L], dw [D, K], dbias [D] (undefined without a bias)}.
std::vector<at::Tensor> conv_bwd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& dy, bool silu) {
  check(x, w, bias);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == at::kFloat && dy.is_contiguous(),
              "causal_conv1d_cpu: dy must be contiguous float32 [batch, D, L]");
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor dx = at::empty_like(x), dw = at::zeros_like(w);
  at::Tensor db = has_bias ? at::zeros_like(*bias) : at::Tensor();
  const int64_t B = x.size(0), D = x.size(1), L = x.size(2);
  const int K = static_cast<int>(w.size(1));
  if (x.numel() == 0) return {dx, dw, db};
#define CALL(KT)                                                                                        \
  bwd_impl<KT>(x.data_ptr<float>(), w.data_ptr<float>(), opt_ptr(bias), dy.data_ptr<float>(),           \
               dx.data_ptr<float>(), dw.data_ptr<float>(), has_bias ? db.data_ptr<float>() : nullptr, B, D, \
               L, K, silu)
  DISPATCH_WIDTH(K, CALL)
#undef CALL
  return {dx, dw, db};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hear_ssam compiled CPU causal depthwise convolution (+ SiLU), forward and backward";
  m.def("fwd", &conv_fwd, "causal depthwise conv1d (+ SiLU) forward");
  m.def("bwd", &conv_bwd, "causal depthwise conv1d (+ SiLU) backward");
}
