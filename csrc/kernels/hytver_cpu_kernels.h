// Fused HyTver loss sums on the CPU: framework-free kernels, compiled once per ISA.
//
// Include this file once per translation unit, after defining
//   HYTVER_ISA_NS    the namespace of this copy (isa_base, isa_avx2, isa_avx512)
//   HYTVER_ISA_NAME  its name as a string ("base", "avx2", "avx512")
//   HYTVER_TABLE_FN  the exported table function (table_base, table_avx2, table_avx512)
//   HYTVER_FLOAT_LANES  floats per vector register of the ISA (4, 8, 16; sets the block size)
// and after selecting the ISA with `#pragma GCC target(...)`. It must not include torch or any
// std header with inline functions or templates: every helper below has internal linkage (an
// anonymous namespace), so that no AVX-512 copy of an inline function can be picked by the
// linker for a baseline caller.
//
// Math (a = |x|, e = exp(-a)):  p = sigmoid(x) = x >= 0 ? 1/(1+e) : e/(1+e),  q = 1 - p likewise,
// sp = log1p(e),  log p = min(x, 0) - sp,  log q = -max(x, 0) - sp. Exact for any finite x
// (no log 0, no 1 - p cancellation). Float lanes use our own exp / log1p polynomials (so that the
// loops vectorise); double logits use libm (they exist for gradcheck and float64 references).
//
// Reduction order: each chunk (kChunk elements of one sample) is summed in blocks of kBlock
// elements in lanes of the compute type; block sums are added to double chunk partials. The glue
// adds the chunk partials in chunk order, so results do not depend on the number of threads.

#include <stdint.h>

#include "hytver_cpu_table.h"

#ifndef HYTVER_ISA_NS
#error "define HYTVER_ISA_NS, HYTVER_ISA_NAME and HYTVER_TABLE_FN before including this file"
#endif

