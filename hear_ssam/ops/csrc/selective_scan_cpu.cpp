// Compiled CPU selective scan (Mamba-1 S6 recurrence), forward and backward.
//
//   delta_t = softplus(delta_t + delta_bias)           (bias and softplus optional)
//   h_t     = exp(delta_t A) * h_{t-1} + delta_t B_t u_t
//   y_t     = <C_t, h_t> + D u_t ,   out_t = y_t * silu(z_t)   (D, z optional)
//
// Layout (mamba_ssm's selective_scan_fn): u, delta, z, out [batch, E, L]; A [E, N];
// B, C [batch, N, L]; D, delta_bias [E]. fp32, contiguous (the Python wrapper casts).
//
// Vectorised over channels: one SIMD register holds W consecutive channels (W = 16 with
// AVX-512, 8 with AVX2, 4 in the portable build), so exp(delta A) and the state update are
// lane-wise arithmetic and the sums over the state dimension stay in registers. exp is an
// inline polynomial (about 3x faster here than calling glibc's vector expf). Time goes in
// chunks of `chunk` steps: the [W channels x chunk] tiles of u, delta, z (and dout) are
// transposed in registers to [chunk][W] once, with bias, softplus, D skip and SiLU gate fused
// into that pass, and the state dimension is walked in register tiles of kTile rows.
// Threads (at::parallel_for, so torch.set_num_threads applies): forward over
// (batch x channel block); backward over (batch x channel group), each task owning the
// outputs it writes, so no atomics: sums over channels (dB, dC) are reduced inside a task
// and per group, sums over batch (dA, dD, ddelta_bias) are per-batch partials added at the end.
//
// Memory: the forward saves, only when a gradient is needed, the hidden state at the start
// of each chunk, [batch, n_chunks, E, N]; the backward recomputes each chunk's states from
// it, so no [batch, E, L, N] tensor ever exists.
//
// Backward, per chunk in reverse time, with g_t = dout_t silu(z_t) the gradient of y_t:
//   G_t = dL/dh_t = g_t C_t + exp(delta_{t+1} A) G_{t+1}
//   dC_t = sum_e g_t h_t          dB_t = sum_e G_t delta_t u_t
//   du_t = delta_t <G_t, B_t> + D g_t
//   ddelta_t = u_t <G_t, B_t> + sum_n G_t h_{t-1} exp(delta_t A) A   (then * sigmoid for softplus)
//   dA = sum_{b,t} G_t h_{t-1} exp(delta_t A) delta_t
//   dD = sum_{b,t} g_t u_t       dz_t = dout_t y_t silu'(z_t)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// ---------------------------------------------------------------------------------------
// SIMD vector of W floats. Three implementations with the same interface.
// exp2(x) = 2^k p(f), k = round(x), f = x - k: p is a degree-6 fit of 2^f on [-1/2, 1/2]
// (relative error ~1e-7 in fp32, the size of the argument's own rounding).
// ---------------------------------------------------------------------------------------
constexpr float kP0 = 1.000000000e+00f, kP1 = 6.931471825e-01f, kP2 = 2.402264625e-01f,
                kP3 = 5.550328642e-02f, kP4 = 9.618489072e-03f, kP5 = 1.339993090e-03f,
                kP6 = 1.534580515e-04f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";
struct Vf {
  static constexpr int W = 16;
  __m512 v;
  Vf() = default;
  Vf(__m512 x) : v(x) {}
  static inline Vf zero() { return _mm512_setzero_ps(); }
  static inline Vf bcast(float x) { return _mm512_set1_ps(x); }
  static inline Vf load(const float* p) { return _mm512_load_ps(p); }
  inline void store(float* p) const { _mm512_store_ps(p, v); }
};
inline Vf operator+(Vf a, Vf b) { return _mm512_add_ps(a.v, b.v); }
inline Vf operator-(Vf a, Vf b) { return _mm512_sub_ps(a.v, b.v); }
inline Vf operator*(Vf a, Vf b) { return _mm512_mul_ps(a.v, b.v); }
inline Vf operator/(Vf a, Vf b) { return _mm512_div_ps(a.v, b.v); }
inline Vf vfma(Vf a, Vf b, Vf c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
inline Vf vmax(Vf a, Vf b) { return _mm512_max_ps(a.v, b.v); }
inline Vf vabs(Vf a) { return _mm512_abs_ps(a.v); }
inline Vf vexp2(Vf x) {
  // scalef(p, k) = p * 2^k handles overflow (inf) and underflow (0) by itself.
  __m512 k = _mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(x.v, k);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kP6), f, _mm512_set1_ps(kP5));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kP0));
  return _mm512_scalef_ps(p, k);
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr const char* kIsa = "avx2";
struct Vf {
  static constexpr int W = 8;
  __m256 v;
  Vf() = default;
  Vf(__m256 x) : v(x) {}
  static inline Vf zero() { return _mm256_setzero_ps(); }
  static inline Vf bcast(float x) { return _mm256_set1_ps(x); }
  static inline Vf load(const float* p) { return _mm256_load_ps(p); }
  inline void store(float* p) const { _mm256_store_ps(p, v); }
};
inline Vf operator+(Vf a, Vf b) { return _mm256_add_ps(a.v, b.v); }
inline Vf operator-(Vf a, Vf b) { return _mm256_sub_ps(a.v, b.v); }
inline Vf operator*(Vf a, Vf b) { return _mm256_mul_ps(a.v, b.v); }
inline Vf operator/(Vf a, Vf b) { return _mm256_div_ps(a.v, b.v); }
inline Vf vfma(Vf a, Vf b, Vf c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
inline Vf vmax(Vf a, Vf b) { return _mm256_max_ps(a.v, b.v); }
inline Vf vabs(Vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
inline Vf vexp2(Vf x) {
  // Clamp so that 2^k stays a normal float (or exactly 0 at k = -127); results beyond
  // +-127 octaves saturate instead of reaching inf / denormals. min / max return their
  // second operand when one is NaN, so a NaN x stays NaN (and so do p and the result).
  __m256 xc = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(_mm256_set1_ps(-127.0f), x.v));
  __m256 k = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_sub_ps(xc, k);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kP6), f, _mm256_set1_ps(kP5));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kP0));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#else
