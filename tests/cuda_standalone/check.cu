// Framework-free check of the CUDA kernels (csrc/kernels/hytver_cuda_kernels.cuh).
//
//   nvcc -std=c++17 -O3 -arch=sm_90 tests/cuda_standalone/check.cu -o /tmp/hytver_check
//   /tmp/hytver_check           # self-test against a double host reference (needs a GPU)
//   /tmp/hytver_check --bench   # also time the kernels with CUDA events
//   /tmp/hytver_check --quick   # a few small cases (for compute-sanitizer)
//
// Compiling it instantiates every kernel the torch glue uses (logits float / double / half /
// bfloat16 x target float / double / uint8, stats and exp_stats, forward and backward, and the
// loss ops with the loss algebra of csrc/kernels/hytver_loss_algebra.h on the device). Without a
// GPU the program reports that and exits 0 (the compile step is the check). Exit code 1 on any
// mismatch; a NaN anywhere is a mismatch.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// ---------------------------------------------------------------------------------------------
// double reference (same definitions as hytver_dist.ops.reference_*)

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

// The larger error; a NaN error wins and stays, so that a NaN result fails the check.
static double worse(double worst, double err) {
  if (std::isnan(worst) || std::isnan(err)) return NAN;
  return err > worst ? err : worst;
}

static int g_failures = 0;
static int g_cases = 0;
static bool g_quick = false;

