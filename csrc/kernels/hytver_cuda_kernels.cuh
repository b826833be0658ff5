// Fused HyTver loss sums on CUDA GPUs: framework-free kernels and raw-pointer launchers.
//
// Only CUDA headers are used here, so that `nvcc -std=c++17 -arch=sm_90` can check the device
// code without torch (tests/cuda_standalone/check.cu); csrc/cuda/hytver_cuda.cu is the torch
// glue.
//
// Same sums and formulas as the CPU kernels (csrc/kernels/hytver_cpu_kernels.h):
//   a = |x|, e = exp(-a), p = x >= 0 ? 1/(1+e) : e/(1+e), q likewise, sp = log1p(e),
//   -log p = sp + max(-x, 0), -log q = sp + max(x, 0).
// float / half / bfloat16 logits compute and accumulate in float; double logits in double.
//
// Forward = two launches, deterministic and free of atomics:
//   stage 1: grid of B * G blocks (G blocks per sample, G from (n, B) only), 256 threads,
//            grid-stride over 16-byte packs (when n is a multiple of the pack and the pointers
//            are aligned), per-thread accumulators, warp-shuffle + shared-memory block
//            reduction, K partials per block;
//   stage 2: one block per sample adds its G partials in double in a fixed order.
// Backward = one elementwise launch on the same grid.
//
// The loss ops (launch_loss_forward / launch_loss_backward) run the same stage 1 over rows
// r = b * C + c (sample, channel); their stage 2 is one block that adds every row's partials and
// then evaluates the loss algebra (hytver_loss_algebra.h) in thread 0, writing the loss and the
// gradient coefficients w.r.t. the sums: two launches, no host round trip. Stage 1 also flags
// target values outside [0, 1] (exponent kinds: other than 0 and 1); stage 2 then stops the
// kernel with a message (a device-side assertion, as torch._assert_async).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <assert.h>

#include "hytver_loss_algebra.h"