constexpr const char* kIsa = "generic";
// Portable fallback: GCC / Clang vector extensions of the baseline vector width, 16 bytes
// (SSE2 on x86-64, NEON on ARM), so every operation maps to one native instruction.
typedef float vf4 __attribute__((vector_size(16)));
typedef int32_t vi4 __attribute__((vector_size(16)));
struct Vf {
  static constexpr int W = 4;
  vf4 v;
  Vf() = default;
  Vf(vf4 x) : v(x) {}
  static inline Vf zero() { return vf4{}; }
  static inline Vf bcast(float x) { return vf4{} + x; }
  static inline Vf load(const float* p) { vf4 r; std::memcpy(&r, p, sizeof(r)); return r; }
  inline void store(float* p) const { std::memcpy(p, &v, sizeof(v)); }
};
inline Vf operator+(Vf a, Vf b) { return a.v + b.v; }
inline Vf operator-(Vf a, Vf b) { return a.v - b.v; }
inline Vf operator*(Vf a, Vf b) { return a.v * b.v; }
inline Vf operator/(Vf a, Vf b) { return a.v / b.v; }
inline Vf vfma(Vf a, Vf b, Vf c) { return a.v * b.v + c.v; }
inline Vf vmax(Vf a, Vf b) { return a.v > b.v ? a.v : b.v; }
inline Vf vabs(Vf a) { return (vf4)((vi4)a.v & 0x7fffffff); }
inline Vf vexp2(Vf x) {
  // As the AVX2 version; rounds with the 1.5 * 2^23 trick, which needs IEEE evaluation order
  // (this file is never compiled with -ffast-math / -fassociative-math).
  const vf4 lo = vf4{} - 127.0f, hi = vf4{} + 127.0f, magic = vf4{} + 12582912.0f;
  vf4 xc = x.v < lo ? lo : x.v;
  xc = xc > hi ? hi : xc;
  const vf4 k = (xc + magic) - magic;
  const vf4 f = xc - k;
  vf4 p = f * kP6 + kP5;
  p = p * f + kP4;
  p = p * f + kP3;
  p = p * f + kP2;
  p = p * f + kP1;
  p = p * f + kP0;
  const vi4 e = (__builtin_convertvector(k, vi4) + 127) << 23;
  return p * (vf4)e;  // a NaN x stays NaN through the clamps, so p and the result are NaN
}
#endif

constexpr int W = Vf::W;

inline Vf vexp(Vf x) { return vexp2(x * Vf::bcast(kLog2e)); }
inline Vf vsigmoid(Vf x) { return Vf::bcast(1.f) / (Vf::bcast(1.f) + vexp(Vf::zero() - x)); }
// log(1 + y) for y in [0, 1]: 2 atanh(s), s = y / (2 + y) in [0, 1/3] (no cancellation).
inline Vf vlog1p_unit(Vf y) {
  Vf s = y / (y + Vf::bcast(2.f));
  Vf s2 = s * s;
  Vf p = Vf::bcast(1.f / 15.f);
  p = vfma(p, s2, Vf::bcast(1.f / 13.f));
  p = vfma(p, s2, Vf::bcast(1.f / 11.f));
  p = vfma(p, s2, Vf::bcast(1.f / 9.f));
  p = vfma(p, s2, Vf::bcast(1.f / 7.f));
  p = vfma(p, s2, Vf::bcast(1.f / 5.f));
  p = vfma(p, s2, Vf::bcast(1.f / 3.f));
  p = vfma(p, s2, Vf::bcast(1.f));
  return (s + s) * p;
}
// softplus(x) = max(x, 0) + log1p(exp(-|x|)); equals torch's (threshold 20) in fp32.
inline Vf vsoftplus(Vf x) { return vmax(x, Vf::zero()) + vlog1p_unit(vexp(Vf::zero() - vabs(x))); }