template <int MODE, class T, class U>
void run_case(int64_t B, int64_t n, int offset, bool soft, double gamma, double eps,
              std::mt19937& rng) {
  typedef typename hc::Num<T>::C C;
  constexpr int K = hc::ModeK<MODE>::K;
  const bool is_exp = MODE == hc::kExp;
  const int64_t N = B * n;
  std::normal_distribution<float> nd(0.0f, 4.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::vector<T> hx(N + offset);
  std::vector<U> hy(N + offset);
  std::vector<double> xd(N), yd(N);
  for (int64_t i = 0; i < N; ++i) {
    float xv = nd(rng);
    if (i % 97 == 5) xv = 100.0f;
    if (i % 89 == 7) xv = -100.0f;
    if (i % 83 == 3) xv = 0.0f;
    float yv = ud(rng) < 0.3f ? 1.0f : 0.0f;
    if (soft && !std::is_same<U, uint8_t>::value) yv = ud(rng);
    hx[offset + i] = from_float<T>(xv);
    hy[offset + i] = from_float<U>(yv);
    xd[i] = to_double(hx[offset + i]);
    yd[i] = to_double(hy[offset + i]);
  }
  std::vector<double> ref(B * K, 0.0), absref(B * K, 0.0);
  std::vector<double> g(B * K);
  for (auto& v : g) v = ud(rng) * 2.0 - 1.0;
  std::vector<double> gref(N);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = b * n + i;
      const RefTerms t = ref_terms(xd[j], yd[j], is_exp ? gamma : 0.0, is_exp ? eps : 0.0);
      double d = 0.0;
      for (int k = 0; k < K; ++k) {
        ref[b * K + k] += t.v[k];
        absref[b * K + k] += std::fabs(t.v[k]);
        d += g[b * K + k] * t.dv[k];
      }
      gref[j] = d;
    }
  }

  T* dx;
  U* dy;
  T* dgx;
  C *dpart, *dout, *dg;
  const int64_t ws = hc::forward_workspace<MODE, T>(B, n);
  CHECK_CUDA(cudaMalloc(&dx, sizeof(T) * (N + offset)));
  CHECK_CUDA(cudaMalloc(&dy, sizeof(U) * (N + offset)));
  CHECK_CUDA(cudaMalloc(&dgx, sizeof(T) * (N + offset)));
  CHECK_CUDA(cudaMalloc(&dpart, sizeof(C) * ws));
  CHECK_CUDA(cudaMalloc(&dout, sizeof(C) * B * K));
  CHECK_CUDA(cudaMalloc(&dg, sizeof(C) * B * K));
  CHECK_CUDA(cudaMemcpy(dx, hx.data(), sizeof(T) * (N + offset), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy, hy.data(), sizeof(U) * (N + offset), cudaMemcpyHostToDevice));
  std::vector<C> hg(B * K);
  for (int64_t i = 0; i < B * K; ++i) hg[i] = static_cast<C>(g[i]);
  CHECK_CUDA(cudaMemcpy(dg, hg.data(), sizeof(C) * B * K, cudaMemcpyHostToDevice));

  const T* px = dx + offset;
  const U* py = dy + offset;
  T* pgx = dgx + offset;
  CHECK_CUDA((hc::launch_forward<MODE, T, U>(px, py, B, n, gamma, eps, dpart, dout, 0)));
  std::vector<C> out(B * K), out2(B * K);
  CHECK_CUDA(cudaMemcpy(out.data(), dout, sizeof(C) * B * K, cudaMemcpyDeviceToHost));
  CHECK_CUDA((hc::launch_forward<MODE, T, U>(px, py, B, n, gamma, eps, dpart, dout, 0)));
  CHECK_CUDA(cudaMemcpy(out2.data(), dout, sizeof(C) * B * K, cudaMemcpyDeviceToHost));
  CHECK_CUDA((hc::launch_backward<MODE, T, U>(px, py, dg, B, n, gamma, eps, pgx, 0)));
  std::vector<T> gx(N + offset);
  CHECK_CUDA(cudaMemcpy(gx.data(), dgx, sizeof(T) * (N + offset), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaDeviceSynchronize());

  const bool dbl = std::is_same<C, double>::value;
  const double tol_sum = dbl ? 1e-12 : 2e-6;
  double worst_sum = 0.0;
  for (int64_t i = 0; i < B * K; ++i) {
    worst_sum = worse(worst_sum, std::fabs(static_cast<double>(out[i]) - ref[i]) /
                                     (absref[i] + 1e-30));
  }
  const bool deterministic = std::memcmp(out.data(), out2.data(), sizeof(C) * B * K) == 0;
  double out_rel = dbl ? 1e-12 : 2e-6;
  if (std::is_same<T, __half>::value) out_rel = 1.0 / 1024;
  if (std::is_same<T, __nv_bfloat16>::value) out_rel = 1.0 / 128;
  double gmax = 0.0;
  for (int64_t i = 0; i < N; ++i) gmax = std::fmax(gmax, std::fabs(gref[i]));
  double worst_grad = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const double got = to_double(gx[offset + i]);
    worst_grad = worse(worst_grad, std::fabs(got - gref[i]) /
                                       (std::fabs(gref[i]) * out_rel + gmax * 1e-6 + 1e-300));
  }
  const bool ok = worst_sum <= tol_sum && worst_grad <= 1.0 && deterministic;
  ++g_cases;
  if (!ok) ++g_failures;
  std::printf("%s %-5s x=%-4s y=%-3s B=%lld n=%lld off=%d%s gamma=%g eps=%g: sums rel %.2e (tol %.0e), "
              "grad err/tol %.2f, deterministic %s\n",
              ok ? "ok  " : "FAIL", is_exp ? "exp" : "stats", type_name<T>(), type_name<U>(),
              static_cast<long long>(B), static_cast<long long>(n), offset, soft ? " soft" : "",
              gamma, eps, worst_sum, tol_sum, worst_grad, deterministic ? "yes" : "NO");
  cudaFree(dx);
  cudaFree(dy);
  cudaFree(dgx);
  cudaFree(dpart);
  cudaFree(dout);
  cudaFree(dg);
}

