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
template <> struct YTraits<kI64> { typedef int64_t T; };

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

// 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ... + s^12/13) for 0 <= s <= 1/3: log1p(e) with
// s = e / (2 + e); the truncation (< 1.5e-8 relative) is below half a float32 ulp.
inline float two_atanh(float s) {
  const float z = s * s;
  float poly = 1.0f / 13.0f;
  poly = poly * z + 1.0f / 11.0f;
  poly = poly * z + 1.0f / 9.0f;
  poly = poly * z + 1.0f / 7.0f;
  poly = poly * z + 1.0f / 5.0f;
  poly = poly * z + 1.0f / 3.0f;
  return (s + s) + (s + s) * (poly * z);
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
  sp = two_atanh((e * d1) * w);
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

// The exp sums of one (clamped) probability pt = 1 - qt, -log pt and pw (q~^g where y = 1,
// p~^g where y = 0; hard labels): TP, FP, FN, C1, Eq, Ep, F1 into s0..s3, s5..s7.
template <class C>
inline void add_clamped(C y, C pt, C qt, C nlpt, C pw, C& s0, C& s1, C& s2, C& s3, C& s5, C& s6,
                        C& s7) {
  const C ny = C(1) - y;
  s0 += y * pt;
  s1 += ny * pt;
  s2 += y * qt;
  s3 += y * nlpt;
  s5 += y * pw;
  s6 += ny * pw;
  s7 += y * pw * nlpt;
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
          add_clamped(y, pt, qt, nlpt, pw, s0, s1, s2, s3, s5, s6, s7);
          s4 += ny * nlqt;
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
// softmax kernels (C classes per voxel)
//
// Per block of voxels, in passes over the classes (each inner loop runs over the block's
// voxels, so it vectorises for any C): the maximum logit and its class a, S' = sum over c != a
// of e_c (e_c = exp(x_c - max), e_a = 1, S = 1 + S'), then per class p_c = e_c / S,
// q_c = 1 - p_c as (c == a ? S' : S - e_c) / S (no cancellation: S - e_c >= 1 for c != a),
// -log p_c = log S - (x_c - max) with log S = log1p(S').

inline float tiny_of(float) { return 1.17549435e-38f; }
inline double tiny_of(double) { return 2.2250738585072014e-308; }

// log(v) for float v >= FLT_MIN (Cephes logf polynomial, ~1 ulp), branch-free.
inline float hlog(float v) {
  const uint32_t u = f32_to_bits(v);
  int32_t e = static_cast<int32_t>((u >> 23) & 0xFFu) - 126;
  float m = f32_from_bits((u & 0x007FFFFFu) | 0x3F000000u);  // [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = small ? (m + m) - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y + -2.12194440e-4f * fe;
  y = y - 0.5f * z;
  return (m + y) + 0.693359375f * fe;
}
inline double hlog(double v) { return __builtin_log(v); }

// log1p(s) for s >= 0: the atanh series below 1 (as sig_pq_sp), log(1 + s) above.
inline float hlog1p(float s) {
  const float sc = s < 1.0f ? s : 1.0f;
  return s < 1.0f ? two_atanh(sc / (2.0f + sc)) : hlog(1.0f + s);
}
inline double hlog1p(double s) { return __builtin_log1p(s); }

// Exponentials kept per block: blocks of softmax voxels hold at most this many (voxel, class)
// pairs, so that each exp(x_c - max) is computed once per pass over the data.
constexpr int64_t kSoftBuf = 8 * kBlock;

// The voxels per softmax block for C classes.
inline int64_t soft_block(int64_t classes) {
  const int64_t b = kSoftBuf / classes;
  return b < 1 ? 1 : (b > kBlock ? kBlock : b);
}

// Sample, first voxel and length of chunk ch (softmax kernels: n voxels per sample).
struct ChunkPos {
  int64_t b, start, len;
};
inline ChunkPos chunk_pos(const Args& a, int64_t ch) {
  const int64_t b = ch / a.chunks_per_sample;
  const int64_t start = (ch - b * a.chunks_per_sample) * kChunk;
  return {b, start, min64(kChunk, a.n - start)};
}

// The block's per-voxel softmax statistics (compute type C) and its exponentials
// e[c * blk + i] = exp(x_c - max) (blk = soft_block(C)).
template <class C> struct SoftStats {
  C mx[kBlock];
  int32_t am[kBlock];
  C rest[kBlock];  // S' = S - 1
  C inv[kBlock];   // 1 / S
  C logs[kBlock];  // log S
  C e[kSoftBuf];
  C u[kSoftBuf];  // backward: u_c = p_c * dL/dp_c, same layout
};

// Max, argmax, S' and the derived per-voxel values of m voxels; x: channel 0 of the block,
// channel c at x + c * n.
template <class T, class C>
inline void soft_stats(const T* x, int64_t n, int64_t classes, int64_t m, int64_t blk,
                       SoftStats<C>& st) {
  for (int64_t i = 0; i < m; ++i) {
    st.mx[i] = static_cast<C>(x[i]);
    st.am[i] = 0;
    st.rest[i] = C(0);
  }
  for (int64_t c = 1; c < classes; ++c) {
    const T* xc = x + c * n;
    const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const C v = static_cast<C>(xc[i]);
      const bool gt = v > st.mx[i];
      st.mx[i] = gt ? v : st.mx[i];
      st.am[i] = gt ? ci : st.am[i];
    }
  }
  for (int64_t c = 0; c < classes; ++c) {
    const T* xc = x + c * n;
    C* ec = st.e + c * blk;
    const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const C e = hexp(static_cast<C>(xc[i]) - st.mx[i]);
      ec[i] = e;
      st.rest[i] += st.am[i] == ci ? C(0) : e;
    }
  }
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) {
    const C s = C(1) + st.rest[i];
    st.inv[i] = C(1) / s;
    st.logs[i] = hlog1p(st.rest[i]);
  }
}

