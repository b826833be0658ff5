// Framework-free check of the CUDA kernels (csrc/kernels/hytver_cuda_kernels.cuh).
//
//   nvcc -std=c++17 -O3 -arch=sm_90 tests/cuda_standalone/check.cu -o /tmp/hytver_check
//   /tmp/hytver_check           # self-test against a double host reference (needs a GPU)
//   /tmp/hytver_check --bench   # also time the kernels with CUDA events
//   /tmp/hytver_check --quick   # a few small cases (for compute-sanitizer)
//
// Compiling it instantiates every kernel the torch glue uses (logits float / double / half /
// bfloat16 x target float / double / uint8, the 5-sum and 9-sum kinds, sigmoid and softmax with
// label maps (uint8 / int64) and dense targets, forward and backward, with the loss algebra of
// csrc/kernels/hytver_loss_algebra.h on the device). Without a GPU the program reports that and
// exits 0 (the compile step is the check). Exit code 1 on any mismatch; a NaN anywhere is a
// mismatch. --assert launches a softmax loss with a label outside [0, C) and exits 0 only if
// the device-side assertion (cudaErrorAssert) reports it.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/kernels/hytver_cuda_kernels.cuh"

namespace hc = hytver::cuda;

#define CHECK_CUDA(expr)                                                                  \
  do {                                                                                    \
    cudaError_t err_ = (expr);                                                            \
    if (err_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorName(err_),        \
                   __FILE__, __LINE__, cudaGetErrorString(err_));                         \
      std::exit(2);                                                                       \
    }                                                                                     \
  } while (0)

// ---------------------------------------------------------------------------------------------
// host conversions

template <class T> T from_float(float v);
template <> float from_float<float>(float v) { return v; }
template <> double from_float<double>(float v) { return v; }
template <> __half from_float<__half>(float v) { return __float2half(v); }
template <> __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> uint8_t from_float<uint8_t>(float v) { return static_cast<uint8_t>(v); }

template <class T> double to_double(T v) { return static_cast<double>(v); }
template <> double to_double<__half>(__half v) { return __half2float(v); }
template <> double to_double<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> const char* type_name();
template <> const char* type_name<float>() { return "f32"; }
template <> const char* type_name<double>() { return "f64"; }
template <> const char* type_name<__half>() { return "f16"; }
template <> const char* type_name<__nv_bfloat16>() { return "bf16"; }
template <> const char* type_name<uint8_t>() { return "u8"; }
template <> const char* type_name<int64_t>() { return "i64"; }

// ---------------------------------------------------------------------------------------------
// double reference of the per-voxel sums (sigmoid)

struct RefTerms {
  double v[hc::kExpK];
  double dv[hc::kExpK];  // d v / d x
};

static RefTerms ref_terms(double x, double y, double gamma, double eps) {
  const double e = std::exp(-std::fabs(x));
  const double p = x >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
  const double q = x >= 0 ? e / (1.0 + e) : 1.0 / (1.0 + e);
  const double sp = std::log1p(e);
  const double nlp = sp + std::fmax(-x, 0.0), nlq = sp + std::fmax(x, 0.0);
  const bool plo = p < eps, qlo = q < eps;
  const bool inside = !plo && !qlo;
  const double pt = plo ? eps : (qlo ? 1.0 - eps : p);
  const double qt = qlo ? eps : (plo ? 1.0 - eps : q);
  const double nlpt = plo ? -std::log(eps) : (qlo ? -std::log1p(-eps) : nlp);
  const double nlqt = qlo ? -std::log(eps) : (plo ? -std::log1p(-eps) : nlq);
  const double qg = std::exp(-gamma * nlqt), pg = std::exp(-gamma * nlpt);
  const double ny = 1.0 - y;
  const double I = inside ? 1.0 : 0.0;
  const double dpt = I * p * q;
  RefTerms t;
  const double vals[hc::kExpK] = {y * pt,      ny * pt,        y * qt,
                                  y * nlpt,    ny * nlqt,      y * qg,
                                  ny * pg,     y * qg * nlpt,  ny * pg * nlqt};
  const double dvals[hc::kExpK] = {y * dpt,
                                   ny * dpt,
                                   -y * dpt,
                                   -y * q * I,
                                   ny * p * I,
                                   -y * gamma * qg * p * I,
                                   ny * gamma * pg * q * I,
                                   -y * qg * I * (gamma * p * nlp + q),
                                   ny * pg * I * (p + gamma * q * nlq)};
  for (int k = 0; k < hc::kExpK; ++k) {
    t.v[k] = vals[k];
    t.dv[k] = dvals[k];
  }
  return t;
}