// The loss ops (two launches forward, one backward) against the host: double sums from
// ref_terms per (sample, channel) row, and the same algebra evaluated on the host.
template <int MODE, class T, class U>
void run_loss_case(const char* kind, std::vector<double> params, bool per_sample, int64_t B,
                   int64_t Cc, int64_t n, std::mt19937& rng) {
  namespace al = hytver::algebra;
  typedef typename hc::Num<T>::C A;
  constexpr int K = hc::ModeK<MODE>::K;
  al::Spec spec;
  spec.kind = al::name_to_kind(kind);
  for (size_t i = 0; i < params.size(); ++i) spec.prm[i] = params[i];
  spec.per_sample = per_sample;
  if (std::is_same<A, double>::value) spec.tiny = 2.2250738585072014e-308;
  const int64_t rows = B * Cc, N = rows * n;
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  std::vector<T> hx(N);
  std::vector<U> hy(N);
  std::vector<double> sums(rows * K, 0.0), coef(rows * K);
  std::vector<RefTerms> terms(N);
  const double gamma = al::voxel_gamma(spec), eps = al::clamp_eps(spec);
  for (int64_t i = 0; i < N; ++i) {
    hx[i] = from_float<T>(nd(rng));
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
  cudaFree(dx);
  cudaFree(dy);
  cudaFree(dgx);
  cudaFree(dpart);
  cudaFree(dloss);
  cudaFree(dgl);
  cudaFree(dsums);
  cudaFree(dcoef);
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
  const int64_t shapes[][2] = {{1, 1}, {3, 1001}, {2, 4096}, {2, 300000}};
  for (const auto& s : shapes) {
    if (g_quick && s[1] > 5000) continue;
    for (int offset : {0, 1}) {
      run_case<hc::kStats, T, U>(s[0], s[1], offset, true, 0.0, 0.0, rng);
      run_case<hc::kExp, T, U>(s[0], s[1], offset, false, 2.0, 0.0, rng);
    }
  }
  run_case<hc::kExp, T, U>(3, 1001, 0, false, 0.0, 0.0, rng);
  run_case<hc::kExp, T, U>(3, 1001, 0, false, 0.5, 1e-7, rng);
  run_case<hc::kExp, T, U>(3, 4096, 0, false, 2.5, 1e-7, rng);
}

template <class T, class U>
void bench_pair(int64_t B, int64_t n) {
  typedef typename hc::Num<T>::C C;
  const int64_t N = B * n;
  T* dx;
  U* dy;
  T* dgx;
  C *dpart, *dout, *dg;
  CHECK_CUDA(cudaMalloc(&dx, sizeof(T) * N));
  CHECK_CUDA(cudaMalloc(&dy, sizeof(U) * N));
  CHECK_CUDA(cudaMalloc(&dgx, sizeof(T) * N));
  CHECK_CUDA(cudaMalloc(&dpart, sizeof(C) * hc::forward_workspace<hc::kExp, T>(B, n)));
  CHECK_CUDA(cudaMalloc(&dout, sizeof(C) * B * hc::kExpK));
  CHECK_CUDA(cudaMalloc(&dg, sizeof(C) * B * hc::kExpK));
  CHECK_CUDA(cudaMemset(dx, 0, sizeof(T) * N));
  CHECK_CUDA(cudaMemset(dy, 0, sizeof(U) * N));
  CHECK_CUDA(cudaMemset(dg, 0, sizeof(C) * B * hc::kExpK));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  const int reps = 50;
  auto time_it = [&](const char* what, auto fn) {
    fn();
    cudaEventRecord(e0);
    for (int r = 0; r < reps; ++r) fn();
    cudaEventRecord(e1);
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    std::printf("bench x=%-4s y=%-3s B=%lld n=%lld %-10s %8.2f us\n", type_name<T>(), type_name<U>(),
                static_cast<long long>(B), static_cast<long long>(n), what, 1e3 * ms / reps);
  };
  time_it("stats fwd", [&] { hc::launch_forward<hc::kStats, T, U>(dx, dy, B, n, 0, 0, dpart, dout, 0); });
  time_it("stats bwd", [&] { hc::launch_backward<hc::kStats, T, U>(dx, dy, dg, B, n, 0, 0, dgx, 0); });
  time_it("exp fwd", [&] { hc::launch_forward<hc::kExp, T, U>(dx, dy, B, n, 2, 1e-7, dpart, dout, 0); });
  time_it("exp bwd", [&] { hc::launch_backward<hc::kExp, T, U>(dx, dy, dg, B, n, 2, 1e-7, dgx, 0); });
  CHECK_CUDA(cudaGetLastError());
  cudaFree(dx);
  cudaFree(dy);
  cudaFree(dgx);
  cudaFree(dpart);
  cudaFree(dout);
  cudaFree(dg);
}

int main(int argc, char** argv) {
  bool bench = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--bench") bench = true;
    if (std::string(argv[i]) == "--quick") g_quick = true;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: compile-only check passed\n");
    return 0;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  std::mt19937 rng(1234);
  if (g_quick) {
    run_type_pair<float, uint8_t>(rng);
    run_type_pair<__nv_bfloat16, float>(rng);
    run_type_pair<double, double>(rng);
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
  std::printf("%d cases, %d failures\n", g_cases, g_failures);
  if (bench) {
    bench_pair<float, uint8_t>(4, 80 * 80 * 80);
    bench_pair<float, float>(4, 80 * 80 * 80);
    bench_pair<__nv_bfloat16, uint8_t>(4, 80 * 80 * 80);
    bench_pair<float, uint8_t>(2, 160 * 192 * 160);
    bench_pair<__nv_bfloat16, uint8_t>(2, 160 * 192 * 160);
  }
  return g_failures == 0 ? 0 : 1;
}