// Targets of a block: labels into lab (and the worst problem code), or the dense channels'
// checks (values, hardness, sum over the channels).
template <bool LABELS, bool HARD, class U>
inline int soft_targets(const U* y, int64_t n, int64_t classes, int64_t m, int32_t* lab,
                        float* ysum) {
  int worst = kValid;
  if constexpr (LABELS) {
    int32_t bad = 0;
    const int64_t cmax = classes;
#pragma omp simd reduction(max : bad)
    for (int64_t i = 0; i < m; ++i) {
      const int64_t v = static_cast<int64_t>(y[i]);
      const bool ok = v >= 0 && v < cmax;
      lab[i] = ok ? static_cast<int32_t>(v) : -1;
      bad = maxv(bad, ok ? int32_t(0) : int32_t(1));
    }
    if (bad) worst = kLabelRange;
  } else {
    for (int64_t i = 0; i < m; ++i) ysum[i] = 0.0f;
    int32_t outside = 0, soft = 0;
    for (int64_t c = 0; c < classes; ++c) {
      const U* yc = y + c * n;
#pragma omp simd reduction(max : outside, soft)
      for (int64_t i = 0; i < m; ++i) {
        const double v = static_cast<double>(yc[i]);
        outside = maxv(outside, (v >= 0.0 && v <= 1.0) ? int32_t(0) : int32_t(1));
        soft = maxv(soft, (v == 0.0 || v == 1.0) ? int32_t(0) : int32_t(1));
        ysum[i] += static_cast<float>(v);
      }
    }
    int32_t unnorm = 0;
#pragma omp simd reduction(max : unnorm)
    for (int64_t i = 0; i < m; ++i) {
      const float d = ysum[i] - 1.0f;
      unnorm = maxv(unnorm, (d <= 1e-4f && d >= -1e-4f) ? int32_t(0) : int32_t(1));
    }
    if (outside) worst = kOutside01;
    else if (HARD && soft) worst = kNotHard;
    else if (unnorm) worst = kNotNormalised;
  }
  return worst;
}