// ---------------------------------------------------------------------------------------------

// The algebra's Spec of a loss kind with these hyperparameters (A: the compute type).
template <class A>
hytver::algebra::Spec make_spec(const char* kind, const std::vector<double>& params,
                                bool per_sample) {
  hytver::algebra::Spec spec;
  spec.kind = hytver::algebra::name_to_kind(kind);
  for (size_t i = 0; i < params.size(); ++i) spec.prm[i] = params[i];
  spec.per_sample = per_sample;
  if (std::is_same<A, double>::value) spec.tiny = 2.2250738585072014e-308;
  return spec;
}

static void free_all(std::initializer_list<void*> ptrs) {
  for (void* p : ptrs) cudaFree(p);
}

// The larger error; a NaN error wins and stays, so that a NaN result fails the check.
static double worse(double worst, double err) {
  if (std::isnan(worst) || std::isnan(err)) return NAN;
  return err > worst ? err : worst;
}

static int g_failures = 0;
static int g_cases = 0;
static bool g_quick = false;

// The loss ops (two launches forward, one backward) against the host: double sums from
// ref_terms per (sample, channel) row, and the same algebra evaluated on the host.
template <int MODE, class T, class U>
void run_loss_case(const char* kind, std::vector<double> params, bool per_sample, int64_t B,
                   int64_t Cc, int64_t n, std::mt19937& rng) {
  namespace al = hytver::algebra;
  typedef typename hc::Num<T>::C A;
  constexpr int K = hc::ModeK<MODE>::K;
  al::Spec spec = make_spec<A>(kind, params, per_sample);
  const int64_t rows = B * Cc, N = rows * n;
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::vector<T> hx(N);
  std::vector<U> hy(N);
  std::vector<double> sums(rows * K, 0.0), coef(rows * K);
  std::vector<RefTerms> terms(N);
  const double gamma = al::voxel_gamma(spec), eps = al::clamp_eps(spec);
  for (int64_t i = 0; i < N; ++i) {
    float xv = nd(rng);
    if (i % 97 == 5) xv = 100.0f;  // saturated logits
    if (i % 89 == 7) xv = -100.0f;
    hx[i] = from_float<T>(xv);
    hy[i] = from_float<U>(ud(rng) < 0.2f ? 1.0f : 0.0f);
    terms[i] = ref_terms(to_double(hx[i]), to_double(hy[i]), gamma, eps);
    for (int k = 0; k < K; ++k) sums[(i / n) * K + k] += terms[i].v[k];
  }
  const double want = al::loss_and_coef(spec, sums.data(), B, Cc, n, coef.data());
  const double grad_loss = 0.75;
  T* dx;
  U* dy;
  T* dgx;
  A *dpart, *dloss, *dgl;
  double *dsums, *dcoef;
  CHECK_CUDA(cudaMalloc(&dx, sizeof(T) * N));
  CHECK_CUDA(cudaMalloc(&dy, sizeof(U) * N));
  CHECK_CUDA(cudaMalloc(&dgx, sizeof(T) * N));
  CHECK_CUDA(cudaMalloc(&dpart, sizeof(A) * hc::forward_workspace<MODE, T>(rows, n)));
  CHECK_CUDA(cudaMalloc(&dloss, sizeof(A)));
  CHECK_CUDA(cudaMalloc(&dgl, sizeof(A)));
  CHECK_CUDA(cudaMalloc(&dsums, sizeof(double) * rows * K));
  CHECK_CUDA(cudaMalloc(&dcoef, sizeof(double) * rows * K));
  CHECK_CUDA(cudaMemcpy(dx, hx.data(), sizeof(T) * N, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy, hy.data(), sizeof(U) * N, cudaMemcpyHostToDevice));
  const A hgl = static_cast<A>(grad_loss);
  CHECK_CUDA(cudaMemcpy(dgl, &hgl, sizeof(A), cudaMemcpyHostToDevice));
  CHECK_CUDA((hc::launch_loss_forward<MODE, T, U>(dx, dy, B, Cc, n, spec, dpart, dsums, dcoef,
                                                  dloss, 0)));
  CHECK_CUDA((hc::launch_loss_backward<MODE, T, U>(dx, dy, dcoef, dgl, rows, n, spec, dgx, 0)));
  A got;
  std::vector<double> got_coef(rows * K);
  std::vector<T> gx(N);
  CHECK_CUDA(cudaMemcpy(&got, dloss, sizeof(A), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(got_coef.data(), dcoef, sizeof(double) * rows * K,
                        cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(gx.data(), dgx, sizeof(T) * N, cudaMemcpyDeviceToHost));
  const bool dbl = std::is_same<A, double>::value;
  double loss_err = std::fabs(static_cast<double>(got) - want) / (std::fabs(want) + 1e-30);
  double coef_err = 0.0, cmax = 0.0, gmax = 0.0, grad_err = 0.0;
  for (double c : coef) cmax = std::fmax(cmax, std::fabs(c));
  for (int64_t i = 0; i < rows * K; ++i)
    coef_err = worse(coef_err, std::fabs(got_coef[i] - coef[i]) / (cmax + 1e-300));
  std::vector<double> gref(N);
  for (int64_t i = 0; i < N; ++i) {
    double d = 0.0;
    for (int k = 0; k < K; ++k) d += coef[(i / n) * K + k] * terms[i].dv[k];
    gref[i] = grad_loss * d;
    gmax = std::fmax(gmax, std::fabs(gref[i]));
  }
  double out_rel = dbl ? 1e-10 : 1e-4;  // the gradient is stored in the logits' type
  double floor = 1e-300;
  if (std::is_same<T, __half>::value) {
    out_rel = 1.0 / 1024;
    floor = std::ldexp(1.0, -24);  // float16 gradients of O(1/n) are subnormal: spacing 2^-24
  }
  if (std::is_same<T, __nv_bfloat16>::value) out_rel = 1.0 / 128;
  for (int64_t i = 0; i < N; ++i)
    grad_err = worse(grad_err, std::fabs(to_double(gx[i]) - gref[i]) /
                                   (std::fabs(gref[i]) * out_rel + gmax * 1e-5 + floor));
  loss_err = worse(0.0, loss_err);
  const double tol = dbl ? 1e-12 : 1e-5;
  const bool ok = loss_err <= tol && coef_err <= (dbl ? 1e-10 : 1e-4) && grad_err <= 1.0;
  ++g_cases;
  if (!ok) ++g_failures;
  std::printf("%s loss %-24s x=%-4s y=%-3s B=%lld C=%lld n=%lld%s: loss rel %.2e, coef rel %.2e, "
              "grad err/tol %.2f\n",
              ok ? "ok  " : "FAIL", kind, type_name<T>(), type_name<U>(),
              static_cast<long long>(B), static_cast<long long>(Cc), static_cast<long long>(n),
              per_sample ? " per-sample" : "", loss_err, coef_err, grad_err);
  free_all({dx, dy, dgx, dpart, dloss, dgl, dsums, dcoef});
}

template <class T, class U>
void run_loss_cases(std::mt19937& rng) {
  const int64_t n = g_quick ? 999 : 20000;
  for (bool per_sample : {false, true}) {
    run_loss_case<hc::kStats, T, U>("hytver", {0.7, 0.7, 0.5, 1.0}, per_sample, 2, 3, n, rng);
    run_loss_case<hc::kStats, T, U>("focal_tversky", {0.8, 0.75, 1.0}, per_sample, 3, 1, n, rng);
    run_loss_case<hc::kStats, T, U>("weighted_ce", {0.1, 0.9}, per_sample, 2, 2, n, rng);
    run_loss_case<hc::kExp, T, U>("focal_dice", {1.0, 1.0, 0.25, 2.0, 1.0}, per_sample, 2, 2, n,
                                  rng);
  }
  run_loss_case<hc::kExp, T, U>("dice_pp", {2.0}, false, 2, 3, n, rng);
  run_loss_case<hc::kExp, T, U>("symmetric_unified_focal", {0.5, 0.6, 0.5}, false, 2, 2, n, rng);
  run_loss_case<hc::kExp, T, U>("asymmetric_unified_focal", {0.5, 0.6, 0.5}, false, 1, 3, n, rng);
}

template <class T, class U>
void run_type_pair(std::mt19937& rng) {
  run_loss_cases<T, U>(rng);
}

// ---------------------------------------------------------------------------------------------
// softmax: per-voxel terms in double from the definitions, and their derivatives w.r.t. p_c

struct SoftTerms {
  double v[hc::kExpK];
  double dp[hc::kExpK];  // d v / d p_c (inside the clamp; 0 outside)
};

static SoftTerms soft_terms(double p, double y, double gamma, double eps) {
  SoftTerms t{};
  const bool inside = eps <= 0.0 || (p >= eps && p <= 1.0 - eps);
  const double pt = p < eps ? eps : (p > 1.0 - eps ? 1.0 - eps : p);
  const double qt = 1.0 - pt, ny = 1.0 - y, I = inside ? 1.0 : 0.0;
  const double nlp = -std::log(pt);
  const double qg = std::pow(qt, gamma), pg = std::pow(pt, gamma);
  const double vals[hc::kExpK] = {y * pt, ny * pt, y * qt, y * nlp, 0.0,
                                  y * qg, ny * pg, y * qg * nlp, 0.0};
  const double ds[hc::kExpK] = {y, ny, -y, -y / pt, 0.0,
                                -y * gamma * std::pow(qt, gamma - 1.0),
                                ny * gamma * std::pow(pt, gamma - 1.0),
                                y * (-gamma * std::pow(qt, gamma - 1.0) * nlp - qg / pt), 0.0};
  for (int k = 0; k < hc::kExpK; ++k) {
    t.v[k] = vals[k];
    t.dp[k] = I * ds[k];
  }
  return t;
}

template <int MODE, class T, class U, bool LABELS>
void run_softmax_case(const char* kind, std::vector<double> params, bool per_sample,
                      bool include_background, int64_t B, int64_t Cc, int64_t n,
                      std::mt19937& rng) {
  namespace al = hytver::algebra;
  typedef typename hc::Num<T>::C A;
  constexpr int K = hc::ModeK<MODE>::K;
  al::Spec spec = make_spec<A>(kind, params, per_sample);
  spec.softmax = true;
  spec.include_background = include_background;
  const double gamma = al::voxel_gamma(spec), eps = al::clamp_eps(spec);
  const int64_t N = B * Cc * n, NY = LABELS ? B * n : N;
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::uniform_int_distribution<int> cls(0, static_cast<int>(Cc) - 1);
  std::vector<T> hx(N);
  std::vector<U> hy(NY);
  std::vector<int> lab(B * n);
  for (int64_t i = 0; i < N; ++i) hx[i] = from_float<T>(i % 101 == 3 ? 60.0f : nd(rng));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      const int l = cls(rng);
      lab[b * n + i] = l;
      if (LABELS) {
        hy[b * n + i] = static_cast<U>(l);
      } else {
        for (int64_t c = 0; c < Cc; ++c) hy[(b * Cc + c) * n + i] = from_float<U>(c == l ? 1.0f : 0.0f);
      }
    }
  }
  // softmax per voxel in double, the sums per row and the per-voxel derivatives
  std::vector<double> P(N), sums(B * Cc * K, 0.0), coef(B * Cc * K);
  std::vector<SoftTerms> terms(N);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      double mx = -1e300;
      for (int64_t c = 0; c < Cc; ++c) mx = std::fmax(mx, to_double(hx[(b * Cc + c) * n + i]));
      double S = 0.0;
      for (int64_t c = 0; c < Cc; ++c) S += std::exp(to_double(hx[(b * Cc + c) * n + i]) - mx);
      for (int64_t c = 0; c < Cc; ++c) {
        const int64_t j = (b * Cc + c) * n + i;
        P[j] = std::exp(to_double(hx[j]) - mx) / S;
        terms[j] = soft_terms(P[j], lab[b * n + i] == c ? 1.0 : 0.0, gamma, eps);
        for (int k = 0; k < K; ++k) sums[(b * Cc + c) * K + k] += terms[j].v[k];
      }
    }
  }
  const double want = al::loss_and_coef(spec, sums.data(), B, Cc, n, coef.data());
  const double grad_loss = 0.75;
  std::vector<double> gref(N);
  double gmax = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      // dL/dx_j = sum_c (sum_k coef_ck * dv_ck/dp_c) * p_c * (delta_cj - p_j)
      std::vector<double> w(Cc);
      double wsum = 0.0;
      for (int64_t c = 0; c < Cc; ++c) {
        const int64_t j = (b * Cc + c) * n + i;
        double d = 0.0;
        for (int k = 0; k < K; ++k) d += coef[(b * Cc + c) * K + k] * terms[j].dp[k];
        w[c] = d * P[j];
        wsum += w[c];
      }
      for (int64_t c = 0; c < Cc; ++c) {
        const int64_t j = (b * Cc + c) * n + i;
        gref[j] = grad_loss * (w[c] - P[j] * wsum);
        gmax = std::fmax(gmax, std::fabs(gref[j]));
      }
    }
  }
  T* dx;
  U* dy;
  T* dgx;
  A *dpart, *dloss, *dgl;
  double *dsums, *dcoef;
  CHECK_CUDA(cudaMalloc(&dx, sizeof(T) * N));
  CHECK_CUDA(cudaMalloc(&dy, sizeof(U) * NY));
  CHECK_CUDA(cudaMalloc(&dgx, sizeof(T) * N));
  CHECK_CUDA(cudaMalloc(&dpart, sizeof(A) * hc::softmax_workspace<MODE, T, U>(B, Cc, n)));
  CHECK_CUDA(cudaMalloc(&dloss, sizeof(A)));
  CHECK_CUDA(cudaMalloc(&dgl, sizeof(A)));
  CHECK_CUDA(cudaMalloc(&dsums, sizeof(double) * B * Cc * K));
  CHECK_CUDA(cudaMalloc(&dcoef, sizeof(double) * B * Cc * K));
  CHECK_CUDA(cudaMemcpy(dx, hx.data(), sizeof(T) * N, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy, hy.data(), sizeof(U) * NY, cudaMemcpyHostToDevice));
  const A hgl = static_cast<A>(grad_loss);
  CHECK_CUDA(cudaMemcpy(dgl, &hgl, sizeof(A), cudaMemcpyHostToDevice));
  CHECK_CUDA((hc::launch_softmax_loss_forward<MODE, T, U, LABELS>(dx, dy, B, Cc, n, spec, dpart,
                                                                  dsums, dcoef, dloss, 0)));
  CHECK_CUDA((hc::launch_softmax_loss_backward<MODE, T, U, LABELS>(dx, dy, dcoef, dgl, B, Cc, n,
                                                                   spec, dgx, 0)));
  A got;
  std::vector<T> gx(N);
  CHECK_CUDA(cudaMemcpy(&got, dloss, sizeof(A), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(gx.data(), dgx, sizeof(T) * N, cudaMemcpyDeviceToHost));
  const bool dbl = std::is_same<A, double>::value;
  const double loss_err = worse(0.0, std::fabs(static_cast<double>(got) - want) /
                                         (std::fabs(want) + 1e-30));
  double out_rel = dbl ? 1e-10 : 1e-4, floor = 1e-300;
  if (std::is_same<T, __half>::value) {
    out_rel = 1.0 / 1024;
    floor = std::ldexp(1.0, -24);
  }
  if (std::is_same<T, __nv_bfloat16>::value) out_rel = 1.0 / 128;
  double grad_err = 0.0;
  for (int64_t j = 0; j < N; ++j)
    grad_err = worse(grad_err, std::fabs(to_double(gx[j]) - gref[j]) /
                                   (std::fabs(gref[j]) * out_rel + gmax * 1e-5 + floor));
  const bool ok = loss_err <= (dbl ? 1e-12 : 1e-5) && grad_err <= 1.0;
  ++g_cases;
  if (!ok) ++g_failures;
  std::printf("%s softmax %-24s x=%-4s y=%-3s %s B=%lld C=%lld n=%lld%s%s: loss rel %.2e, "
              "grad err/tol %.2f\n",
              ok ? "ok  " : "FAIL", kind, type_name<T>(), type_name<U>(),
              LABELS ? "labels" : "one-hot", static_cast<long long>(B),
              static_cast<long long>(Cc), static_cast<long long>(n),
              per_sample ? " per-sample" : "", include_background ? "" : " no-bg", loss_err,
              grad_err);
  free_all({dx, dy, dgx, dpart, dloss, dgl, dsums, dcoef});
}