// 64-byte aligned scratch that frees itself.
struct Scratch {
  float* p = nullptr;
  explicit Scratch(size_t n) {
    size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    TORCH_CHECK(p != nullptr, "selective_scan_cpu: out of memory (", bytes, " bytes)");
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// ---------------------------------------------------------------------------------------
// Tiles: [rows <= W channels][T steps] slices of a [.., E, L] tensor <-> [T][W] vectors.
// ---------------------------------------------------------------------------------------
#if defined(__AVX512F__)
// In place 16 x 16 transpose: afterwards r[j] holds what was column j.
inline void transpose16(__m512 r[16]) {
  __m512 s[16];
  for (int i = 0; i < 16; i += 2) {
    s[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    s[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(s[i], s[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(s[i], s[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(s[i + 1], s[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(s[i + 1], s[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    s[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    s[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    s[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    s[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(s[i], s[i + 8], 0x88);
    r[i + 4] = _mm512_shuffle_f32x4(s[i + 4], s[i + 12], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(s[i], s[i + 8], 0xDD);
    r[i + 12] = _mm512_shuffle_f32x4(s[i + 4], s[i + 12], 0xDD);
  }
}
inline __mmask16 first_n(int n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFFu : ((1u << n) - 1u)); }

// dst[t][r] = src[r * ld + t] for r < rows, t < T; lanes r >= rows are zero.
inline void load_tile(const float* src, int64_t ld, int rows, int T, float* dst) {
  for (int t = 0; t < T; t += 16) {
    const int n = std::min(16, T - t);
    const __mmask16 m = first_n(n);
    __m512 r[16];
    if (n == 16 && rows == 16) {  // (masked loads are slower on some CPUs: keep them for the edges)
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld + t);
    } else {
      for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + i * ld + t) : _mm512_setzero_ps();
    }
    transpose16(r);
    if (n == 16) {  // (a variable trip count becomes a memcpy of r through the stack)
      for (int j = 0; j < 16; ++j) _mm512_store_ps(dst + (t + j) * 16, r[j]);
    } else {
      for (int j = 0; j < 16; ++j)
        if (j < n) _mm512_store_ps(dst + (t + j) * 16, r[j]);
    }
  }
}
// dst[r * ld + t] = src[t][r] for r < rows, t < T.
inline void store_tile(const float* src, int64_t ld, int rows, int T, float* dst) {
  for (int t = 0; t < T; t += 16) {
    const int n = std::min(16, T - t);
    const __mmask16 m = first_n(n);
    __m512 r[16];
    for (int j = 0; j < 16; ++j) r[j] = j < n ? _mm512_load_ps(src + (t + j) * 16) : _mm512_setzero_ps();
    transpose16(r);
    if (n == 16) {
      for (int i = 0; i < rows; ++i) _mm512_storeu_ps(dst + i * ld + t, r[i]);
    } else {
      for (int i = 0; i < rows; ++i) _mm512_mask_storeu_ps(dst + i * ld + t, m, r[i]);
    }
  }
}
// sums[i] = sum of the W lanes of v[i], i < M.
inline void reduce_lanes(const float* v, int64_t M, float* sums) {
  for (int64_t i = 0; i < M; i += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, M - i));
    __m512 r[16];
    for (int j = 0; j < 16; ++j) r[j] = j < n ? _mm512_load_ps(v + (i + j) * 16) : _mm512_setzero_ps();
    transpose16(r);  // r[lane][j]
    for (int k = 8; k >= 1; k >>= 1)
      for (int j = 0; j < k; ++j) r[j] = _mm512_add_ps(r[j], r[j + k]);
    _mm512_mask_storeu_ps(sums + i, first_n(n), r[0]);
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
// In place 8 x 8 transpose: afterwards r[j] holds what was column j.
inline void transpose8(__m256 r[8]) {
  __m256 s[8];
  for (int i = 0; i < 8; i += 2) {
    s[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    s[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(s[i], s[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(s[i], s[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(s[i + 1], s[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(s[i + 1], s[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    s[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    s[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = s[i];
}
inline __m256i first_n(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline void load_tile(const float* src, int64_t ld, int rows, int T, float* dst) {
  for (int t = 0; t < T; t += 8) {
    const int n = std::min(8, T - t);
    const __m256i m = first_n(n);
    __m256 r[8];
    if (n == 8 && rows == 8) {
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld + t);
    } else {
      for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_maskload_ps(src + i * ld + t, m) : _mm256_setzero_ps();
    }
    transpose8(r);
    if (n == 8) {
      for (int j = 0; j < 8; ++j) _mm256_store_ps(dst + (t + j) * 8, r[j]);
    } else {
      for (int j = 0; j < 8; ++j)
        if (j < n) _mm256_store_ps(dst + (t + j) * 8, r[j]);
    }
  }
}
inline void store_tile(const float* src, int64_t ld, int rows, int T, float* dst) {
  for (int t = 0; t < T; t += 8) {
    const int n = std::min(8, T - t);
    const __m256i m = first_n(n);
    __m256 r[8];
    for (int j = 0; j < 8; ++j) r[j] = j < n ? _mm256_load_ps(src + (t + j) * 8) : _mm256_setzero_ps();
    transpose8(r);
    if (n == 8) {  // (masked stores are slow on some CPUs: keep them for the edges)
      for (int i = 0; i < rows; ++i) _mm256_storeu_ps(dst + i * ld + t, r[i]);
    } else {
      for (int i = 0; i < rows; ++i) _mm256_maskstore_ps(dst + i * ld + t, m, r[i]);
    }
  }
}
inline void reduce_lanes(const float* v, int64_t M, float* sums) {
  for (int64_t i = 0; i < M; i += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, M - i));
    __m256 r[8];
    for (int j = 0; j < 8; ++j) r[j] = j < n ? _mm256_load_ps(v + (i + j) * 8) : _mm256_setzero_ps();
    transpose8(r);
    for (int k = 4; k >= 1; k >>= 1)
      for (int j = 0; j < k; ++j) r[j] = _mm256_add_ps(r[j], r[j + k]);
    _mm256_maskstore_ps(sums + i, first_n(n), r[0]);
  }
}
#else
inline void load_tile(const float* src, int64_t ld, int rows, int T, float* dst) {
  for (int t = 0; t < T; ++t)
    for (int r = rows; r < W; ++r) dst[t * W + r] = 0.f;
  for (int r = 0; r < rows; ++r) {
    const float* s = src + r * ld;
    for (int t = 0; t < T; ++t) dst[t * W + r] = s[t];
  }
}
inline void store_tile(const float* src, int64_t ld, int rows, int T, float* dst) {
  for (int r = 0; r < rows; ++r) {
    float* d = dst + r * ld;
    for (int t = 0; t < T; ++t) d[t] = src[t * W + r];
  }
}
inline void reduce_lanes(const float* v, int64_t M, float* sums) {
  for (int64_t i = 0; i < M; ++i) {
    float s = 0.f;
    for (int r = 0; r < W; ++r) s += v[i * W + r];
    sums[i] = s;
  }
}
#endif

// Ask for the cache lines of a [rows][T] tile ahead of its use (write = 1 for outputs).
template <int WRITE>
inline void prefetch_tile(const float* src, int64_t ld, int rows, int T) {
  for (int r = 0; r < rows; ++r) {
    const char* p = reinterpret_cast<const char*>(src + r * ld);
    const char* e = reinterpret_cast<const char*>(src + r * ld + T);
    for (; p < e; p += 64) __builtin_prefetch(p, WRITE, 3);
    __builtin_prefetch(e - 1, WRITE, 3);
  }
}

// Per-block constants, padded with zeros past the last channel.
inline void load_lanes(const float* src, int rows, float* dst) {
  for (int r = 0; r < W; ++r) dst[r] = (src != nullptr && r < rows) ? src[r] : 0.f;
}

// ---------------------------------------------------------------------------------------
// Forward over one chunk and one register tile of NT state rows [n0, n0 + NT).
//   h    [N][W]    state (in / out), rows n0.. used
//   A2   [N][W]    A * log2(e)
//   dl   [T][W]    delta (after bias / softplus);  dx [T][W] = delta * u
//   Bn, Cn         &B[b][n0][t0], &C[b][n0][t0], row stride ld = L
//   y    [T][W]    += <C_t, h_t> over these rows
// RECORD (backward recompute): also hs[t][n] = h_t, vC[t][n] += g_t h_t (for dC).
// ---------------------------------------------------------------------------------------
template <int NT, bool RECORD>
inline void fwd_tile(int T, int N, int n0, const float* dl, const float* dx, const float* A2, float* h,
                     const float* Bn, const float* Cn, int64_t ld, float* y,
                     float* hs, const float* g, float* vC) {
  Vf a[NT], hh[NT];
  for (int j = 0; j < NT; ++j) {
    a[j] = Vf::load(A2 + (n0 + j) * W);
    hh[j] = Vf::load(h + (n0 + j) * W);
  }
  for (int t = 0; t < T; ++t) {
    const Vf d = Vf::load(dl + t * W), x = Vf::load(dx + t * W);
    Vf acc = Vf::zero();
    for (int j = 0; j < NT; ++j) {
      const Vf dA = vexp2(d * a[j]);
      hh[j] = vfma(dA, hh[j], x * Vf::bcast(Bn[j * ld + t]));
      acc = vfma(hh[j], Vf::bcast(Cn[j * ld + t]), acc);
    }
    if (RECORD) {
      const Vf gt = Vf::load(g + t * W);
      for (int j = 0; j < NT; ++j) {
        float* hp = hs + (static_cast<int64_t>(t) * N + n0 + j) * W;
        hh[j].store(hp);
        float* cp = vC + (static_cast<int64_t>(t) * N + n0 + j) * W;
        vfma(gt, hh[j], Vf::load(cp)).store(cp);
      }
    }
    (Vf::load(y + t * W) + acc).store(y + t * W);
  }
  for (int j = 0; j < NT; ++j) hh[j].store(h + (n0 + j) * W);
}

// State rows per register tile: as many as the vector registers hold (state + A per row).
#if defined(__AVX512F__)
constexpr int kTile = 8;   // 32 zmm registers
#elif defined(__AVX2__)
constexpr int kTile = 4;   // 16 ymm registers
#else
constexpr int kTile = 4;   // SSE2: 16 xmm registers
#endif

template <int NT, bool RECORD>
inline int fwd_tiles(int n, int T, int N, const float* dl, const float* dx, const float* A2, float* h,
                     const float* Bb, const float* Cb, int64_t ld, float* y, float* hs, const float* g, float* vC) {
  for (; n + NT <= N; n += NT) fwd_tile<NT, RECORD>(T, N, n, dl, dx, A2, h, Bb + n * ld, Cb + n * ld, ld, y, hs, g, vC);
  return n;
}

template <bool RECORD>
inline void fwd_rows(int T, int N, const float* dl, const float* dx, const float* A2, float* h,
                     const float* Bb, const float* Cb, int64_t ld, float* y,
                     float* hs, const float* g, float* vC) {
  int n = fwd_tiles<kTile, RECORD>(0, T, N, dl, dx, A2, h, Bb, Cb, ld, y, hs, g, vC);
  if (kTile > 4) n = fwd_tiles<(kTile > 4 ? 4 : 1), RECORD>(n, T, N, dl, dx, A2, h, Bb, Cb, ld, y, hs, g, vC);
  if (kTile > 2) n = fwd_tiles<(kTile > 2 ? 2 : 1), RECORD>(n, T, N, dl, dx, A2, h, Bb, Cb, ld, y, hs, g, vC);
  fwd_tiles<1, RECORD>(n, T, N, dl, dx, A2, h, Bb, Cb, ld, y, hs, g, vC);
}

// ---------------------------------------------------------------------------------------
// Backward over one chunk (reverse time) and one register tile of state rows.
//   G_t = g_t C_t + dA_{t+1} G_{t+1}          (carry holds dA_{t+1} G_{t+1}, in / out)
//   Wt  = G_t h_{t-1} dA_t  ->  WS[t] += sum_n Wt A2 ; dAacc += Wt delta_t
//   GB[t] += sum_n G_t B_t ;  vB[t][n] += G_t delta_t u_t   (for dB)
// hs [T][N][W] holds h_t of this chunk, h0 [N][W] the state before it.
// ---------------------------------------------------------------------------------------
template <int NT>
inline void bwd_tile(int T, int N, int n0, const float* dl, const float* dx, const float* g, const float* A2,
                     float* carry, float* dAacc, const float* hs, const float* h0,
                     const float* Bn, const float* Cn, int64_t ld, float* vB, float* GB, float* WS) {
  Vf a[NT], c[NT], acc[NT];
  for (int j = 0; j < NT; ++j) {
    a[j] = Vf::load(A2 + (n0 + j) * W);
    c[j] = Vf::load(carry + (n0 + j) * W);
    acc[j] = Vf::load(dAacc + (n0 + j) * W);
  }
  for (int t = T - 1; t >= 0; --t) {
    const Vf gt = Vf::load(g + t * W), d = Vf::load(dl + t * W), x = Vf::load(dx + t * W);
    const float* hp = t > 0 ? hs + (static_cast<int64_t>(t - 1) * N + n0) * W : h0 + n0 * W;
    float* vb = vB + (static_cast<int64_t>(t) * N + n0) * W;
    Vf gb = Vf::zero(), ws = Vf::zero();
    for (int j = 0; j < NT; ++j) {
      const Vf dA = vexp2(d * a[j]);
      const Vf G = vfma(gt, Vf::bcast(Cn[j * ld + t]), c[j]);
      const Vf Wt = G * Vf::load(hp + j * W) * dA;
      ws = vfma(Wt, a[j], ws);
      acc[j] = vfma(Wt, d, acc[j]);
      c[j] = dA * G;
      gb = vfma(G, Vf::bcast(Bn[j * ld + t]), gb);
      vfma(G, x, Vf::load(vb + j * W)).store(vb + j * W);
    }
    (Vf::load(GB + t * W) + gb).store(GB + t * W);
    (Vf::load(WS + t * W) + ws).store(WS + t * W);
  }
  for (int j = 0; j < NT; ++j) {
    c[j].store(carry + (n0 + j) * W);
    acc[j].store(dAacc + (n0 + j) * W);
  }
}

template <int NT>
inline int bwd_tiles(int n, int T, int N, const float* dl, const float* dx, const float* g, const float* A2,
                     float* carry, float* dAacc, const float* hs, const float* h0,
                     const float* Bb, const float* Cb, int64_t ld, float* vB, float* GB, float* WS) {
  for (; n + NT <= N; n += NT)
    bwd_tile<NT>(T, N, n, dl, dx, g, A2, carry, dAacc, hs, h0, Bb + n * ld, Cb + n * ld, ld, vB, GB, WS);
  return n;
}

inline void bwd_rows(int T, int N, const float* dl, const float* dx, const float* g, const float* A2,
                     float* carry, float* dAacc, const float* hs, const float* h0,
                     const float* Bb, const float* Cb, int64_t ld, float* vB, float* GB, float* WS) {
  int n = bwd_tiles<kTile>(0, T, N, dl, dx, g, A2, carry, dAacc, hs, h0, Bb, Cb, ld, vB, GB, WS);
  if (kTile > 4) n = bwd_tiles<(kTile > 4 ? 4 : 1)>(n, T, N, dl, dx, g, A2, carry, dAacc, hs, h0, Bb, Cb, ld, vB, GB, WS);
  if (kTile > 2) n = bwd_tiles<(kTile > 2 ? 2 : 1)>(n, T, N, dl, dx, g, A2, carry, dAacc, hs, h0, Bb, Cb, ld, vB, GB, WS);
  bwd_tiles<1>(n, T, N, dl, dx, g, A2, carry, dAacc, hs, h0, Bb, Cb, ld, vB, GB, WS);
}

// A [E, N] -> A * log2(e) in blocks [n_blocks][N][W], zero-padded (64-byte aligned).
at::Tensor blocked_A2(const at::Tensor& A, int64_t nblk) {
  const int64_t E = A.size(0), N = A.size(1);
  at::Tensor out = at::zeros({nblk, N, W}, A.options());
  const float* a = A.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) o[((e / W) * N + n) * W + e % W] = a[e * N + n] * kLog2e;
  return out;
}

const float* opt_ptr(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<float>() : nullptr;
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                  const at::Tensor& Cm, const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                  const c10::optional<at::Tensor>& bias) {
  auto ok = [](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), "selective_scan_cpu: ", name, " must be a CPU tensor");
    TORCH_CHECK(t.scalar_type() == at::kFloat, "selective_scan_cpu: ", name, " must be float32");
    TORCH_CHECK(t.is_contiguous(), "selective_scan_cpu: ", name, " must be contiguous");
  };
  ok(u, "u"); ok(delta, "delta"); ok(A, "A"); ok(Bm, "B"); ok(Cm, "C");
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan_cpu: u, delta must be [batch, E, L]");
  const int64_t Bt = u.size(0), E = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == E, "selective_scan_cpu: A must be [E, N]");
  const int64_t N = A.size(1);
  TORCH_CHECK(Bm.dim() == 3 && Bm.size(0) == Bt && Bm.size(1) == N && Bm.size(2) == L,
              "selective_scan_cpu: B must be [batch, N, L]");
  TORCH_CHECK(Cm.sizes() == Bm.sizes(), "selective_scan_cpu: C must be [batch, N, L]");
  if (D.has_value() && D->defined()) { ok(*D, "D"); TORCH_CHECK(D->numel() == E, "selective_scan_cpu: D must be [E]"); }
  if (bias.has_value() && bias->defined()) {
    ok(*bias, "delta_bias");
    TORCH_CHECK(bias->numel() == E, "selective_scan_cpu: delta_bias must be [E]");
  }
  if (z.has_value() && z->defined()) { ok(*z, "z"); TORCH_CHECK(z->sizes() == u.sizes(), "selective_scan_cpu: z must be [batch, E, L]"); }
}

// Prepare one chunk's per-step vectors of a channel block:
//   dr = delta + bias (raw, before softplus), dl = softplus(dr) or dr, ut = u, dx = dl * u.
inline void prep_delta(int T, const float* biasv, bool softplus, float* dr, float* dl, const float* ut, float* dx) {
  const Vf bv = Vf::load(biasv);
  for (int t = 0; t < T; ++t) {
    Vf x = Vf::load(dr + t * W) + bv;
    if (dr != dl) x.store(dr + t * W);
    Vf d = softplus ? vsoftplus(x) : x;
    d.store(dl + t * W);
    (d * Vf::load(ut + t * W)).store(dx + t * W);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Forward. Returns {out [batch, E, L], states [batch, n_chunks, n_blocks, N, W] (or
// undefined), last_state [batch, E, N] (or undefined)}.
// ---------------------------------------------------------------------------------------
std::vector<at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& Bm, const at::Tensor& Cm, const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                 bool softplus, int64_t chunk, bool save_states, bool want_last) {
  check_inputs(u, delta, A, Bm, Cm, D, z, bias);
  TORCH_CHECK(chunk >= 1, "selective_scan_cpu: chunk must be >= 1");
  const int64_t Bt = u.size(0), E = u.size(1), L = u.size(2), N = A.size(1);
  const int64_t NB = (E + W - 1) / W, NC = (L + chunk - 1) / chunk;
  at::Tensor out = at::empty({Bt, E, L}, u.options());
  at::Tensor states = save_states ? at::empty({Bt, NC, NB, N, W}, u.options()) : at::Tensor();
  at::Tensor last = want_last ? at::empty({Bt, E, N}, u.options()) : at::Tensor();
  if (Bt == 0 || E == 0 || L == 0) {
    if (want_last) last.zero_();
    return {out, states, last};
  }
  const at::Tensor A2t = blocked_A2(A, NB);
    const float* A2 = A2t.data_ptr<float>();
  const float *up = u.data_ptr<float>(), *dp = delta.data_ptr<float>(), *Bp = Bm.data_ptr<float>(),
              *Cp = Cm.data_ptr<float>(), *Dp = opt_ptr(D), *zp = opt_ptr(z), *bp = opt_ptr(bias);
  float* op = out.data_ptr<float>();
  float* sp = save_states ? states.data_ptr<float>() : nullptr;
  float* lp = want_last ? last.data_ptr<float>() : nullptr;
  const int CH = static_cast<int>(std::min<int64_t>(chunk, L));

  at::parallel_for(0, Bt * NB, 1, [&](int64_t begin, int64_t end) {
    Scratch buf(static_cast<size_t>(5 * CH + N + 2) * W);
    float *dl = buf.p, *ut = dl + CH * W, *dx = ut + CH * W, *y = dx + CH * W, *zt = y + CH * W;
    float *h = zt + CH * W, *biasv = h + N * W, *Dv = biasv + W;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / NB, blk = task % NB, e0 = blk * W;
      const int rows = static_cast<int>(std::min<int64_t>(W, E - e0));
      const int64_t off = (b * E + e0) * L;
      const float *Bb = Bp + b * N * L, *Cb = Cp + b * N * L;
      const float* A2b = A2 + blk * N * W;
      load_lanes(bp ? bp + e0 : nullptr, rows, biasv);
      load_lanes(Dp ? Dp + e0 : nullptr, rows, Dv);
      std::fill(h, h + N * W, 0.f);
      for (int64_t c = 0; c < NC; ++c) {
        const int64_t t0 = c * chunk;
        const int T = static_cast<int>(std::min<int64_t>(chunk, L - t0));
        if (sp) std::memcpy(sp + ((b * NC + c) * NB + blk) * N * W, h, sizeof(float) * N * W);
        if (c + 1 < NC) {  // the next chunk's rows
          const int64_t t1 = t0 + chunk;
          const int nT = static_cast<int>(std::min<int64_t>(chunk, L - t1));
          prefetch_tile<0>(dp + off + t1, L, rows, nT);
          prefetch_tile<0>(up + off + t1, L, rows, nT);
          if (zp) prefetch_tile<0>(zp + off + t1, L, rows, nT);
        }
        load_tile(dp + off + t0, L, rows, T, dl);
        load_tile(up + off + t0, L, rows, T, ut);
        prep_delta(T, biasv, softplus, dl, dl, ut, dx);
        const Vf dv = Vf::load(Dv);
        for (int t = 0; t < T; ++t) (dv * Vf::load(ut + t * W)).store(y + t * W);
        fwd_rows<false>(T, static_cast<int>(N), dl, dx, A2b, h, Bb + t0, Cb + t0, L, y, nullptr, nullptr, nullptr);
        if (zp) {
          load_tile(zp + off + t0, L, rows, T, zt);
          for (int t = 0; t < T; ++t) {
            const Vf zz = Vf::load(zt + t * W);
            (Vf::load(y + t * W) * zz * vsigmoid(zz)).store(y + t * W);
          }
        }
        store_tile(y, L, rows, T, op + off + t0);
      }
      if (lp)
        for (int r = 0; r < rows; ++r)
          for (int64_t n = 0; n < N; ++n) lp[(b * E + e0 + r) * N + n] = h[n * W + r];
    }
  });
  return {out, states, last};
}

// ---------------------------------------------------------------------------------------
// Backward. Returns {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias}; dD / dz / ddelta_bias
// are undefined when D / z / delta_bias are absent.
// ---------------------------------------------------------------------------------------
std::vector<at::Tensor> scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& Bm, const at::Tensor& Cm, const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& dout, const at::Tensor& states, bool softplus, int64_t chunk) {
  check_inputs(u, delta, A, Bm, Cm, D, z, bias);
  TORCH_CHECK(dout.scalar_type() == at::kFloat && dout.is_contiguous() && dout.sizes() == u.sizes(),
              "selective_scan_cpu: dout must be contiguous float32 [batch, E, L]");
  const int64_t Bt = u.size(0), E = u.size(1), L = u.size(2), N = A.size(1);
  const int64_t NB = (E + W - 1) / W, NC = (L + chunk - 1) / chunk;
  TORCH_CHECK(states.defined() && states.is_contiguous() && states.numel() == Bt * NC * NB * N * W,
              "selective_scan_cpu: saved states do not match the inputs");
  const bool hasD = opt_ptr(D) != nullptr, hasZ = opt_ptr(z) != nullptr, hasBias = opt_ptr(bias) != nullptr;

  // Channel groups: the backward task is (batch, group); each writes its own dB / dC slab.
  const int64_t nth = std::max<int64_t>(1, at::get_num_threads());
  int64_t G = 1;
  while (G < NB && (Bt * G) % nth != 0 && Bt * G < 8 * nth) ++G;

  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(delta);
  at::Tensor dz = hasZ ? at::empty_like(u) : at::Tensor();
  at::Tensor dA_part = at::zeros({Bt, E, N}, u.options());
  at::Tensor dD_part = at::zeros({Bt, E}, u.options()), dbias_part = at::zeros({Bt, E}, u.options());
  at::Tensor dB_part = at::empty({G, Bt, N, L}, u.options()), dC_part = at::empty({G, Bt, N, L}, u.options());
  if (Bt == 0 || E == 0 || L == 0 || N == 0) {
    dB_part.zero_(); dC_part.zero_();
  } else {
    const at::Tensor A2t = blocked_A2(A, NB);
    const float* A2 = A2t.data_ptr<float>();
    const float *up = u.data_ptr<float>(), *dp = delta.data_ptr<float>(), *Bp = Bm.data_ptr<float>(),
                *Cp = Cm.data_ptr<float>(), *Dp = opt_ptr(D), *zp = opt_ptr(z), *bp = opt_ptr(bias),
                *gp = dout.data_ptr<float>(), *sp = states.data_ptr<float>();
    float *dup = du.data_ptr<float>(), *ddp = ddelta.data_ptr<float>(), *dzp = hasZ ? dz.data_ptr<float>() : nullptr;
    float *dAp = dA_part.data_ptr<float>(), *dDp = dD_part.data_ptr<float>(), *dbp = dbias_part.data_ptr<float>();
    float *dBp = dB_part.data_ptr<float>(), *dCp = dC_part.data_ptr<float>();
    const int CH = static_cast<int>(std::min<int64_t>(chunk, L));
    const int Ni = static_cast<int>(N);

    at::parallel_for(0, Bt * G, 1, [&](int64_t begin, int64_t end) {
      const int64_t maxblk = (NB + G - 1) / G;
      // Per-step tiles [CH][W]: dr (delta raw), dl, ut, dx, go (dout), zt, sz (sigmoid z), g, ys, GB, WS.
      Scratch tiles(static_cast<size_t>(11 * CH) * W);
      // Per-chunk state-sized buffers [CH][N][W]: hs, vB, vC.
      Scratch big(static_cast<size_t>(3 * CH + 1) * N * W + 2 * CH * N);
      // Per-block carries [blk][N][W]: carry (dA G), dAacc; per-block lanes: dD, dbias, bias, D.
      Scratch perblk(static_cast<size_t>(maxblk) * (2 * N + 4) * W);
      float *dr = tiles.p, *dl = dr + CH * W, *ut = dl + CH * W, *dx = ut + CH * W, *go = dx + CH * W,
            *zt = go + CH * W, *sz = zt + CH * W, *g = sz + CH * W, *ys = g + CH * W, *GB = ys + CH * W, *WS = GB + CH * W;
      float *hs = big.p, *vB = hs + CH * N * W, *vC = vB + CH * N * W, *hcur = vC + CH * N * W, *sums = hcur + N * W;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / G, grp = task % G;
        const int64_t blk0 = grp * NB / G, blk1 = (grp + 1) * NB / G, nblk = blk1 - blk0;
        float *carry = perblk.p, *dAacc = carry + nblk * N * W, *dDacc = dAacc + nblk * N * W,
              *dbacc = dDacc + nblk * W, *biasv = dbacc + nblk * W, *Dv = biasv + nblk * W;
        std::fill(carry, carry + nblk * (2 * N + 2) * W, 0.f);
        for (int64_t k = 0; k < nblk; ++k) {
          const int64_t e0 = (blk0 + k) * W;
          const int rows = static_cast<int>(std::min<int64_t>(W, E - e0));
          load_lanes(bp ? bp + e0 : nullptr, rows, biasv + k * W);
          load_lanes(Dp ? Dp + e0 : nullptr, rows, Dv + k * W);
        }
        const float *Bb = Bp + b * N * L, *Cb = Cp + b * N * L;
        float* dBo = dBp + (grp * Bt + b) * N * L;
        float* dCo = dCp + (grp * Bt + b) * N * L;
        for (int64_t c = NC - 1; c >= 0; --c) {
          const int64_t t0 = c * chunk;
          const int T = static_cast<int>(std::min<int64_t>(chunk, L - t0));
          std::fill(vB, vB + static_cast<int64_t>(T) * N * W, 0.f);
          std::fill(vC, vC + static_cast<int64_t>(T) * N * W, 0.f);
          for (int64_t k = 0; k < nblk; ++k) {
            const int64_t blk = blk0 + k, e0 = blk * W;
            const int rows = static_cast<int>(std::min<int64_t>(W, E - e0));
            const int64_t off = (b * E + e0) * L + t0;
            const float* A2b = A2 + blk * N * W;
            const float* h0 = sp + ((b * NC + c) * NB + blk) * N * W;
            {  // Prefetch the next unit: the next block of this chunk, else the first of the previous chunk.
              const int64_t nk = k + 1 < nblk ? k + 1 : 0, nc = k + 1 < nblk ? c : c - 1;
              if (nc >= 0) {
                const int64_t ne0 = (blk0 + nk) * W, nt0 = nc * chunk;
                const int nrows = static_cast<int>(std::min<int64_t>(W, E - ne0));
                const int nT = static_cast<int>(std::min<int64_t>(chunk, L - nt0));
                const int64_t noff = (b * E + ne0) * L + nt0;
                prefetch_tile<0>(dp + noff, L, nrows, nT);
                prefetch_tile<0>(up + noff, L, nrows, nT);
                prefetch_tile<0>(gp + noff, L, nrows, nT);
                if (hasZ) prefetch_tile<0>(zp + noff, L, nrows, nT);
              }
            }
            load_tile(dp + off, L, rows, T, dr);
            load_tile(up + off, L, rows, T, ut);
            load_tile(gp + off, L, rows, T, go);
            prep_delta(T, biasv + k * W, softplus, dr, dl, ut, dx);
            if (hasZ) {
              load_tile(zp + off, L, rows, T, zt);
              for (int t = 0; t < T; ++t) {
                const Vf zz = Vf::load(zt + t * W), s = vsigmoid(zz);
                s.store(sz + t * W);
                (Vf::load(go + t * W) * zz * s).store(g + t * W);
              }
            } else {
              std::memcpy(g, go, sizeof(float) * T * W);
            }
            std::fill(ys, ys + T * W, 0.f);
            std::fill(GB, GB + T * W, 0.f);
            std::fill(WS, WS + T * W, 0.f);
            // Recompute h_t of this chunk (and y_t, dC's partial sums) from the saved state.
            std::memcpy(hcur, h0, sizeof(float) * N * W);
            fwd_rows<true>(T, Ni, dl, dx, A2b, hcur, Bb + t0, Cb + t0, L, ys, hs, g, vC);
            bwd_rows(T, Ni, dl, dx, g, A2b, carry + k * N * W, dAacc + k * N * W, hs, h0, Bb + t0, Cb + t0, L,
                     vB, GB, WS);
            // Per-step chain rules (delta, u, D, z), written back as [E, L] rows.
            const Vf Dvv = Vf::load(Dv + k * W), ln2 = Vf::bcast(kLn2);
            Vf dDsum = Vf::load(dDacc + k * W), dbsum = Vf::load(dbacc + k * W);
            for (int t = 0; t < T; ++t) {
              const Vf uu = Vf::load(ut + t * W), d = Vf::load(dl + t * W), gt = Vf::load(g + t * W);
              const Vf gb = Vf::load(GB + t * W);
              Vf dd = vfma(uu, gb, ln2 * Vf::load(WS + t * W));
              if (softplus) dd = dd * vsigmoid(Vf::load(dr + t * W));
              dbsum = dbsum + dd;
              dDsum = vfma(gt, uu, dDsum);
              dd.store(dr + t * W);                         // ddelta
              vfma(d, gb, Dvv * gt).store(dx + t * W);      // du
              if (hasZ) {
                const Vf zz = Vf::load(zt + t * W), s = Vf::load(sz + t * W);
                const Vf yz = vfma(Dvv, uu, Vf::load(ys + t * W));
                const Vf dsilu = s * vfma(zz, Vf::bcast(1.f) - s, Vf::bcast(1.f));
                (Vf::load(go + t * W) * yz * dsilu).store(zt + t * W);  // dz
              }
            }
            dDsum.store(dDacc + k * W);
            dbsum.store(dbacc + k * W);
            store_tile(dr, L, rows, T, ddp + off);
            store_tile(dx, L, rows, T, dup + off);
            if (hasZ) store_tile(zt, L, rows, T, dzp + off);
          }
          // dB, dC for this chunk: sum the lanes (channels) of the group's partial vectors.
          reduce_lanes(vB, static_cast<int64_t>(T) * N, sums);
          reduce_lanes(vC, static_cast<int64_t>(T) * N, sums + CH * N);
          for (int t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n) {
              dBo[n * L + t0 + t] = sums[t * N + n];
              dCo[n * L + t0 + t] = sums[CH * N + t * N + n];
            }
        }
        for (int64_t k = 0; k < nblk; ++k) {
          const int64_t e0 = (blk0 + k) * W;
          const int rows = static_cast<int>(std::min<int64_t>(W, E - e0));
          for (int r = 0; r < rows; ++r) {
            for (int64_t n = 0; n < N; ++n) dAp[(b * E + e0 + r) * N + n] = dAacc[(k * N + n) * W + r];
            dDp[b * E + e0 + r] = dDacc[k * W + r];
            dbp[b * E + e0 + r] = dbacc[k * W + r];
          }
        }
      }
    });
  }
  at::Tensor dA = dA_part.sum(0);
  at::Tensor dB = G == 1 ? dB_part.select(0, 0) : dB_part.sum(0);
  at::Tensor dC = G == 1 ? dC_part.select(0, 0) : dC_part.sum(0);
  at::Tensor dD = hasD ? dD_part.sum(0) : at::Tensor();
  at::Tensor dbias = hasBias ? dbias_part.sum(0) : at::Tensor();
  return {du, ddelta, dA, dB, dC, dD, dz, dbias};
}

std::string isa() { return std::string(kIsa) + "/w" + std::to_string(W); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hear_ssam compiled CPU selective scan (forward and backward)";
  m.def("fwd", &scan_fwd, "selective scan forward");
  m.def("bwd", &scan_bwd, "selective scan backward");
  m.def("isa", &isa, "SIMD instruction set and width this build uses");
}