// Clamp constants of the exp sums (unified focal, DSC++) in the compute type.
template <class C> struct SoftClamp {
  C lo, hi, nlog_lo, nlog_hi, gamma;
  bool square, clamp;
  explicit SoftClamp(const Args& a) {
    const double eps = a.eps > 0.0 ? a.eps : 0.0;
    lo = static_cast<C>(eps);
    hi = static_cast<C>(1.0 - eps);
    nlog_lo = static_cast<C>(eps > 0.0 ? -__builtin_log(eps) : 0.0);
    nlog_hi = static_cast<C>(-__builtin_log1p(-eps));
    gamma = static_cast<C>(a.gamma);
    square = a.gamma == 2.0;
    clamp = eps > 0.0;
  }
};

// SAVE (the 5 sums only): also write p_c (float32) to Args::saved, the logits' layout.
template <int XT, int YT, bool LABELS, bool EXP, bool SAVE = false>
void softmax_fwd(const Args& a, int64_t c0, int64_t c1, double* partials) {
  static_assert(!(SAVE && EXP), "the softmax saving variant has the 5 sums only");
  typedef typename XTraits<XT>::T T;
  typedef typename XTraits<XT>::C C;
  typedef typename YTraits<YT>::T U;
  constexpr int K = EXP ? kExpK : kStatsK;
  const T* xs = static_cast<const T*>(a.x);
  const U* ys = static_cast<const U*>(a.y);
  const int64_t classes = a.classes, n = a.n;
  const SoftClamp<C> cl(a);
  SoftStats<C> st;
  const int64_t blk = soft_block(classes);
  int32_t lab[kBlock];
  float ysum[kBlock];
  for (int64_t ch = c0; ch < c1; ++ch) {
    const ChunkPos cp = chunk_pos(a, ch);
    const int64_t b = cp.b, start = cp.start, len = cp.len;
    double* out = partials + ch * classes * K;
    for (int64_t k = 0; k < classes * K; ++k) out[k] = 0.0;
    int worst = kValid;
    for (int64_t k0 = 0; k0 < len; k0 += blk) {
      const int64_t m = min64(blk, len - k0);
      const T* xb = xs + b * classes * n + start + k0;
      const U* yb = LABELS ? ys + b * n + start + k0 : ys + b * classes * n + start + k0;
      worst = maxv(worst, soft_targets<LABELS, EXP>(yb, n, classes, m, lab, ysum));
      soft_stats<T, C>(xb, n, classes, m, blk, st);
      for (int64_t c = 0; c < classes; ++c) {
        const T* xc = xb + c * n;
        const C* ec = st.e + c * blk;
        const U* yc = LABELS ? yb : yb + c * n;
        float* sc = SAVE ? a.saved + (xb - xs) + c * n : nullptr;
        const int32_t ci = static_cast<int32_t>(c);
        C s0 = 0, s1 = 0, s2 = 0, s3 = 0, s5 = 0, s6 = 0, s7 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s5, s6, s7)
        for (int64_t i = 0; i < m; ++i) {
          const C d = static_cast<C>(xc[i]) - st.mx[i];
          const C e = ec[i];
          const bool top = st.am[i] == ci;
          const C p = e * st.inv[i];
          const C q = (top ? st.rest[i] : (C(1) + st.rest[i]) - e) * st.inv[i];
          const C nlp = st.logs[i] - d;
          const C y = LABELS ? (lab[i] == ci ? C(1) : C(0)) : static_cast<C>(yc[i]);
          const C ny = C(1) - y;
          if constexpr (!EXP) {
            if constexpr (SAVE) sc[i] = static_cast<float>(p);
            s0 += p * y;
            s1 += p * ny;
            s2 += q * y;
            s3 += y * nlp;
          } else {
            const bool plo = p < cl.lo, qlo = q < cl.lo;
            const C pt = plo ? cl.lo : (qlo ? cl.hi : p);
            const C qt = qlo ? cl.lo : (plo ? cl.hi : q);
            const C nlpt = plo ? cl.nlog_lo : (qlo ? cl.nlog_hi : nlp);
            // q~^g where y = 1 (the label's class), p~^g elsewhere (hard labels).
            C pw;
            if (cl.square) {
              const C base = y > C(0.5) ? qt : pt;
              pw = base * base;
            } else {
              const C lq = hlog(maxv(qt, tiny_of(C(0))));
              pw = hexp(cl.gamma * (y > C(0.5) ? lq : -nlpt));
            }
            add_clamped(y, pt, qt, nlpt, pw, s0, s1, s2, s3, s5, s6, s7);
          }
        }
        double* o = out + c * K;
        o[0] += s0;
        o[1] += s1;
        o[2] += s2;
        o[3] += s3;
        if constexpr (EXP) {
          o[5] += s5;
          o[6] += s6;
          o[7] += s7;
        }
      }
    }
    if (a.invalid != nullptr) a.invalid[ch] = static_cast<double>(worst);
  }
}