template <class T>
void run_softmax_cases(std::mt19937& rng) {
  const int64_t n = g_quick ? 777 : 9000;
  for (bool per_sample : {false, true}) {
    run_softmax_case<hc::kStats, T, uint8_t, true>("hytver", {0.7, 0.7, 0.5, 1.0}, per_sample,
                                                   false, 2, 4, n, rng);
    run_softmax_case<hc::kStats, T, int64_t, true>("dice_ce", {1.0, 1.0, 1.0}, per_sample, true,
                                                   2, 3, n, rng);
    run_softmax_case<hc::kStats, T, float, false>("weighted_ce", {0.1, 0.9}, per_sample, true, 2,
                                                  3, n, rng);
    run_softmax_case<hc::kExp, T, uint8_t, false>("focal_dice", {1.0, 1.0, 0.25, 2.0, 1.0},
                                                  per_sample, false, 2, 4, n, rng);
  }
  run_softmax_case<hc::kExp, T, uint8_t, true>("dice_pp", {2.0}, false, true, 2, 3, n, rng);
  run_softmax_case<hc::kExp, T, int64_t, true>("symmetric_unified_focal", {0.5, 0.6, 0.5}, false,
                                               true, 2, 3, n, rng);
  run_softmax_case<hc::kExp, T, double, false>("asymmetric_unified_focal", {0.5, 0.6, 0.5},
                                               false, false, 1, 4, n, rng);
  run_softmax_case<hc::kExp, T, uint8_t, true>("focal", {0.25, 1.5}, false, true, 2, 5, n, rng);
}

