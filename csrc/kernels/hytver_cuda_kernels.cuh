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
#include <stdio.h>

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

// Target values the sums are defined for: [0, 1] for stats, {0, 1} for the exp sums.
template <class C>
__device__ __forceinline__ bool bad_target(C y, const C (&)[kStatsK]) {
  return !(y >= C(0) && y <= C(1));
}
template <class C>
__device__ __forceinline__ bool bad_target(C y, const C (&)[kExpK]) {
  return !(y == C(0) || y == C(1));
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
  const C qg = dexp(-k.gamma * (y > C(0.5) ? nlqt : nlpt));
  const C pg = qg;
  s[0] += y * pt;
  s[1] += ny * pt;
  s[2] += y * qt;
  s[3] += y * nlpt;
  s[4] += ny * nlqt;
  s[5] += y * qg;
  s[6] += ny * pg;
  s[7] += y * qg * nlpt;
  s[8] += ny * pg * nlqt;
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
// block's sums; k = K: 1 if the block saw an invalid target value, else 0.
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
  bool bad = false;
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
        bad = bad || bad_target(yj, s);
        accumulate(Num<T>::load(xv.v[j]), yj, prm, s);
      }
    }
  } else {
    for (int64_t i = g * kThreads + threadIdx.x; i < n; i += stride) {
      const C yi = static_cast<C>(yb[i]);
      bad = bad || bad_target(yi, s);
      accumulate(Num<T>::load(xb[i]), yi, prm, s);
    }
  }
  const int block_bad = __syncthreads_or(bad ? 1 : 0);
  block_sum<K, kThreads>(s);
  if (threadIdx.x == 0) {
    C* out = partials + static_cast<int64_t>(blockIdx.x) * (K + 1);
#pragma unroll
    for (int k = 0; k < K; ++k) out[k] = s[k];
    out[K] = block_bad ? C(1) : C(0);
  }
}

// Row `row`'s sums over its G partials in double, in a fixed order (valid in thread 0); `bad`
// becomes 1 if a partial flags an invalid target.
template <int K, class A>
__device__ __forceinline__ void sum_partials(const A* __restrict__ partials, int64_t row, int G,
                                             double (&s)[K], int& bad) {
#pragma unroll
  for (int k = 0; k < K; ++k) s[k] = 0.0;
  for (int g = threadIdx.x; g < G; g += kFinalizeThreads) {
    const A* p = partials + (row * G + g) * (K + 1);
#pragma unroll
    for (int k = 0; k < K; ++k) s[k] += static_cast<double>(p[k]);
    bad = bad || p[K] != A(0);
  }
  block_sum<K, kFinalizeThreads>(s);
}

// Stage 2 of the sums ops: block b adds partials[(b * G + g) * (K + 1) + k] over g.
template <int K, class A, class O>
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const A* __restrict__ partials, int G, O* __restrict__ out) {
  const int64_t b = blockIdx.x;
  double s[K];
  int bad = 0;  // the sums ops do not validate
  sum_partials<K>(partials, b, G, s, bad);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) out[b * K + k] = static_cast<O>(s[k]);
  }
}

// Stage 2 of the loss ops, one block: every row's sums (in double, fixed order) into `sums`,
// then thread 0 evaluates the algebra: *loss and coef (rows x K). An invalid target stops here.
template <int K, class A, class O>
__global__ void __launch_bounds__(kFinalizeThreads)
    loss_finalize_kernel(const A* __restrict__ partials, int G, int64_t B, int64_t C, int64_t n,
                         algebra::Spec spec, double* __restrict__ sums,
                         double* __restrict__ coef, O* __restrict__ loss) {
  const int64_t rows = B * C;
  int bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double s[K];
    sum_partials<K>(partials, r, G, s, bad);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) sums[r * K + k] = s[k];
    }
    __syncthreads();  // block_sum's shared memory is reused by the next row
  }
  bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    if (bad) {
      printf("hytver::loss: target values must lie in [0, 1] (exponent losses: be 0 or 1)\n");
      __trap();
    }
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

// out: B * K sums in the compute type (float, or double for double logits).
// Requires B >= 1, n >= 1 and B * blocks_per_sample <= 2^31 - 1.
template <int MODE, class T, class U>
cudaError_t launch_forward(const T* x, const U* y, int64_t B, int64_t n, double gamma, double eps,
                           typename Num<T>::C* partials, typename Num<T>::C* out,
                           cudaStream_t stream) {
  typedef typename Num<T>::C C;
  int G = 0;
  cudaError_t err = launch_partials<MODE, T, U>(x, y, B, n, gamma, eps, partials, stream, &G);
  if (err != cudaSuccess) return err;
  finalize_kernel<ModeK<MODE>::K, C, C>
      <<<static_cast<unsigned>(B), kFinalizeThreads, 0, stream>>>(partials, G, out);
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

}  // namespace cuda
}  // namespace hytver