namespace hytver {
namespace cpu {
namespace HYTVER_ISA_NS {
namespace {

// Elements per float-lane block: 64 additions per lane for the ISA's float vector width.
#ifndef HYTVER_FLOAT_LANES
#define HYTVER_FLOAT_LANES 4
#endif
constexpr int64_t kBlock = 64 * HYTVER_FLOAT_LANES;

// ---------------------------------------------------------------------------------------------
// bit casts and element conversions

inline float f32_from_bits(uint32_t u) { return __builtin_bit_cast(float, u); }
inline uint32_t f32_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

inline float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {  // round to nearest even, NaN -> quiet NaN
  const uint32_t u = f32_to_bits(f);
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  return static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
}

// IEEE half <-> float, branch-free (same algorithm as c10's fp16_ieee_to/from_fp32_value).
inline float f16_to_f32(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t bits = two_w < (1u << 27) ? f32_to_bits(denormalized) : f32_to_bits(normalized);
  return f32_from_bits(sign | bits);
}

inline uint16_t f32_to_f16(float f) {
  const float a = f < 0.0f ? -f : f;
  float base = (a * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_to_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_to_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// Logits: storage type T, compute type C.
template <int XT> struct XTraits;
template <> struct XTraits<kF32> {
  typedef float T;
  typedef float C;
  static inline C load(const T* p, int64_t i) { return p[i]; }
  static inline void store(T* p, int64_t i, C v) { p[i] = v; }
};
template <> struct XTraits<kF64> {
  typedef double T;
  typedef double C;
  static inline C load(const T* p, int64_t i) { return p[i]; }
  static inline void store(T* p, int64_t i, C v) { p[i] = v; }
};
template <> struct XTraits<kBF16> {
  typedef uint16_t T;
  typedef float C;
  static inline C load(const T* p, int64_t i) { return bf16_to_f32(p[i]); }
  static inline void store(T* p, int64_t i, C v) { p[i] = f32_to_bf16(v); }
};
template <> struct XTraits<kF16> {
  typedef uint16_t T;
  typedef float C;
  static inline C load(const T* p, int64_t i) { return f16_to_f32(p[i]); }
  static inline void store(T* p, int64_t i, C v) { p[i] = f32_to_f16(v); }
};

// Targets: storage type T, converted to the compute type.
template <int YT> struct YTraits;
template <> struct YTraits<kF32> { typedef float T; };
template <> struct YTraits<kF64> { typedef double T; };
template <> struct YTraits<kU8> { typedef uint8_t T; };

// ---------------------------------------------------------------------------------------------
// math

inline float max0(float v) { return v > 0.0f ? v : 0.0f; }
inline double max0(double v) { return v > 0.0 ? v : 0.0; }
inline float min0(float v) { return v < 0.0f ? v : 0.0f; }
inline double min0(double v) { return v < 0.0 ? v : 0.0; }
inline float absv(float v) { return v < 0.0f ? -v : v; }
inline double absv(double v) { return v < 0.0 ? -v : v; }

// exp(z) for float z (Cephes expf polynomial, ~1 ulp), meant for z <= 0 (the kernels only call
// it there): 0 below -87.34 (no denormals), exp(88) above 88, NaN stays NaN.
// Rounding to an integer uses the 1.5 * 2^23 trick (no SSE4.1 round instruction needed).
inline float hexp(float z) {
  const float lo = -87.3365402f;  // log(FLT_MIN)
  const float hi = 88.0f;  // below 127.5 * log(2): 2^n stays a normal float
  float zc = z < lo ? lo : z;
  zc = zc > hi ? hi : zc;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float t = zc * 1.44269504088896341f + magic;
  const float n = t - magic;
  const int32_t ni = static_cast<int32_t>(f32_to_bits(t)) - 0x4B400000;
  float r = zc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float y = poly * (r * r) + r + 1.0f;
  const float res = y * f32_from_bits(static_cast<uint32_t>(ni + 127) << 23);
  return z < lo ? 0.0f : res;
}
inline double hexp(double z) { return __builtin_exp(z); }

// p, q = sigmoid(x), sigmoid(-x).
inline void sig_pq(float x, float& p, float& q) {
  const float e = hexp(-absv(x));
  const float r = 1.0f / (1.0f + e);
  const float er = e * r;
  p = x >= 0.0f ? r : er;
  q = x >= 0.0f ? er : r;
}
inline void sig_pq(double x, double& p, double& q) {
  const double e = __builtin_exp(-absv(x));
  const double r = 1.0 / (1.0 + e);
  const double er = e * r;
  p = x >= 0.0 ? r : er;
  q = x >= 0.0 ? er : r;
}

// p, q and sp = log1p(exp(-|x|)). One division serves 1/(1+e) and s = e/(2+e);
// log1p(e) = 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ... + s^12/13), s <= 1/3: the truncation
// (< 1.5e-8 relative) is below half a float32 ulp; accurate in relative terms also for tiny e.
inline void sig_pq_sp(float x, float& p, float& q, float& sp) {
  const float e = hexp(-absv(x));
  const float d1 = 1.0f + e;
  const float d2 = 2.0f + e;
  const float w = 1.0f / (d1 * d2);
  const float r = d2 * w;
  const float s = (e * d1) * w;
  const float z = s * s;
  float poly = 1.0f / 13.0f;
  poly = poly * z + 1.0f / 11.0f;
  poly = poly * z + 1.0f / 9.0f;
  poly = poly * z + 1.0f / 7.0f;
  poly = poly * z + 1.0f / 5.0f;
  poly = poly * z + 1.0f / 3.0f;
  sp = (s + s) + (s + s) * (poly * z);
  const float er = e * r;
  p = x >= 0.0f ? r : er;
  q = x >= 0.0f ? er : r;
}
inline void sig_pq_sp(double x, double& p, double& q, double& sp) {
  const double e = __builtin_exp(-absv(x));
  const double r = 1.0 / (1.0 + e);
  const double er = e * r;
  p = x >= 0.0 ? r : er;
  q = x >= 0.0 ? er : r;
  sp = __builtin_log1p(e);
}

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
template <class T> inline T maxv(T a, T b) { return a > b ? a : b; }
template <class T> inline T minv(T a, T b) { return a < b ? a : b; }

// Clamp constants of exp_stats in the compute type.
template <class C> struct ClampConsts {
  C lo, hi, log_lo, log_hi, gamma;
  explicit ClampConsts(const Args& a) {
    const double eps = a.eps > 0.0 ? a.eps : 0.0;
    lo = static_cast<C>(eps);
    hi = static_cast<C>(1.0 - eps);
    log_lo = static_cast<C>(eps > 0.0 ? __builtin_log(eps) : 0.0);
    log_hi = static_cast<C>(__builtin_log1p(-eps));
    gamma = static_cast<C>(a.gamma);
  }
};

// ---------------------------------------------------------------------------------------------
// kernels

// Target check of one block (while it is in L1), in its own short loop: folding it into the
// arithmetic loop slowed that loop down noticeably. Invalid: a uint8 value above 1; a float value
// outside [0, 1] or NaN (stats), or other than 0 and 1 (the exp sums, for hard labels).
template <bool HARD, class U> inline bool block_invalid(const U* y, int64_t m) {
  U worst = 0;
  if constexpr (sizeof(U) == 1) {
#pragma omp simd reduction(max : worst)
    for (int64_t i = 0; i < m; ++i) worst = maxv(worst, y[i]);
    return worst > 1;
  } else {
#pragma omp simd reduction(max : worst)
    for (int64_t i = 0; i < m; ++i) {
      const U v = y[i];
      const bool ok = HARD ? (v == U(0) || v == U(1)) : (v >= U(0) && v <= U(1));
      worst = maxv(worst, ok ? U(0) : U(1));
    }
    return worst > 0;
  }
}
inline void write_invalid(const Args& a, int64_t c, bool bad) {
  if (a.invalid != nullptr) a.invalid[c] = bad ? 1.0 : 0.0;
}

// The saved value m of stats: the smaller of p and q, negative (sign bit set) when it is q.
template <class C> inline float saved_m(C x, C p, C q) {
  return static_cast<float>(x >= C(0) ? -q : p);
}
// p and q back from m: the smaller one, which carries the relative precision, as stored; the
// larger one (in [0.5, 1]) as 1 - the smaller one, within a float32 rounding.
inline void pq_from_saved(float m, float& p, float& q) {
  const float s = absv(m);
  const float big = 1.0f - s;
  const bool x_nonneg = static_cast<int32_t>(f32_to_bits(m)) < 0;  // also for m == -0.0
  p = x_nonneg ? big : s;
  q = x_nonneg ? s : big;
}

// exp_stats' clamp: p~ = clamp(p, lo, hi) and q~ = 1 - p~, each taken from its own side (q~ = q
// inside the interval) so that no 1 - p rounding enters; plo / qlo: p / q below lo.
template <class C>
inline void clamp_pq(C p, C q, C lo, C hi, bool& plo, bool& qlo, C& pt, C& qt) {
  plo = p < lo;
  qlo = q < lo;
  pt = plo ? lo : (qlo ? hi : p);
  qt = qlo ? lo : (plo ? hi : q);
}

// Gradient element type: float32 when it overwrites the saved values, else the logits' type.
template <bool IN_SAVED, class E> struct OutType { typedef E type; };
template <class E> struct OutType<true, E> { typedef float type; };
template <bool IN_SAVED, class X, class G, class C> inline void store_grad(G* g, int64_t i, C v) {
  if constexpr (IN_SAVED) {
    g[i] = static_cast<float>(v);
  } else {
    X::store(g, i, v);
  }
}

template <int XT, int YT, bool SAVE>
void stats_fwd(const Args& a, int64_t c0, int64_t c1, double* partials) {
  typedef XTraits<XT> X;
  typedef typename X::T T;
  typedef typename X::C C;
  typedef typename YTraits<YT>::T U;
  const T* xs = static_cast<const T*>(a.x);
  const U* ys = static_cast<const U*>(a.y);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t b = c / a.chunks_per_sample;
    const int64_t start = (c - b * a.chunks_per_sample) * kChunk;
    const int64_t len = min64(kChunk, a.n - start);
    const T* xc = xs + b * a.n + start;
    const U* yc = ys + b * a.n + start;
    float* mc = SAVE ? a.saved + b * a.n + start : nullptr;
    double acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0, acc4 = 0;
    bool bad = false;
    for (int64_t k = 0; k < len; k += kBlock) {
      const int64_t m = min64(kBlock, len - k);
      const T* xb = xc + k;
      const U* yb = yc + k;
      float* mb = SAVE ? mc + k : nullptr;
      if (a.invalid != nullptr) bad = bad || block_invalid<false>(yb, m);
      C s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4)
      for (int64_t i = 0; i < m; ++i) {
        const C x = X::load(xb, i);
        const C y = static_cast<C>(yb[i]);
        const C ny = C(1) - y;
        C p, q, sp;
        sig_pq_sp(x, p, q, sp);
        s0 += p * y;
        s1 += p * ny;
        s2 += q * y;
        s3 += y * (sp + max0(-x));   // y * softplus(-x)
        s4 += ny * (sp + max0(x));   // (1 - y) * softplus(x)
        if constexpr (SAVE) mb[i] = saved_m(x, p, q);
      }
      acc0 += s0;
      acc1 += s1;
      acc2 += s2;
      acc3 += s3;
      acc4 += s4;
    }
    write_invalid(a, c, bad);
    double* out = partials + c * kStatsK;
    out[0] = acc0;
    out[1] = acc1;
    out[2] = acc2;
    out[3] = acc3;
    out[4] = acc4;
  }
}

// FROM_SAVED: p and q come from the saving forward's m (no exp, no division: a pass over m and
// y) instead of from the logits, and the float32 gradient overwrites m in place (element i is
// read before it is written, so the aliasing is safe; XT is then only the compute type).
template <int XT, int YT, bool FROM_SAVED>
void stats_bwd(const Args& a, int64_t c0, int64_t c1) {
  typedef XTraits<XT> X;
  typedef typename X::T T;
  typedef typename X::C C;
  typedef typename YTraits<YT>::T U;
  typedef typename OutType<FROM_SAVED, T>::type G;
  const T* xs = static_cast<const T*>(a.x);
  const U* ys = static_cast<const U*>(a.y);
  G* gxs = FROM_SAVED ? reinterpret_cast<G*>(a.saved) : static_cast<G*>(a.gx);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t b = c / a.chunks_per_sample;
    const int64_t start = (c - b * a.chunks_per_sample) * kChunk;
    const int64_t len = min64(kChunk, a.n - start);
    const int64_t off = b * a.n + start;
    const T* xc = xs + off;
    const float* mc = FROM_SAVED ? a.saved + off : nullptr;
    const U* yc = ys + off;
    G* gc = gxs + off;
    const double* g = a.g + b * kStatsK;
    const C g0m2 = static_cast<C>(g[0] - g[2]);
    const C g1 = static_cast<C>(g[1]);
    const C g3 = static_cast<C>(g[3]);
    const C g4 = static_cast<C>(g[4]);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const C y = static_cast<C>(yc[i]);
      const C ny = C(1) - y;
      C p, q;
      if constexpr (FROM_SAVED) {
        float ps, qs;
        pq_from_saved(mc[i], ps, qs);
        p = ps;
        q = qs;
      } else {
        sig_pq(X::load(xc, i), p, q);
      }
      const C v = p * q * (y * g0m2 + ny * g1) + (g4 * ny * p - g3 * y * q);
      store_grad<FROM_SAVED, X>(gc, i, v);
    }
  }
}

// SQUARE: gamma == 2 (DSC++'s and the focal loss's default), where the power is a product
// instead of an exp. SAVE: also write m (as stats_fwd) for exp_bwd's FROM_SAVED path. !LOGS
// (with SQUARE only): skip the log columns C1, C0, F1, F0 (left 0; DSC++ does not use them), so
// no log1p series per voxel.
template <int XT, int YT, bool SQUARE, bool SAVE, bool LOGS = true>
void exp_fwd(const Args& a, int64_t c0, int64_t c1, double* partials) {
  static_assert(SQUARE || LOGS, "a general gamma needs the logs for the powers");
  typedef XTraits<XT> X;
  typedef typename X::T T;
  typedef typename X::C C;
  typedef typename YTraits<YT>::T U;
  const T* xs = static_cast<const T*>(a.x);
  const U* ys = static_cast<const U*>(a.y);
  const ClampConsts<C> cc(a);
  const C lo = cc.lo, hi = cc.hi, log_lo = cc.log_lo, log_hi = cc.log_hi, gam = cc.gamma;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t b = c / a.chunks_per_sample;
    const int64_t start = (c - b * a.chunks_per_sample) * kChunk;
    const int64_t len = min64(kChunk, a.n - start);
    const T* xc = xs + b * a.n + start;
    const U* yc = ys + b * a.n + start;
    float* mc = SAVE ? a.saved + b * a.n + start : nullptr;
    double acc[kExpK] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    bool bad = false;
    for (int64_t k = 0; k < len; k += kBlock) {
      const int64_t m = min64(kBlock, len - k);
      const T* xb = xc + k;
      const U* yb = yc + k;
      float* mb = SAVE ? mc + k : nullptr;
      if (a.invalid != nullptr) bad = bad || block_invalid<true>(yb, m);
      C s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, s8 = 0;
      if constexpr (!LOGS) {
#pragma omp simd reduction(+ : s0, s1, s2, s5, s6)
        for (int64_t i = 0; i < m; ++i) {
          const C x = X::load(xb, i);
          const C y = static_cast<C>(yb[i]);
          const C ny = C(1) - y;
          C p, q;
          sig_pq(x, p, q);
          // clamp_pq's values as plain min / max (no logs to select here): below lo one of p, q
          // goes to lo and the other, then at least hi, to hi.
          const C pt = minv(maxv(p, lo), hi);
          const C qt = minv(maxv(q, lo), hi);
          const C base = y > C(0.5) ? qt : pt;
          const C pw = base * base;
          s0 += y * pt;
          s1 += ny * pt;
          s2 += y * qt;
          s5 += y * pw;
          s6 += ny * pw;
          if constexpr (SAVE) mb[i] = saved_m(x, p, q);
        }
      } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7, s8)
        for (int64_t i = 0; i < m; ++i) {
          const C x = X::load(xb, i);
          const C y = static_cast<C>(yb[i]);
          const C ny = C(1) - y;
          C p, q, sp;
          sig_pq_sp(x, p, q, sp);
          const C nlp = sp + max0(-x);  // -log p
          const C nlq = sp + max0(x);   // -log q
          bool plo, qlo;
          C pt, qt;
          clamp_pq(p, q, lo, hi, plo, qlo, pt, qt);
          const C nlpt = plo ? -log_lo : (qlo ? -log_hi : nlp);
          const C nlqt = qlo ? -log_lo : (plo ? -log_hi : nlq);
          // Hard labels: only qt^gamma matters where y = 1 and only pt^gamma where y = 0, so one
          // exp per voxel serves both sums (exp_stats is defined for hard labels only).
          const bool pos = y > C(0.5);
          C pw;
          if constexpr (SQUARE) {
            const C base = pos ? qt : pt;
            pw = base * base;
          } else {
            pw = hexp(-gam * (pos ? nlqt : nlpt));
          }
          s0 += y * pt;
          s1 += ny * pt;
          s2 += y * qt;
          s3 += y * nlpt;
          s4 += ny * nlqt;
          s5 += y * pw;
          s6 += ny * pw;
          s7 += y * pw * nlpt;
          s8 += ny * pw * nlqt;
          if constexpr (SAVE) mb[i] = saved_m(x, p, q);
        }
      }
      acc[0] += s0;
      acc[1] += s1;
      acc[2] += s2;
      acc[3] += s3;
      acc[4] += s4;
      acc[5] += s5;
      acc[6] += s6;
      acc[7] += s7;
      acc[8] += s8;
    }
    write_invalid(a, c, bad);
    double* out = partials + c * kExpK;
    for (int k = 0; k < kExpK; ++k) out[k] = acc[k];
  }
}