namespace hytver {
namespace cuda {

constexpr int kThreads = 256;         // threads per block, stage 1 and backward
constexpr int kFinalizeThreads = 128; // threads per block, stage 2
constexpr int kItemsPerThread = 4;    // packs per thread before the grid saturates
constexpr int64_t kMaxBlocks = 4096;  // cap on B * G (unless B alone is larger)

constexpr int kStatsK = 5;
constexpr int kExpK = 9;

enum Mode : int { kStats = 0, kExp = 1 };

template <int MODE> struct ModeK;
template <> struct ModeK<kStats> { static constexpr int K = kStatsK; };
template <> struct ModeK<kExp> { static constexpr int K = kExpK; };

// ---------------------------------------------------------------------------------------------
// element types

template <class T> struct Num;
template <> struct Num<float> {
  typedef float C;
  __device__ __forceinline__ static C load(float v) { return v; }
  __device__ __forceinline__ static float store(C v) { return v; }
};
template <> struct Num<double> {
  typedef double C;
  __device__ __forceinline__ static C load(double v) { return v; }
  __device__ __forceinline__ static double store(C v) { return v; }
};
template <> struct Num<__half> {
  typedef float C;
  __device__ __forceinline__ static C load(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half store(C v) { return __float2half_rn(v); }
};
template <> struct Num<__nv_bfloat16> {
  typedef float C;
  __device__ __forceinline__ static C load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 store(C v) { return __float2bfloat16_rn(v); }
};

// 16 bytes of logits per pack; the target pack holds as many elements (1 to 32 bytes).
template <class T> struct PackSize { static constexpr int value = 16 / sizeof(T); };

template <class T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Pack {
  T v[N];
};

template <class T, int N>
__host__ __device__ constexpr int pack_align() {
  return sizeof(T) * N >= 16 ? 16 : static_cast<int>(sizeof(T) * N);
}

// ---------------------------------------------------------------------------------------------
// math

__device__ __forceinline__ float dexp(float z) { return expf(z); }
__device__ __forceinline__ double dexp(double z) { return exp(z); }

__device__ __forceinline__ void sig_pq(float x, float& p, float& q) {
  const float e = expf(-fabsf(x));
  const float r = __frcp_rn(1.0f + e);
  const float er = e * r;
  p = x >= 0.0f ? r : er;
  q = x >= 0.0f ? er : r;
}
__device__ __forceinline__ void sig_pq(double x, double& p, double& q) {
  const double e = exp(-fabs(x));
  const double r = 1.0 / (1.0 + e);
  const double er = e * r;
  p = x >= 0.0 ? r : er;
  q = x >= 0.0 ? er : r;
}
__device__ __forceinline__ void sig_pq_sp(float x, float& p, float& q, float& sp) {
  const float e = expf(-fabsf(x));
  const float r = __frcp_rn(1.0f + e);
  const float er = e * r;
  p = x >= 0.0f ? r : er;
  q = x >= 0.0f ? er : r;
  sp = log1pf(e);
}
__device__ __forceinline__ void sig_pq_sp(double x, double& p, double& q, double& sp) {
  const double e = exp(-fabs(x));
  const double r = 1.0 / (1.0 + e);
  const double er = e * r;
  p = x >= 0.0 ? r : er;
  q = x >= 0.0 ? er : r;
  sp = log1p(e);
}

template <class C>
__device__ __forceinline__ C relu(C v) {
  return v > C(0) ? v : C(0);
}

// Hyperparameters of exp_stats in the compute type (computed on the host in double).
template <class C> struct ExpParams {
  C lo;       // eps
  C hi;       // 1 - eps
  C nlog_lo;  // -log(eps)      (0 when eps == 0; never selected then)
  C nlog_hi;  // -log1p(-eps)
  C gamma;
};

template <class C>
__host__ inline ExpParams<C> make_exp_params(double gamma, double eps) {
  ExpParams<C> k;
  eps = eps > 0.0 ? eps : 0.0;
  k.lo = static_cast<C>(eps);
  k.hi = static_cast<C>(1.0 - eps);
  k.nlog_lo = static_cast<C>(eps > 0.0 ? -log(eps) : 0.0);
  k.nlog_hi = static_cast<C>(-log1p(-eps));
  k.gamma = static_cast<C>(gamma);
  return k;
}

// Target problems, as bits of a flag word (stage 1 ORs them per block, the finalize kernel over
// all blocks, and asserts on the device with the message of the first one set).
enum Problem : int {
  kOutside01 = 1,      // a value outside [0, 1] (or NaN)
  kNotHard = 2,        // a value other than 0 and 1 where the loss needs hard labels
  kLabelRange = 4,     // softmax: a label outside [0, C)
  kNotNormalised = 8,  // softmax: one-hot / soft channels not summing to 1
};

// Problem bits of a sigmoid target value: [0, 1] for the 5 sums, {0, 1} for the exp sums.
template <class C>
__device__ __forceinline__ int bad_target(C y, const C (&)[kStatsK]) {
  return (y >= C(0) && y <= C(1)) ? 0 : kOutside01;
}
template <class C>
__device__ __forceinline__ int bad_target(C y, const C (&)[kExpK]) {
  if (!(y >= C(0) && y <= C(1))) return kOutside01;
  return (y == C(0) || y == C(1)) ? 0 : kNotHard;
}

// OR of every thread's problem bits (all threads of the block must call it).
__device__ __forceinline__ int block_or_bits(int bits) {
  int out = 0;
#pragma unroll
  for (int bit = 1; bit <= kNotNormalised; bit <<= 1) {
    out |= __syncthreads_or(bits & bit) ? bit : 0;
  }
  return out;
}

// Stops the kernel with a device-side assertion naming the target problem (cudaErrorAssert,
// the message on stderr; torch reports it at the next synchronisation).
__device__ __forceinline__ void assert_target(int bits) {
  if (bits & kLabelRange)
    __assert_fail("hytver::loss: labels must lie in [0, C)", __FILE__, __LINE__, __func__);
  if (bits & kNotNormalised)
    __assert_fail("hytver::loss: one-hot / soft target channels must sum to 1 at every voxel",
                  __FILE__, __LINE__, __func__);
  if (bits & kOutside01)
    __assert_fail("hytver::loss: target values must lie in [0, 1] (and not be NaN)", __FILE__,
                  __LINE__, __func__);
  if (bits & kNotHard)
    __assert_fail("hytver::loss: this loss needs hard labels (target values 0 or 1)", __FILE__,
                  __LINE__, __func__);
}

template <class C>
__device__ __forceinline__ void accumulate(C x, C y, const ExpParams<C>&, C (&s)[kStatsK]) {
  C p, q, sp;
  sig_pq_sp(x, p, q, sp);
  const C ny = C(1) - y;
  s[0] += p * y;
  s[1] += p * ny;
  s[2] += q * y;
  s[3] += y * (sp + relu(-x));
  s[4] += ny * (sp + relu(x));
}

// The exp sums of one (clamped) class probability pt = 1 - qt with -log pt and pw (q~^g where
// y = 1, p~^g where y = 0; hard labels): TP, FP, FN, C1, Eq, Ep, F1 (C0, F0 left to the caller).
template <class C>
__device__ __forceinline__ void accumulate_clamped(C y, C pt, C qt, C nlpt, C pw,
                                                   C (&s)[kExpK]) {
  const C ny = C(1) - y;
  s[0] += y * pt;
  s[1] += ny * pt;
  s[2] += y * qt;
  s[3] += y * nlpt;
  s[5] += y * pw;
  s[6] += ny * pw;
  s[7] += y * pw * nlpt;
}

template <class C>
__device__ __forceinline__ void accumulate(C x, C y, const ExpParams<C>& k, C (&s)[kExpK]) {
  C p, q, sp;
  sig_pq_sp(x, p, q, sp);
  const C ny = C(1) - y;
  const C nlp = sp + relu(-x);
  const C nlq = sp + relu(x);
  const bool plo = p < k.lo;
  const bool qlo = q < k.lo;
  const C pt = plo ? k.lo : (qlo ? k.hi : p);
  const C qt = qlo ? k.lo : (plo ? k.hi : q);
  const C nlpt = plo ? k.nlog_lo : (qlo ? k.nlog_hi : nlp);
  const C nlqt = qlo ? k.nlog_lo : (plo ? k.nlog_hi : nlq);
  // Hard labels: qt^gamma matters only where y = 1, pt^gamma only where y = 0: one exp.
  const C pw = dexp(-k.gamma * (y > C(0.5) ? nlqt : nlpt));
  accumulate_clamped(y, pt, qt, nlpt, pw, s);
  s[4] += ny * nlqt;
  s[8] += ny * pw * nlqt;
}

template <class C>
__device__ __forceinline__ C grad_elem(C x, C y, const ExpParams<C>&, const C (&g)[kStatsK]) {
  C p, q;
  sig_pq(x, p, q);
  const C ny = C(1) - y;
  return p * q * (y * (g[0] - g[2]) + ny * g[1]) + (g[4] * ny * p - g[3] * y * q);
}

template <class C>
__device__ __forceinline__ C grad_elem(C x, C y, const ExpParams<C>& k, const C (&g)[kExpK]) {
  C p, q, sp;
  sig_pq_sp(x, p, q, sp);
  const C ny = C(1) - y;
  const C nlp = sp + relu(-x);
  const C nlq = sp + relu(x);
  const C qg = dexp(-k.gamma * (y > C(0.5) ? nlq : nlp));  // hard labels: one exp
  const C pg = qg;
  const C gp = k.gamma * p;
  const C gq = k.gamma * q;
  const C v = p * q * (y * (g[0] - g[2]) + ny * g[1]) + (g[4] * ny * p - g[3] * y * q) +
              y * qg * (-(gp * g[5]) - g[7] * (gp * nlp + q)) +
              ny * pg * (gq * g[6] + g[8] * (p + gq * nlq));
  // Outside [eps, 1 - eps] torch.clamp passes no gradient.
  return (p < k.lo || q < k.lo) ? C(0) : v;
}

// ---------------------------------------------------------------------------------------------
// reductions

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sum of s[k] over the block (fixed order); the result is valid in thread 0.
template <int K, int THREADS, class A>
__device__ __forceinline__ void block_sum(A (&s)[K]) {
  constexpr int kWarps = THREADS / 32;
  __shared__ A shared[K][kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const A v = warp_sum(s[k]);
    if (lane == 0) shared[k][warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      A v = lane < kWarps ? shared[k][lane] : A(0);
#pragma unroll
      for (int off = kWarps / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
      s[k] = v;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// kernels

// Stage 1: blockIdx.x = b * G + g (b: a row). partials[(b * G + g) * (K + 1) + k], k < K: the
// block's sums; k = K: the problem bits of the target values the block saw.
template <int MODE, class T, class U, bool VEC>
__global__ void __launch_bounds__(kThreads)
    forward_partial_kernel(const T* __restrict__ x, const U* __restrict__ y, int64_t n, int G,
                           ExpParams<typename Num<T>::C> prm,
                           typename Num<T>::C* __restrict__ partials) {
  typedef typename Num<T>::C C;
  constexpr int K = ModeK<MODE>::K;
  constexpr int P = PackSize<T>::value;
  const int64_t b = blockIdx.x / G;
  const int64_t g = blockIdx.x - b * G;
  const T* xb = x + b * n;
  const U* yb = y + b * n;
  C s[K];
#pragma unroll
  for (int k = 0; k < K; ++k) s[k] = C(0);
  int bad = 0;
  const int64_t stride = static_cast<int64_t>(G) * kThreads;
  if (VEC) {
    const int64_t npack = n / P;
    const Pack<T, P>* xp = reinterpret_cast<const Pack<T, P>*>(xb);
    const Pack<U, P>* yp = reinterpret_cast<const Pack<U, P>*>(yb);
    for (int64_t i = g * kThreads + threadIdx.x; i < npack; i += stride) {
      const Pack<T, P> xv = xp[i];
      const Pack<U, P> yv = yp[i];
#pragma unroll
      for (int j = 0; j < P; ++j) {
        const C yj = static_cast<C>(yv.v[j]);
        bad |= bad_target(yj, s);
        accumulate(Num<T>::load(xv.v[j]), yj, prm, s);
      }
    }
  } else {
    for (int64_t i = g * kThreads + threadIdx.x; i < n; i += stride) {
      const C yi = static_cast<C>(yb[i]);
      bad |= bad_target(yi, s);
      accumulate(Num<T>::load(xb[i]), yi, prm, s);
    }
  }
  const int block_bad = block_or_bits(bad);
  block_sum<K, kThreads>(s);
  if (threadIdx.x == 0) {
    C* out = partials + static_cast<int64_t>(blockIdx.x) * (K + 1);
#pragma unroll
    for (int k = 0; k < K; ++k) out[k] = s[k];
    out[K] = static_cast<C>(block_bad);  // problem bits (small integers: exact)
  }
}

// Stage 2 of the loss ops, one block of kFinalizeThreads: warp w adds the G partials of rows
// w, w + warps, ... (lanes stride over the partials, then a fixed shuffle tree: deterministic),
// so B * C in the hundreds costs a few rows per warp, not one row after another. Then thread 0
// evaluates the algebra: *loss and coef (rows x K). An invalid target stops here with a
// device-side assertion naming the problem.
template <int K, class A, class O>
__global__ void __launch_bounds__(kFinalizeThreads)
    loss_finalize_kernel(const A* __restrict__ partials, int G, int64_t B, int64_t C, int64_t n,
                         algebra::Spec spec, double* __restrict__ sums,
                         double* __restrict__ coef, O* __restrict__ loss) {
  constexpr int kWarps = kFinalizeThreads / 32;
  const int64_t rows = B * C;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  int bits = 0;
  for (int64_t r = warp; r < rows; r += kWarps) {
    double s[K];
#pragma unroll
    for (int k = 0; k < K; ++k) s[k] = 0.0;
    for (int g = lane; g < G; g += 32) {
      const A* p = partials + (r * G + g) * (K + 1);
#pragma unroll
      for (int k = 0; k < K; ++k) s[k] += static_cast<double>(p[k]);
      bits |= static_cast<int>(p[K]);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const double v = warp_sum(s[k]);
      if (lane == 0) sums[r * K + k] = v;
    }
  }
  bits = block_or_bits(bits);  // also orders the sums' writes before thread 0 reads them
  if (threadIdx.x == 0) {
    if (bits != 0) assert_target(bits);
    *loss = static_cast<O>(algebra::loss_and_coef(spec, sums, B, C, n, coef));
  }
}

// Backward: gx[b, i] from x, y and grad[b, 0..K) (contiguous; the loss ops pass their float64
// coef and the loss's gradient as `scale`, the sums ops nullptr).
template <int MODE, class T, class U, bool VEC, class GR>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ x, const U* __restrict__ y,
                    const GR* __restrict__ grad, const typename Num<T>::C* __restrict__ scale,
                    int64_t n, int G, ExpParams<typename Num<T>::C> prm, T* __restrict__ gx) {
  typedef typename Num<T>::C C;
  constexpr int K = ModeK<MODE>::K;
  constexpr int P = PackSize<T>::value;
  const int64_t b = blockIdx.x / G;
  const int64_t g = blockIdx.x - b * G;
  const GR sc = scale != nullptr ? static_cast<GR>(*scale) : GR(1);
  C gr[K];
#pragma unroll
  for (int k = 0; k < K; ++k) gr[k] = static_cast<C>(grad[b * K + k] * sc);
  const T* xb = x + b * n;
  const U* yb = y + b * n;
  T* ob = gx + b * n;
  const int64_t stride = static_cast<int64_t>(G) * kThreads;
  if (VEC) {
    const int64_t npack = n / P;
    const Pack<T, P>* xp = reinterpret_cast<const Pack<T, P>*>(xb);
    const Pack<U, P>* yp = reinterpret_cast<const Pack<U, P>*>(yb);
    Pack<T, P>* op = reinterpret_cast<Pack<T, P>*>(ob);
    for (int64_t i = g * kThreads + threadIdx.x; i < npack; i += stride) {
      const Pack<T, P> xv = xp[i];
      const Pack<U, P> yv = yp[i];
      Pack<T, P> ov;
#pragma unroll
      for (int j = 0; j < P; ++j)
        ov.v[j] = Num<T>::store(grad_elem(Num<T>::load(xv.v[j]), static_cast<C>(yv.v[j]), prm, gr));
      op[i] = ov;
    }
  } else {
    for (int64_t i = g * kThreads + threadIdx.x; i < n; i += stride)
      ob[i] = Num<T>::store(grad_elem(Num<T>::load(xb[i]), static_cast<C>(yb[i]), prm, gr));
  }
}

// ---------------------------------------------------------------------------------------------
// host launchers (raw pointers, caller's stream)

// Blocks per sample: depends only on (B, n, element size), never on the device, so results are
// bitwise reproducible on any GPU.
template <class T>
inline int blocks_per_sample(int64_t B, int64_t n) {
  const int64_t per_block = static_cast<int64_t>(kThreads) * PackSize<T>::value * kItemsPerThread;
  int64_t G = (n + per_block - 1) / per_block;
  int64_t cap = B > 0 ? kMaxBlocks / B : kMaxBlocks;
  if (cap < 1) cap = 1;
  if (G > cap) G = cap;
  if (G < 1) G = 1;
  return static_cast<int>(G);
}

template <class T, class U>
inline bool use_packs(const T* x, const U* y, const void* out, int64_t n) {
  constexpr int P = PackSize<T>::value;
  return n % P == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(y) % pack_align<U, P>() == 0 &&
         (out == nullptr || reinterpret_cast<uintptr_t>(out) % 16 == 0);
}

// Number of partials (elements of the compute type) that launch_forward needs.
template <int MODE, class T>
inline int64_t forward_workspace(int64_t B, int64_t n) {
  return B * blocks_per_sample<T>(B, n) * (ModeK<MODE>::K + 1);
}

// Stage 1 on B rows of n elements (G blocks per row); returns G through *G_out.
template <int MODE, class T, class U>
cudaError_t launch_partials(const T* x, const U* y, int64_t B, int64_t n, double gamma,
                            double eps, typename Num<T>::C* partials, cudaStream_t stream,
                            int* G_out) {
  typedef typename Num<T>::C C;
  const int G = blocks_per_sample<T>(B, n);
  *G_out = G;
  const ExpParams<C> prm = make_exp_params<C>(gamma, eps);
  const unsigned blocks = static_cast<unsigned>(B * G);
  if (use_packs(x, y, nullptr, n)) {
    forward_partial_kernel<MODE, T, U, true><<<blocks, kThreads, 0, stream>>>(x, y, n, G, prm,
                                                                             partials);
  } else {
    forward_partial_kernel<MODE, T, U, false><<<blocks, kThreads, 0, stream>>>(x, y, n, G, prm,
                                                                              partials);
  }
  return cudaGetLastError();
}

// grad: B * K values (GR: the compute type, or double with a device-side `scale`, one value of
// the compute type that multiplies them; nullptr: 1); gx: B * n elements of T.
template <int MODE, class T, class U, class GR = typename Num<T>::C>
cudaError_t launch_backward(const T* x, const U* y, const GR* grad, int64_t B, int64_t n,
                            double gamma, double eps, T* gx, cudaStream_t stream,
                            const typename Num<T>::C* scale = nullptr) {
  typedef typename Num<T>::C C;
  const int G = blocks_per_sample<T>(B, n);
  const ExpParams<C> prm = make_exp_params<C>(gamma, eps);
  const unsigned blocks = static_cast<unsigned>(B * G);
  if (use_packs(x, y, gx, n)) {
    backward_kernel<MODE, T, U, true, GR><<<blocks, kThreads, 0, stream>>>(x, y, grad, scale, n,
                                                                          G, prm, gx);
  } else {
    backward_kernel<MODE, T, U, false, GR><<<blocks, kThreads, 0, stream>>>(x, y, grad, scale, n,
                                                                           G, prm, gx);
  }
  return cudaGetLastError();
}

// The loss ops. rows = B * C rows of n elements; partials: forward_workspace<MODE, T>(rows, n)
// elements; sums and coef: rows * K doubles each; loss: one value of the compute type. MODE
// must be kExp exactly when algebra::is_exp(spec.kind).
template <int MODE, class T, class U>
cudaError_t launch_loss_forward(const T* x, const U* y, int64_t B, int64_t C, int64_t n,
                                const algebra::Spec& spec, typename Num<T>::C* partials,
                                double* sums, double* coef, typename Num<T>::C* loss,
                                cudaStream_t stream) {
  typedef typename Num<T>::C A;
  int G = 0;
  cudaError_t err =
      launch_partials<MODE, T, U>(x, y, B * C, n, algebra::voxel_gamma(spec),
                                  algebra::clamp_eps(spec), partials, stream, &G);
  if (err != cudaSuccess) return err;
  loss_finalize_kernel<ModeK<MODE>::K, A, A>
      <<<1, kFinalizeThreads, 0, stream>>>(partials, G, B, C, n, spec, sums, coef, loss);
  return cudaGetLastError();
}

// gx = grad_loss * sum_k coef[row, k] * dsum_k/dx, one launch; grad_loss on the device.
template <int MODE, class T, class U>
cudaError_t launch_loss_backward(const T* x, const U* y, const double* coef,
                                 const typename Num<T>::C* grad_loss, int64_t rows, int64_t n,
                                 const algebra::Spec& spec, T* gx, cudaStream_t stream) {
  return launch_backward<MODE, T, U, double>(x, y, coef, rows, n, algebra::voxel_gamma(spec),
                                             algebra::clamp_eps(spec), gx, stream, grad_loss);
}

// ---------------------------------------------------------------------------------------------
// softmax (C classes per voxel): logits (B, C, n); target a label map (B, n) of integers
// (LABELS) or dense (B, C, n). Row r = b * C + c holds class c's sums (hytver_loss_algebra.h).
// Per voxel: m = max_c x_c (class a), S' = sum_{c != a} exp(x_c - m), S = 1 + S',
// p_c = exp(x_c - m) / S, q_c = (c == a ? S' : S - e_c) / S, -log p_c = log1p(S') - (x_c - m).

template <class C> struct SoftVoxel {
  C mx, rest, inv, logs;
  int am;
};

template <class T, class C>
__device__ __forceinline__ SoftVoxel<C> soft_voxel(const T* __restrict__ x, int64_t n, int classes,
                                                   int64_t i) {
  SoftVoxel<C> v;
  v.mx = Num<T>::load(x[i]);
  v.am = 0;
  for (int c = 1; c < classes; ++c) {
    const C xc = Num<T>::load(x[c * n + i]);
    if (xc > v.mx) {
      v.mx = xc;
      v.am = c;
    }
  }
  v.rest = C(0);
  for (int c = 0; c < classes; ++c) {
    if (c != v.am) v.rest += dexp(Num<T>::load(x[c * n + i]) - v.mx);
  }
  v.inv = C(1) / (C(1) + v.rest);
  v.logs = log1p(v.rest);
  return v;
}

// The target of class c at voxel i, and the problem bits of voxel i (checked once, c == 0).
template <bool LABELS, bool HARD, class U, class C>
__device__ __forceinline__ C soft_target(const U* __restrict__ y, int64_t n, int classes, int c,
                                         int64_t i, int& bits) {
  if (LABELS) {
    const int64_t lab = static_cast<int64_t>(y[i]);
    if (c == 0 && !(lab >= 0 && lab < classes)) bits |= kLabelRange;
    return lab == c ? C(1) : C(0);
  }
  if (c == 0) {
    C total = C(0);
    for (int k = 0; k < classes; ++k) {
      const C v = static_cast<C>(y[k * n + i]);
      total += v;
      if (!(v >= C(0) && v <= C(1))) bits |= kOutside01;
      else if (HARD && !(v == C(0) || v == C(1))) bits |= kNotHard;
    }
    if (!(total - C(1) <= C(1e-4) && C(1) - total <= C(1e-4))) bits |= kNotNormalised;
  }
  return static_cast<C>(y[c * n + i]);
}

// Stage 1: blockIdx.x = b * G + g; for each class c (outer loop: any C, per-thread registers
// for one class at a time) the block's K sums over its voxels of sample b go to
// partials[((b * C + c) * G + g) * (K + 1) + k]; slot K: the problem bits.
template <int MODE, class T, class U, bool LABELS>
__global__ void __launch_bounds__(kThreads)
    softmax_partial_kernel(const T* __restrict__ x, const U* __restrict__ y, int64_t n,
                           int classes, int G, ExpParams<typename Num<T>::C> prm,
                           typename Num<T>::C* __restrict__ partials) {
  typedef typename Num<T>::C C;
  constexpr int K = ModeK<MODE>::K;
  constexpr bool EXP = MODE == kExp;
  const int64_t b = blockIdx.x / G;
  const int64_t g = blockIdx.x - b * G;
  const T* xb = x + b * classes * n;
  const U* yb = LABELS ? y + b * n : y + b * classes * n;
  const int64_t stride = static_cast<int64_t>(G) * kThreads;
  int bad = 0;
  for (int c = 0; c < classes; ++c) {
    C s[K];
#pragma unroll
    for (int k = 0; k < K; ++k) s[k] = C(0);
    for (int64_t i = g * kThreads + threadIdx.x; i < n; i += stride) {
      const SoftVoxel<C> v = soft_voxel<T, C>(xb, n, classes, i);
      const C yc = soft_target<LABELS, EXP, U, C>(yb, n, classes, c, i, bad);
      const C d = Num<T>::load(xb[c * n + i]) - v.mx;
      const C e = dexp(d);
      const C p = e * v.inv;
      const C q = (c == v.am ? v.rest : (C(1) + v.rest) - e) * v.inv;
      const C nlp = v.logs - d;
      if constexpr (!EXP) {
        const C ny = C(1) - yc;
        s[0] += p * yc;
        s[1] += p * ny;
        s[2] += q * yc;
        s[3] += yc * nlp;
      } else {
        const bool plo = p < prm.lo, qlo = q < prm.lo;
        const C pt = plo ? prm.lo : (qlo ? prm.hi : p);
        const C qt = qlo ? prm.lo : (plo ? prm.hi : q);
        const C nlpt = plo ? prm.nlog_lo : (qlo ? prm.nlog_hi : nlp);
        // hard labels: q~^g for the label's class, p~^g for the others
        const C lq = log(qt > C(0) ? qt : C(1e-38));
        accumulate_clamped(yc, pt, qt, nlpt, dexp(prm.gamma * (yc > C(0.5) ? lq : -nlpt)), s);
      }
    }
    block_sum<K, kThreads>(s);
    if (threadIdx.x == 0) {
      C* out = partials + ((b * classes + c) * G + g) * (K + 1);
#pragma unroll
      for (int k = 0; k < K; ++k) out[k] = s[k];
    }
    __syncthreads();  // block_sum's shared memory is reused by the next class
  }
  const int block_bad = block_or_bits(bad);
  if (threadIdx.x == 0) {
    for (int c = 0; c < classes; ++c)
      partials[((b * classes + c) * G + g) * (K + 1) + K] = static_cast<C>(block_bad);
  }
}

// The class-c gradient term u_c = p_c * dL/dp_c from the row's (scaled) coefficients gr.
template <int MODE, class C>
__device__ __forceinline__ C soft_u(C p, C q, C nlp, C yc, const ExpParams<C>& prm,
                                    const C* gr) {
  const C ny = C(1) - yc;
  C u = p * (yc * (gr[0] - gr[2]) + ny * gr[1]) - gr[3] * yc;
  if constexpr (MODE == kExp) {
    const C tiny = C(1e-38);
    const C lq = log(q > tiny ? q : tiny);
    const C qg = dexp(prm.gamma * lq);
    const C pq1 = p * dexp((prm.gamma - C(1)) * lq);
    const C pg = dexp(-prm.gamma * nlp);
    u += yc * (-(gr[5] * prm.gamma * pq1) - gr[7] * (prm.gamma * pq1 * nlp + qg)) +
         ny * (gr[6] * prm.gamma * pg);
    u = (p < prm.lo || q < prm.lo) ? C(0) : u;  // the clamp passes no gradient outside
  }
  return u;
}

// Backward, one elementwise launch (grid of B * G blocks over the voxels): per voxel, every
// class's gradient dL/dx_j = u_j - p_j * sum_c u_c (the softmax Jacobian couples the channels).
template <int MODE, class T, class U, bool LABELS>
__global__ void __launch_bounds__(kThreads)
    softmax_backward_kernel(const T* __restrict__ x, const U* __restrict__ y,
                            const double* __restrict__ coef,
                            const typename Num<T>::C* __restrict__ scale, int64_t n, int classes,
                            int G, ExpParams<typename Num<T>::C> prm, T* __restrict__ gx) {
  typedef typename Num<T>::C C;
  constexpr int K = ModeK<MODE>::K;
  const int64_t b = blockIdx.x / G;
  const int64_t g = blockIdx.x - b * G;
  const T* xb = x + b * classes * n;
  const U* yb = LABELS ? y + b * n : y + b * classes * n;
  T* ob = gx + b * classes * n;
  const double sc = static_cast<double>(*scale);
  const int64_t stride = static_cast<int64_t>(G) * kThreads;
  for (int64_t i = g * kThreads + threadIdx.x; i < n; i += stride) {
    const SoftVoxel<C> v = soft_voxel<T, C>(xb, n, classes, i);
    int unused = 0;
    C usum = C(0);
    for (int pass = 0; pass < 2; ++pass) {
      for (int c = 0; c < classes; ++c) {
        C gr[K];
        const double* row = coef + (b * classes + c) * K;
#pragma unroll
        for (int k = 0; k < K; ++k) gr[k] = static_cast<C>(row[k] * sc);
        const C yc = soft_target<LABELS, false, U, C>(yb, n, classes, c, i, unused);
        const C d = Num<T>::load(xb[c * n + i]) - v.mx;
        const C e = dexp(d);
        const C p = e * v.inv;
        const C q = (c == v.am ? v.rest : (C(1) + v.rest) - e) * v.inv;
        const C u = soft_u<MODE>(p, q, v.logs - d, yc, prm, gr);
        if (pass == 0) {
          usum += u;
        } else {
          ob[c * n + i] = Num<T>::store(u - p * usum);
        }
      }
    }
  }
}

// The exp sums' exponent and clamp of a loss kind in the compute type.
template <class A>
inline ExpParams<A> spec_exp_params(const algebra::Spec& spec) {
  return make_exp_params<A>(algebra::voxel_gamma(spec), algebra::clamp_eps(spec));
}

template <int MODE, class T, class U>
inline int64_t softmax_workspace(int64_t B, int64_t C, int64_t n) {
  return B * C * blocks_per_sample<T>(B, n) * (ModeK<MODE>::K + 1);
}

// The softmax loss op's forward: stage 1 over B samples of n voxels and C classes, then the
// shared finalize (rows = B * C). partials: softmax_workspace elements; sums, coef: B * C * K
// doubles; loss: one value of the compute type. Two launches, no host synchronisation.
template <int MODE, class T, class U, bool LABELS>
cudaError_t launch_softmax_loss_forward(const T* x, const U* y, int64_t B, int64_t C, int64_t n,
                                        const algebra::Spec& spec, typename Num<T>::C* partials,
                                        double* sums, double* coef, typename Num<T>::C* loss,
                                        cudaStream_t stream) {
  typedef typename Num<T>::C A;
  const int G = blocks_per_sample<T>(B, n);
  const ExpParams<A> prm = spec_exp_params<A>(spec);
  softmax_partial_kernel<MODE, T, U, LABELS>
      <<<static_cast<unsigned>(B * G), kThreads, 0, stream>>>(x, y, n, static_cast<int>(C), G,
                                                               prm, partials);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  loss_finalize_kernel<ModeK<MODE>::K, A, A>
      <<<1, kFinalizeThreads, 0, stream>>>(partials, G, B, C, n, spec, sums, coef, loss);
  return cudaGetLastError();
}

// The softmax backward: gx (B, C, n) = grad_loss * dL/dx, one launch.
template <int MODE, class T, class U, bool LABELS>
cudaError_t launch_softmax_loss_backward(const T* x, const U* y, const double* coef,
                                         const typename Num<T>::C* grad_loss, int64_t B,
                                         int64_t C, int64_t n, const algebra::Spec& spec, T* gx,
                                         cudaStream_t stream) {
  const int G = blocks_per_sample<T>(B, n);
  softmax_backward_kernel<MODE, T, U, LABELS>
      <<<static_cast<unsigned>(B * G), kThreads, 0, stream>>>(
          x, y, coef, grad_loss, n, static_cast<int>(C), G,
          spec_exp_params<typename Num<T>::C>(spec), gx);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace hytver
