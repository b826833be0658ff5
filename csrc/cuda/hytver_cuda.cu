// CUDA implementations of the hytver:: ops: checks, dtype dispatch, launches on the current
// stream. The kernels live in csrc/kernels/hytver_cuda_kernels.cuh (framework-free).
//
// Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls cuBLAS/cuSPARSE headers that minimal
// CUDA toolkits lack.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../include/hytver_loss_spec.h"
#include "../kernels/hytver_cuda_kernels.cuh"

namespace hytver {
namespace {

namespace hc = hytver::cuda;

void check_inputs(const at::Tensor& logits, const at::Tensor& target, const char* op) {
  TORCH_CHECK_VALUE(logits.dim() >= 1, "hytver::", op,
                    ": logits need a batch dimension (B, ...), got a 0-dim tensor");
  TORCH_CHECK_VALUE(logits.is_cuda() && target.is_cuda() && target.device() == logits.device(),
                    "hytver::", op, ": logits and target must be on the same CUDA device, got ",
                    logits.device(), " and ", target.device());
  const auto xt = logits.scalar_type();
  TORCH_CHECK_VALUE(xt == at::kFloat || xt == at::kDouble || xt == at::kHalf || xt == at::kBFloat16,
                    "hytver::", op, ": logits must be float32, float64, bfloat16 or float16, got ",
                    xt);
  const auto yt = target.scalar_type();
  TORCH_CHECK_VALUE(yt == at::kFloat || yt == at::kDouble || yt == at::kByte || yt == at::kBool,
                    "hytver::", op, ": target must be float32, float64, uint8 or bool, got ", yt);
  TORCH_CHECK_VALUE(target.dim() >= 1 && target.size(0) == logits.size(0) &&
                        target.numel() == logits.numel(),
                    "hytver::", op, ": target shape ", target.sizes(),
                    " does not match logits shape ", logits.sizes(),
                    " (need the same batch size and the same number of elements per sample)");
}

void check_hyper(double gamma, double eps, const char* op) {
  TORCH_CHECK_VALUE(gamma >= 0.0 && gamma < 1e30, "hytver::", op,
                    ": gamma must be finite and >= 0, got ", gamma);
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < 0.5, "hytver::", op, ": eps must be in [0, 0.5), got ",
                    eps);
}

void check_launch(cudaError_t err) { C10_CUDA_CHECK(err); }

// Calls f(T*, U*) with the typed data pointers (bool targets as uint8).
template <class F>
void dispatch_types(const at::Tensor& x, const at::Tensor& y, F&& f) {
  auto with_x = [&](auto* xp) {
    switch (y.scalar_type()) {
      case at::kFloat: f(xp, static_cast<const float*>(y.data_ptr())); break;
      case at::kDouble: f(xp, static_cast<const double*>(y.data_ptr())); break;
      case at::kByte:
      case at::kBool: f(xp, static_cast<const uint8_t*>(y.data_ptr())); break;
      default: TORCH_CHECK(false, "unreachable target dtype");
    }
  };
  switch (x.scalar_type()) {
    case at::kFloat: with_x(static_cast<const float*>(x.data_ptr())); break;
    case at::kDouble: with_x(static_cast<const double*>(x.data_ptr())); break;
    case at::kHalf: with_x(static_cast<const __half*>(x.data_ptr())); break;
    case at::kBFloat16: with_x(static_cast<const __nv_bfloat16*>(x.data_ptr())); break;
    default: TORCH_CHECK(false, "unreachable logits dtype");
  }
}

template <int MODE>
at::Tensor forward(const at::Tensor& logits, const at::Tensor& target, double gamma, double eps,
                   const char* op) {
  check_inputs(logits, target, op);
  constexpr int K = hc::ModeK<MODE>::K;
  const int64_t B = logits.size(0);
  const int64_t n = B > 0 ? logits.numel() / B : 0;
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (B == 0 || n == 0) return at::zeros({B, K}, logits.options().dtype(acc));
  TORCH_CHECK_VALUE(B <= INT32_MAX, "hytver::", op, ": batch size too large");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor y = target.contiguous();
  at::Tensor out = at::empty({B, K}, logits.options().dtype(acc));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  dispatch_types(x, y, [&](auto* xp, auto* yp) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(xp)>>;
    using U = std::remove_cv_t<std::remove_pointer_t<decltype(yp)>>;
    using C = typename hc::Num<T>::C;
    const int64_t ws = hc::forward_workspace<MODE, T>(B, n);
    at::Tensor partials = at::empty({ws}, logits.options().dtype(acc));
    const cudaError_t err = hc::launch_forward<MODE, T, U>(
        xp, yp, B, n, gamma, eps, static_cast<C*>(partials.data_ptr()),
        static_cast<C*>(out.data_ptr()), stream);
    check_launch(err);
  });
  return out;
}