// A label outside [0, C): the finalize kernel must stop with a device-side assertion.
static int run_assert_case() {
  namespace al = hytver::algebra;
  const int64_t B = 1, Cc = 3, n = 1000;
  al::Spec spec;
  spec.kind = al::name_to_kind("dice");
  spec.prm[0] = 1.0;
  spec.softmax = true;
  std::vector<float> hx(B * Cc * n, 0.0f);
  std::vector<uint8_t> hy(B * n, 0);
  hy[517] = 3;
  float *dx, *dpart, *dloss;
  uint8_t* dy;
  double *dsums, *dcoef;
  CHECK_CUDA(cudaMalloc(&dx, sizeof(float) * hx.size()));
  CHECK_CUDA(cudaMalloc(&dy, hy.size()));
  CHECK_CUDA(cudaMalloc(&dpart, sizeof(float) * hc::softmax_workspace<hc::kStats, float, uint8_t>(
                                    B, Cc, n)));
  CHECK_CUDA(cudaMalloc(&dloss, sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dsums, sizeof(double) * B * Cc * hc::kStatsK));
  CHECK_CUDA(cudaMalloc(&dcoef, sizeof(double) * B * Cc * hc::kStatsK));
  CHECK_CUDA(cudaMemcpy(dx, hx.data(), sizeof(float) * hx.size(), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy, hy.data(), hy.size(), cudaMemcpyHostToDevice));
  CHECK_CUDA((hc::launch_softmax_loss_forward<hc::kStats, float, uint8_t, true>(
      dx, dy, B, Cc, n, spec, dpart, dsums, dcoef, dloss, 0)));
  const cudaError_t err = cudaDeviceSynchronize();
  std::printf("assert case: %s\n", cudaGetErrorName(err));
  return err == cudaErrorAssert ? 0 : 1;
}