// The gradient of every channel: with u_c = p_c * dL/dp_c (the sums' coefficients, scaled),
// dL/dx_j = u_j - p_j * sum_c u_c. Two passes over the block's classes: u_c into a block buffer
// while summing U, then gx_c = u_c - p_c * U (the gradient is written once).
template <int XT, int YT, bool LABELS, bool EXP>
void softmax_bwd(const Args& a, int64_t c0, int64_t c1) {
  typedef typename XTraits<XT>::T T;
  typedef typename XTraits<XT>::C C;
  typedef typename YTraits<YT>::T U;
  constexpr int K = EXP ? kExpK : kStatsK;
  const T* xs = static_cast<const T*>(a.x);
  const U* ys = static_cast<const U*>(a.y);
  T* gxs = static_cast<T*>(a.gx);
  const int64_t classes = a.classes, n = a.n;
  const SoftClamp<C> cl(a);
  const C tiny = tiny_of(C(0));
  SoftStats<C> st;
  const int64_t blk = soft_block(classes);
  int32_t lab[kBlock];
  float ysum[kBlock];
  C usum[kBlock];
  for (int64_t ch = c0; ch < c1; ++ch) {
    const ChunkPos cp = chunk_pos(a, ch);
    const int64_t b = cp.b, start = cp.start, len = cp.len;
    for (int64_t k0 = 0; k0 < len; k0 += blk) {
      const int64_t m = min64(blk, len - k0);
      const int64_t off = b * classes * n + start + k0;
      const T* xb = xs + off;
      T* gb = gxs + off;
      const U* yb = LABELS ? ys + b * n + start + k0 : ys + off;
      soft_targets<LABELS, false>(yb, n, classes, m, lab, ysum);
      soft_stats<T, C>(xb, n, classes, m, blk, st);
      for (int64_t i = 0; i < m; ++i) usum[i] = C(0);
      for (int64_t c = 0; c < classes; ++c) {
        const T* xc = xb + c * n;
        const C* ec = st.e + c * blk;
        C* uc = st.u + c * blk;
        const U* yc = LABELS ? yb : yb + c * n;
        const int32_t ci = static_cast<int32_t>(c);
        const double* g = a.g + (b * classes + c) * K;
        const C g0m2 = static_cast<C>(g[0] - g[2]), g1 = static_cast<C>(g[1]);
        const C g3 = static_cast<C>(g[3]);
        const C g5 = EXP ? static_cast<C>(g[5]) : C(0), g6 = EXP ? static_cast<C>(g[6]) : C(0);
        const C g7 = EXP ? static_cast<C>(g[7]) : C(0);
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) {
          const C d = static_cast<C>(xc[i]) - st.mx[i];
          const C e = ec[i];
          const C p = e * st.inv[i];
          const C y = LABELS ? (lab[i] == ci ? C(1) : C(0)) : static_cast<C>(yc[i]);
          const C ny = C(1) - y;
          C u = p * (y * g0m2 + ny * g1) - g3 * y;
          if constexpr (EXP) {
            const bool top = st.am[i] == ci;
            const C q = (top ? st.rest[i] : (C(1) + st.rest[i]) - e) * st.inv[i];
            const C nlp = st.logs[i] - d;
            // y = 1: q^g and p * q^(g-1); y = 0: p^g (hard labels).
            C qg, pq1, pg;
            if (cl.square) {
              qg = q * q;
              pq1 = p * q;
              pg = p * p;
            } else {
              const C lq = hlog(maxv(q, tiny));
              qg = hexp(cl.gamma * lq);
              pq1 = p * hexp((cl.gamma - C(1)) * lq);
              pg = hexp(-cl.gamma * nlp);
            }
            u += y * (-(g5 * cl.gamma * pq1) - g7 * (cl.gamma * pq1 * nlp + qg)) +
                 ny * (g6 * cl.gamma * pg);
            // Outside [eps, 1 - eps] the clamp passes no gradient.
            u = (cl.clamp && (p < cl.lo || q < cl.lo)) ? C(0) : u;
          }
          usum[i] += u;
          uc[i] = u;
        }
      }
      for (int64_t c = 0; c < classes; ++c) {  // the gradient, written once
        const C* ec = st.e + c * blk;
        const C* uc = st.u + c * blk;
        T* gc = gb + c * n;
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) gc[i] = static_cast<T>(uc[i] - ec[i] * st.inv[i] * usum[i]);
      }
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

// The softmax backward from the saving forward's p_c (float32, the logits' layout) and the
// target alone, for the kinds with the 5 sums: no exp, no max; the float32 gradient is written
// over the saved values (U = sum_c u_c first, then each class's gradient).
template <int YT, bool LABELS>
void softmax_bwd_saved(const Args& a, int64_t c0, int64_t c1) {
  typedef typename YTraits<YT>::T U;
  const U* ys = static_cast<const U*>(a.y);
  float* ps = a.saved;
  const int64_t classes = a.classes, n = a.n;
  int32_t lab[kBlock];
  float ysum[kBlock];
  float usum[kBlock];
  for (int64_t ch = c0; ch < c1; ++ch) {
    const ChunkPos cp = chunk_pos(a, ch);
    const int64_t b = cp.b, start = cp.start, len = cp.len;
    for (int64_t k0 = 0; k0 < len; k0 += kBlock) {
      const int64_t m = min64(kBlock, len - k0);
      const int64_t off = b * classes * n + start + k0;
      float* pb = ps + off;
      const U* yb = LABELS ? ys + b * n + start + k0 : ys + off;
      soft_targets<LABELS, false>(yb, n, classes, m, lab, ysum);
      for (int64_t i = 0; i < m; ++i) usum[i] = 0.0f;
      for (int pass = 0; pass < 2; ++pass) {
        for (int64_t c = 0; c < classes; ++c) {
          float* pc = pb + c * n;
          const U* yc = LABELS ? yb : yb + c * n;
          const int32_t ci = static_cast<int32_t>(c);
          const double* g = a.g + (b * classes + c) * kStatsK;
          const float g0m2 = static_cast<float>(g[0] - g[2]), g1 = static_cast<float>(g[1]);
          const float g3 = static_cast<float>(g[3]);
#pragma omp simd
          for (int64_t i = 0; i < m; ++i) {
            const float p = pc[i];
            const float y = LABELS ? (lab[i] == ci ? 1.0f : 0.0f) : static_cast<float>(yc[i]);
            const float u = p * (y * g0m2 + (1.0f - y) * g1) - g3 * y;
            if (pass == 0) {
              usum[i] += u;
            } else {
              pc[i] = u - p * usum[i];
            }
          }
        }
      }
    }
  }
}

// Softmax kernels: float32 / float64 logits (the glue upcasts half types), label maps (U8,
// I64) or dense targets (F32, F64, U8).
template <int XT, int YT, bool LABELS, bool EXP> struct Soft {
  static void fwd(const Args& a, int64_t c0, int64_t c1, double* p) {
    if constexpr (XT == kF32 && !EXP) {
      if (a.saved != nullptr) return softmax_fwd<XT, YT, LABELS, EXP, true>(a, c0, c1, p);
    }
    softmax_fwd<XT, YT, LABELS, EXP>(a, c0, c1, p);
  }
  static void bwd(const Args& a, int64_t c0, int64_t c1) { softmax_bwd<XT, YT, LABELS, EXP>(a, c0, c1); }
};
// pick(Soft<...>()) for the kernel of these arguments (nullptr for an unknown combination).
template <int XT, bool EXP, class Pick>
auto soft_for_y(const Args& a, Pick pick) -> decltype(pick(Soft<XT, kU8, true, EXP>())) {
  if (a.labels) {
    if (a.yt == kU8) return pick(Soft<XT, kU8, true, EXP>());
    if (a.yt == kI64) return pick(Soft<XT, kI64, true, EXP>());
    return nullptr;
  }
  if (a.yt == kF32) return pick(Soft<XT, kF32, false, EXP>());
  if (a.yt == kF64) return pick(Soft<XT, kF64, false, EXP>());
  if (a.yt == kU8) return pick(Soft<XT, kU8, false, EXP>());
  return nullptr;
}
template <class Pick>
auto soft_for(const Args& a, Pick pick) -> decltype(soft_for_y<kF32, false>(a, pick)) {
  if (a.xt == kF32) return a.exp_sums ? soft_for_y<kF32, true>(a, pick) : soft_for_y<kF32, false>(a, pick);
  if (a.xt == kF64) return a.exp_sums ? soft_for_y<kF64, true>(a, pick) : soft_for_y<kF64, false>(a, pick);
  return nullptr;
}
void softmax_fwd_entry(const Args& a, int64_t c0, int64_t c1, double* partials) {
  const FwdFn f = soft_for(a, [](auto k) -> FwdFn { return &decltype(k)::fwd; });
  if (f) f(a, c0, c1, partials);
}
void softmax_bwd_entry(const Args& a, int64_t c0, int64_t c1) {
  const BwdFn f = soft_for(a, [](auto k) -> BwdFn { return &decltype(k)::bwd; });
  if (f) f(a, c0, c1);
}
void softmax_bwd_saved_entry(const Args& a, int64_t c0, int64_t c1) {
  if (a.labels) {
    if (a.yt == kU8) softmax_bwd_saved<kU8, true>(a, c0, c1);
    if (a.yt == kI64) softmax_bwd_saved<kI64, true>(a, c0, c1);
    return;
  }
  if (a.yt == kF32) softmax_bwd_saved<kF32, false>(a, c0, c1);
  if (a.yt == kF64) softmax_bwd_saved<kF64, false>(a, c0, c1);
  if (a.yt == kU8) softmax_bwd_saved<kU8, false>(a, c0, c1);
}

const Table kTable = {HYTVER_ISA_NAME, &entry_fwd<0>, &entry_bwd<0>, &entry_fwd<1>,
                      &entry_bwd<1>,   &entry_fwd<2>, &entry_bwd<2>, &entry_fwd<3>,
                      &entry_bwd<3>,   &softmax_fwd_entry, &softmax_bwd_entry,
                      &softmax_bwd_saved_entry};

}  // namespace
}  // namespace HYTVER_ISA_NS

const Table* HYTVER_TABLE_FN() { return &HYTVER_ISA_NS::kTable; }

}  // namespace cpu
}  // namespace hytver