template <int MODE>
at::Tensor backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                    double gamma, double eps, const char* op) {
  check_inputs(logits, target, op);
  constexpr int K = hc::ModeK<MODE>::K;
  const int64_t B = logits.size(0);
  const int64_t n = B > 0 ? logits.numel() / B : 0;
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == B && grad.size(1) == K, "hytver::", op,
                    ": grad must have shape (", B, ", ", K, "), got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == logits.device(), "hytver::", op,
                    ": grad and logits must be on the same device");
  TORCH_CHECK_VALUE(at::isFloatingType(grad.scalar_type()), "hytver::", op,
                    ": grad must be a floating-point tensor, got ", grad.scalar_type());
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  at::Tensor gx = at::empty(logits.sizes(), x.options());
  if (B == 0 || n == 0) return gx;
  TORCH_CHECK_VALUE(B <= INT32_MAX, "hytver::", op, ": batch size too large");
  const at::Tensor y = target.contiguous();
  const auto acc = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g = grad.to(acc).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  dispatch_types(x, y, [&](auto* xp, auto* yp) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(xp)>>;
    using U = std::remove_cv_t<std::remove_pointer_t<decltype(yp)>>;
    using C = typename hc::Num<T>::C;
    const cudaError_t err = hc::launch_backward<MODE, T, U>(
        xp, yp, static_cast<const C*>(g.data_ptr()), B, n, gamma, eps,
        static_cast<T*>(gx.data_ptr()), stream);
    check_launch(err);
  });
  return gx;
}

at::Tensor stats_cuda(const at::Tensor& logits, const at::Tensor& target) {
  return forward<hc::kStats>(logits, target, 0.0, 0.0, "stats");
}

at::Tensor stats_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                               const at::Tensor& target) {
  return backward<hc::kStats>(grad, logits, target, 0.0, 0.0, "stats_backward");
}

at::Tensor exp_stats_cuda(const at::Tensor& logits, const at::Tensor& target, double gamma,
                          double eps) {
  check_hyper(gamma, eps, "exp_stats");
  return forward<hc::kExp>(logits, target, gamma, eps, "exp_stats");
}

at::Tensor exp_stats_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                   const at::Tensor& target, double gamma, double eps) {
  check_hyper(gamma, eps, "exp_stats_backward");
  return backward<hc::kExp>(grad, logits, target, gamma, eps, "exp_stats_backward");
}

// ---------------------------------------------------------------------------------------------
// the loss ops: two launches forward, one backward, no host synchronisation

template <class P>
using Elem = std::remove_cv_t<std::remove_pointer_t<P>>;
template <class P>
using Acc = typename hc::Num<Elem<P>>::C;  // compute type of the logits pointer P