// Kernel time of the loss ops with CUDA events around a batch of launches (no host code in
// between): forward (2 launches) and backward (1) of hytver (5 sums) and dice_pp (9 sums),
// sigmoid on (B, 1, n) and softmax on (B, C, n) with a uint8 label map.
template <class T>
void bench(int64_t B, int64_t C, int64_t n) {
  namespace al = hytver::algebra;
  typedef typename hc::Num<T>::C A;
  const int64_t N = B * C * n;
  T *dx, *dgx;
  uint8_t* dy;
  A *dpart, *dloss, *dgl;
  double *dsums, *dcoef;
  CHECK_CUDA(cudaMalloc(&dx, sizeof(T) * N));
  CHECK_CUDA(cudaMalloc(&dy, N));
  CHECK_CUDA(cudaMalloc(&dgx, sizeof(T) * N));
  const int64_t ws = hc::softmax_workspace<hc::kExp, T, uint8_t>(B, C, n) +
                     hc::forward_workspace<hc::kExp, T>(B * C, n);
  CHECK_CUDA(cudaMalloc(&dpart, sizeof(A) * ws));
  CHECK_CUDA(cudaMalloc(&dloss, sizeof(A)));
  CHECK_CUDA(cudaMalloc(&dgl, sizeof(A)));
  CHECK_CUDA(cudaMalloc(&dsums, sizeof(double) * B * C * hc::kExpK));
  CHECK_CUDA(cudaMalloc(&dcoef, sizeof(double) * B * C * hc::kExpK));
  CHECK_CUDA(cudaMemset(dx, 0, sizeof(T) * N));
  CHECK_CUDA(cudaMemset(dy, 0, N));
  CHECK_CUDA(cudaMemset(dgl, 0, sizeof(A)));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  const int reps = 50;
  auto time_it = [&](const char* what, int64_t bytes, auto fn) {
    fn();
    cudaEventRecord(e0);
    for (int r = 0; r < reps; ++r) fn();
    cudaEventRecord(e1);
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    const double us = 1e3 * ms / reps;
    std::printf("bench x=%-4s B=%lld C=%lld n=%lld %-22s %9.2f us  %7.1f GB/s\n", type_name<T>(),
                static_cast<long long>(B), static_cast<long long>(C), static_cast<long long>(n),
                what, us, bytes / us * 1e-3);
  };
  const int64_t xb = sizeof(T) * N;
  for (const char* kind : {"hytver", "dice_pp"}) {
    al::Spec spec;
    spec.kind = al::name_to_kind(kind);
    const double hy[4] = {0.7, 0.7, 0.5, 1.0};
    for (int i = 0; i < al::param_count(spec.kind); ++i) spec.prm[i] = spec.kind == al::kDicePP ? 2.0 : hy[i];
    const bool is_exp = al::is_exp(spec.kind);
    char label[64];
    std::snprintf(label, sizeof(label), "sigmoid %s fwd", kind);
    time_it(label, xb + N, [&] {
      if (is_exp) {
        hc::launch_loss_forward<hc::kExp, T, uint8_t>(dx, dy, B, C, n, spec, dpart, dsums, dcoef, dloss, 0);
      } else {
        hc::launch_loss_forward<hc::kStats, T, uint8_t>(dx, dy, B, C, n, spec, dpart, dsums, dcoef, dloss, 0);
      }
    });
    std::snprintf(label, sizeof(label), "sigmoid %s bwd", kind);
    time_it(label, 2 * xb + N, [&] {
      if (is_exp) {
        hc::launch_loss_backward<hc::kExp, T, uint8_t>(dx, dy, dcoef, dgl, B * C, n, spec, dgx, 0);
      } else {
        hc::launch_loss_backward<hc::kStats, T, uint8_t>(dx, dy, dcoef, dgl, B * C, n, spec, dgx, 0);
      }
    });
    if (C < 2) continue;
    spec.softmax = true;
    std::snprintf(label, sizeof(label), "softmax %s fwd", kind);
    time_it(label, xb + B * n, [&] {
      if (is_exp) {
        hc::launch_softmax_loss_forward<hc::kExp, T, uint8_t, true>(dx, dy, B, C, n, spec, dpart, dsums, dcoef, dloss, 0);
      } else {
        hc::launch_softmax_loss_forward<hc::kStats, T, uint8_t, true>(dx, dy, B, C, n, spec, dpart, dsums, dcoef, dloss, 0);
      }
    });
    std::snprintf(label, sizeof(label), "softmax %s bwd", kind);
    time_it(label, 2 * xb + B * n, [&] {
      if (is_exp) {
        hc::launch_softmax_loss_backward<hc::kExp, T, uint8_t, true>(dx, dy, dcoef, dgl, B, C, n, spec, dgx, 0);
      } else {
        hc::launch_softmax_loss_backward<hc::kStats, T, uint8_t, true>(dx, dy, dcoef, dgl, B, C, n, spec, dgx, 0);
      }
    });
  }
  CHECK_CUDA(cudaGetLastError());
  free_all({dx, dy, dgx, dpart, dloss, dgl, dsums, dcoef});
}