// FROM_SAVED (with SQUARE only): p and q from the saving forward's m, the gradient written over
// m as in stats_bwd. It drops the F1 / F0 terms (they need the logs): the glue takes this path
// only when their upstream gradients are all zero (DSC++), else it recomputes from the logits.
template <int XT, int YT, bool SQUARE, bool FROM_SAVED>
void exp_bwd(const Args& a, int64_t c0, int64_t c1) {
  static_assert(SQUARE || !FROM_SAVED, "the saved path has no logs for a general gamma");
  typedef XTraits<XT> X;
  typedef typename X::T T;
  typedef typename X::C C;
  typedef typename YTraits<YT>::T U;
  typedef typename OutType<FROM_SAVED, T>::type G;
  const T* xs = static_cast<const T*>(a.x);
  const U* ys = static_cast<const U*>(a.y);
  G* gxs = FROM_SAVED ? reinterpret_cast<G*>(a.saved) : static_cast<G*>(a.gx);
  const ClampConsts<C> cc(a);
  const C lo = cc.lo, gam = cc.gamma;
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t b = c / a.chunks_per_sample;
    const int64_t start = (c - b * a.chunks_per_sample) * kChunk;
    const int64_t len = min64(kChunk, a.n - start);
    const int64_t off = b * a.n + start;
    const T* xc = xs + off;
    const float* mc = FROM_SAVED ? a.saved + off : nullptr;
    const U* yc = ys + off;
    G* gc = gxs + off;
    const double* g = a.g + b * kExpK;
    const C g0m2 = static_cast<C>(g[0] - g[2]);
    const C g1 = static_cast<C>(g[1]);
    const C g3 = static_cast<C>(g[3]);
    const C g4 = static_cast<C>(g[4]);
    const C g5 = static_cast<C>(g[5]);
    const C g6 = static_cast<C>(g[6]);
    const C g7 = static_cast<C>(g[7]);
    const C g8 = static_cast<C>(g[8]);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const C y = static_cast<C>(yc[i]);
      const C ny = C(1) - y;
      C p, q;
      C v;
      if constexpr (FROM_SAVED) {
        float ps, qs;
        pq_from_saved(mc[i], ps, qs);
        p = ps;
        q = qs;
        // gamma == 2, no F1 / F0 terms: the power terms, -y*q^2*2p*g5 + (1-y)*p^2*2q*g6 for
        // hard labels, share the factor p*q with the others.
        const C two = C(2);
        v = p * q * (y * (g0m2 - two * q * g5) + ny * (g1 + two * p * g6)) +
            (g4 * ny * p - g3 * y * q);
      } else {
        const C x = X::load(xc, i);
        C sp;
        sig_pq_sp(x, p, q, sp);
        const C nlp = sp + max0(-x);
        const C nlq = sp + max0(x);
        // Hard labels: q^gamma where y = 1, p^gamma where y = 0, both in qg (one exp, see
        // exp_fwd).
        C qg;
        if constexpr (SQUARE) {
          const C base = y > C(0.5) ? q : p;
          qg = base * base;
        } else {
          qg = hexp(-gam * (y > C(0.5) ? nlq : nlp));
        }
        const C gp = gam * p;
        const C gq = gam * q;
        v = p * q * (y * g0m2 + ny * g1) + (g4 * ny * p - g3 * y * q) - y * qg * (gp * g5) +
            ny * qg * (gq * g6) + ny * qg * (g8 * (p + gq * nlq)) -
            y * qg * (g7 * (gp * nlp + q));
      }
      // Inside [eps, 1 - eps] (all of it when eps == 0) the clamp is the identity; outside,
      // torch.clamp passes no gradient.
      store_grad<FROM_SAVED, X>(gc, i, (p < lo || q < lo) ? C(0) : v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dtype dispatch

// Kernels by variant: 0 stats, 1 exp_stats, 2 stats saving / from saved (float32, bfloat16
// and float16 logits), 3 exp_stats saving / from saved (float32 logits; the backward only with
// gamma == 2). nullptr where a variant does not exist: the glue never asks for those.
template <int XT, int YT>
FwdFn fwd_variant(int variant, bool square, bool logs) {
  switch (variant) {
    case 0: return &stats_fwd<XT, YT, false>;
    case 1: return square ? &exp_fwd<XT, YT, true, false> : &exp_fwd<XT, YT, false, false>;
    case 2: return XT == kF64 ? nullptr : &stats_fwd<XT, YT, true>;
    default:
      if constexpr (XT == kF32) {
        if (!square) return &exp_fwd<XT, YT, false, true>;
        return logs ? &exp_fwd<XT, YT, true, true> : &exp_fwd<XT, YT, true, true, false>;
      }
      return nullptr;
  }
}
template <int XT, int YT>
BwdFn bwd_variant(int variant, bool square) {
  switch (variant) {
    case 0: return &stats_bwd<XT, YT, false>;
    case 1: return square ? &exp_bwd<XT, YT, true, false> : &exp_bwd<XT, YT, false, false>;
    // From saved values the logits' type does not matter: one float32 kernel serves them all.
    case 2: return XT == kF64 ? nullptr : &stats_bwd<kF32, YT, true>;
    default: return XT == kF32 && square ? &exp_bwd<kF32, YT, true, true> : nullptr;
  }
}
template <int XT>
FwdFn pick_fwd(int yt, int variant, bool square, bool logs) {
  switch (yt) {
    case kF32: return fwd_variant<XT, kF32>(variant, square, logs);
    case kF64: return fwd_variant<XT, kF64>(variant, square, logs);
    case kU8: return fwd_variant<XT, kU8>(variant, square, logs);
    default: return nullptr;
  }
}
template <int XT>
BwdFn pick_bwd(int yt, int variant, bool square) {
  switch (yt) {
    case kF32: return bwd_variant<XT, kF32>(variant, square);
    case kF64: return bwd_variant<XT, kF64>(variant, square);
    case kU8: return bwd_variant<XT, kU8>(variant, square);
    default: return nullptr;
  }
}
FwdFn fwd_for(const Args& a, int variant) {
  const bool square = a.gamma == 2.0;
  switch (a.xt) {
    case kF32: return pick_fwd<kF32>(a.yt, variant, square, a.logs);
    case kF64: return pick_fwd<kF64>(a.yt, variant, square, a.logs);
    case kBF16: return pick_fwd<kBF16>(a.yt, variant, square, a.logs);
    case kF16: return pick_fwd<kF16>(a.yt, variant, square, a.logs);
    default: return nullptr;
  }
}
BwdFn bwd_for(const Args& a, int variant) {
  const bool square = a.gamma == 2.0;
  switch (a.xt) {
    case kF32: return pick_bwd<kF32>(a.yt, variant, square);
    case kF64: return pick_bwd<kF64>(a.yt, variant, square);
    case kBF16: return pick_bwd<kBF16>(a.yt, variant, square);
    case kF16: return pick_bwd<kF16>(a.yt, variant, square);
    default: return nullptr;
  }
}

// The glue validates dtypes (and refuses float64 logits for the saving variants) before
// calling, so a null function cannot be reached.
template <int V>
void entry_fwd(const Args& a, int64_t c0, int64_t c1, double* partials) {
  FwdFn f = fwd_for(a, V);
  if (f) f(a, c0, c1, partials);
}
template <int V>
void entry_bwd(const Args& a, int64_t c0, int64_t c1) {
  BwdFn f = bwd_for(a, V);
  if (f) f(a, c0, c1);
}

const Table kTable = {HYTVER_ISA_NAME, &entry_fwd<0>, &entry_bwd<0>, &entry_fwd<1>,
                      &entry_bwd<1>,   &entry_fwd<2>, &entry_bwd<2>, &entry_fwd<3>,
                      &entry_bwd<3>};

}  // namespace
}  // namespace HYTVER_ISA_NS

const Table* HYTVER_TABLE_FN() { return &HYTVER_ISA_NS::kTable; }

}  // namespace cpu
}  // namespace hytver