// Calls f(std::integral_constant<int, MODE>, T*, U*) for the kind's sums and the typed data
// pointers.
template <class F>
void dispatch_loss(const algebra::Spec& spec, const at::Tensor& x, const at::Tensor& y, F&& f) {
  dispatch_types(x, y, [&](auto* xp, auto* yp) {
    if (algebra::is_exp(spec.kind)) {
      f(std::integral_constant<int, hc::kExp>(), xp, yp);
    } else {
      f(std::integral_constant<int, hc::kStats>(), xp, yp);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_cuda(const at::Tensor& logits,
                                                         const at::Tensor& target,
                                                         c10::string_view kind,
                                                         at::ArrayRef<double> params,
                                                         bool per_sample, bool save) {
  const char* op = "loss";
  check_inputs(logits, target, op);
  check_loss_inputs(logits, target, op);
  TORCH_CHECK_VALUE(!save, "hytver::loss: save=True is a CPU path (the GPU recomputes faster "
                    "than it reads)");
  const algebra::Spec spec = make_spec(logits, std::string(kind), params, per_sample, op);
  const int64_t B = logits.size(0), C = logits.size(1);
  const int64_t rows = B * C;
  const int64_t n = logits.numel() / rows;
  TORCH_CHECK_VALUE(rows <= INT32_MAX, "hytver::", op, ": batch * channels too large");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor y = target.contiguous();
  const int K = algebra::sums_k(spec.kind);
  const auto acc = loss_dtype(logits);
  at::Tensor loss = at::empty({}, logits.options().dtype(acc));
  at::Tensor coef = at::empty({rows, K}, logits.options().dtype(at::kDouble));
  at::Tensor sums = at::empty({rows, K}, logits.options().dtype(at::kDouble));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  dispatch_loss(spec, x, y, [&](auto mode, auto* xp, auto* yp) {
    constexpr int MODE = decltype(mode)::value;
    using A = Acc<decltype(xp)>;
    const int64_t ws = hc::forward_workspace<MODE, Elem<decltype(xp)>>(rows, n);
    at::Tensor partials = at::empty({ws}, logits.options().dtype(acc));
    check_launch(hc::launch_loss_forward<MODE>(
        xp, yp, B, C, n, spec, static_cast<A*>(partials.data_ptr()), sums.data_ptr<double>(),
        coef.data_ptr<double>(), static_cast<A*>(loss.data_ptr()), stream));
  });
  return {loss, coef, at::empty({0}, logits.options().dtype(at::kFloat))};
}

at::Tensor loss_backward_cuda(const at::Tensor& grad, const at::Tensor& coef,
                              const at::Tensor& logits, const at::Tensor& target,
                              c10::string_view kind, at::ArrayRef<double> params) {
  const char* op = "loss_backward";
  check_inputs(logits, target, op);
  check_loss_inputs(logits, target, op);
  const algebra::Spec spec = make_spec(logits, std::string(kind), params, false, op);
  check_coef(coef, logits, algebra::sums_k(spec.kind), op);
  check_loss_grad(grad, logits, op);
  const int64_t rows = logits.size(0) * logits.size(1);
  const int64_t n = logits.numel() / rows;
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous();
  const at::Tensor y = target.contiguous();
  const at::Tensor c = coef.contiguous();
  // The loss's gradient in the compute type (no copy when it already is: the usual case).
  const at::Tensor g = grad.to(loss_dtype(logits)).reshape({});
  at::Tensor gx = at::empty(logits.sizes(), x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  dispatch_loss(spec, x, y, [&](auto mode, auto* xp, auto* yp) {
    constexpr int MODE = decltype(mode)::value;
    check_launch(hc::launch_loss_backward<MODE>(
        xp, yp, c.data_ptr<double>(), static_cast<const Acc<decltype(xp)>*>(g.data_ptr()), rows,
        n, spec, static_cast<Elem<decltype(xp)>*>(gx.data_ptr()), stream));
  });
  return gx;
}

}  // namespace
}  // namespace hytver

TORCH_LIBRARY_IMPL(hytver, CUDA, m) {
  m.impl("stats", &hytver::stats_cuda);
  m.impl("stats_backward", &hytver::stats_backward_cuda);
  m.impl("exp_stats", &hytver::exp_stats_cuda);
  m.impl("exp_stats_backward", &hytver::exp_stats_backward_cuda);
  m.impl("loss", &hytver::loss_cuda);
  m.impl("loss_backward", &hytver::loss_backward_cuda);
}