int main(int argc, char** argv) {
  bool do_bench = false, do_assert = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--bench") do_bench = true;
    if (std::string(argv[i]) == "--quick") g_quick = true;
    if (std::string(argv[i]) == "--assert") do_assert = true;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: compile-only check passed\n");
    return 0;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  if (do_assert) return run_assert_case();  // poisons the context: nothing may follow
  std::mt19937 rng(1234);
  if (g_quick) {
    run_type_pair<float, uint8_t>(rng);
    run_type_pair<__nv_bfloat16, float>(rng);
    run_type_pair<double, double>(rng);
    run_softmax_cases<float>(rng);
    run_softmax_cases<double>(rng);
    std::printf("%d cases, %d failures\n", g_cases, g_failures);
    return g_failures == 0 ? 0 : 1;
  }
  run_type_pair<float, float>(rng);
  run_type_pair<float, uint8_t>(rng);
  run_type_pair<float, double>(rng);
  run_type_pair<double, double>(rng);
  run_type_pair<double, float>(rng);
  run_type_pair<double, uint8_t>(rng);
  run_type_pair<__half, float>(rng);
  run_type_pair<__half, uint8_t>(rng);
  run_type_pair<__half, double>(rng);
  run_type_pair<__nv_bfloat16, float>(rng);
  run_type_pair<__nv_bfloat16, uint8_t>(rng);
  run_type_pair<__nv_bfloat16, double>(rng);
  run_softmax_cases<float>(rng);
  run_softmax_cases<double>(rng);
  run_softmax_cases<__half>(rng);
  run_softmax_cases<__nv_bfloat16>(rng);
  std::printf("%d cases, %d failures\n", g_cases, g_failures);
  if (do_bench) {
    bench<float>(4, 1, 80 * 80 * 80);
    bench<__nv_bfloat16>(4, 1, 80 * 80 * 80);
    bench<float>(2, 4, 128 * 128 * 128);
  }
  return g_failures == 0 ? 0 : 1;
}
