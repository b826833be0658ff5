// CUDA implementations of the hytver:: loss ops: checks, dtype dispatch, launches on the
// current stream. The kernels live in csrc/kernels/hytver_cuda_kernels.cuh (framework-free).
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

// ---- softmax

// The softmax inputs as the kernels read them: contiguous logits; a label map as uint8 or
// int64, a dense target as float32 / float64 / uint8 (bool viewed as uint8).
struct SoftInputs {
  bool labels;
  int64_t B, C, n;
  at::Tensor x, y;
};

SoftInputs softmax_inputs(const at::Tensor& logits, const at::Tensor& target, const char* op) {
  TORCH_CHECK_VALUE(logits.is_cuda() && target.device() == logits.device(), "hytver::", op,
                    ": logits and target must be on the same CUDA device, got ",
                    logits.device(), " and ", target.device());
  SoftInputs in;
  in.labels = softmax_labels(logits, target, op);
  in.B = logits.size(0);
  in.C = logits.size(1);
  in.n = logits.numel() / (in.B * in.C);
  TORCH_CHECK_VALUE(in.B * in.C <= INT32_MAX, "hytver::", op, ": batch * channels too large");
  in.x = logits.contiguous();
  if (in.labels) {
    in.y = (target.scalar_type() == at::kByte ? target : target.to(at::kLong)).contiguous();
  } else {
    in.y = target.scalar_type() == at::kBool ? target.contiguous().view(at::kByte)
                                             : target.contiguous();
  }
  return in;
}

// The compile-time choices of a softmax launch.
template <int MODE_, bool LABELS_, class T_, class U_>
struct SoftKernel {
  static constexpr int MODE = MODE_;
  static constexpr bool LABELS = LABELS_;
  using T = T_;
  using U = U_;
  using A = typename hc::Num<T_>::C;
};

// Calls f(SoftKernel<MODE, LABELS, T, U>(), T*, U*) for the kind's sums, the target form and
// the typed data pointers.
template <class F>
void dispatch_softmax(const algebra::Spec& spec, const at::Tensor& x, const at::Tensor& y,
                      bool labels, F&& f) {
  auto with_x = [&](auto* xp) {
    using T = Elem<decltype(xp)>;
    auto with_mode = [&](auto mode) {
      constexpr int M = decltype(mode)::value;
      auto call = [&](auto lab, auto* yp) {
        f(SoftKernel<M, decltype(lab)::value, T, Elem<decltype(yp)>>(), xp, yp);
      };
      if (labels) {
        if (y.scalar_type() == at::kByte) {
          call(std::true_type(), static_cast<const uint8_t*>(y.data_ptr()));
        } else {
          call(std::true_type(), static_cast<const int64_t*>(y.data_ptr()));
        }
        return;
      }
      switch (y.scalar_type()) {
        case at::kFloat: call(std::false_type(), static_cast<const float*>(y.data_ptr())); break;
        case at::kDouble: call(std::false_type(), static_cast<const double*>(y.data_ptr())); break;
        default: call(std::false_type(), static_cast<const uint8_t*>(y.data_ptr())); break;
      }
    };
    if (algebra::is_exp(spec.kind)) {
      with_mode(std::integral_constant<int, hc::kExp>());
    } else {
      with_mode(std::integral_constant<int, hc::kStats>());
    }
  };
  switch (x.scalar_type()) {
    case at::kFloat: with_x(static_cast<const float*>(x.data_ptr())); break;
    case at::kDouble: with_x(static_cast<const double*>(x.data_ptr())); break;
    case at::kHalf: with_x(static_cast<const __half*>(x.data_ptr())); break;
    case at::kBFloat16: with_x(static_cast<const __nv_bfloat16*>(x.data_ptr())); break;
    default: TORCH_CHECK_VALUE(false, "hytver::loss: logits must be float32, float64, bfloat16 "
                               "or float16, got ", x.scalar_type());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_loss_cuda(const at::Tensor& logits,
                                                                 const at::Tensor& target,
                                                                 const algebra::Spec& spec,
                                                                 const char* op) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const SoftInputs in = softmax_inputs(logits, target, op);
  const int64_t B = in.B, C = in.C, n = in.n;
  const int K = algebra::sums_k(spec.kind);
  const auto acc = loss_dtype(logits);
  at::Tensor loss = at::empty({}, logits.options().dtype(acc));
  at::Tensor coef = at::empty({B * C, K}, logits.options().dtype(at::kDouble));
  at::Tensor sums = at::empty({B * C, K}, logits.options().dtype(at::kDouble));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  dispatch_softmax(spec, in.x, in.y, in.labels, [&](auto k, auto* xp, auto* yp) {
    using Kr = decltype(k);
    using A = typename Kr::A;
    at::Tensor partials = at::empty({hc::softmax_workspace<Kr::MODE, typename Kr::T,
                                                           typename Kr::U>(B, C, n)},
                                    logits.options().dtype(acc));
    check_launch(hc::launch_softmax_loss_forward<Kr::MODE, typename Kr::T, typename Kr::U,
                                                 Kr::LABELS>(
        xp, yp, B, C, n, spec, static_cast<A*>(partials.data_ptr()), sums.data_ptr<double>(),
        coef.data_ptr<double>(), static_cast<A*>(loss.data_ptr()), stream));
  });
  return {loss, coef, at::empty({0}, logits.options().dtype(at::kFloat))};
}

at::Tensor softmax_backward_cuda(const at::Tensor& grad, const at::Tensor& coef,
                                 const at::Tensor& logits, const at::Tensor& target,
                                 const algebra::Spec& spec, const char* op) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const SoftInputs in = softmax_inputs(logits, target, op);
  const int64_t B = in.B, C = in.C, n = in.n;
  const at::Tensor c = coef.contiguous();
  const at::Tensor g = grad.to(loss_dtype(logits)).reshape({});
  at::Tensor gx = at::empty(logits.sizes(), in.x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  dispatch_softmax(spec, in.x, in.y, in.labels, [&](auto k, auto* xp, auto* yp) {
    using Kr = decltype(k);
    check_launch(hc::launch_softmax_loss_backward<Kr::MODE, typename Kr::T, typename Kr::U,
                                                  Kr::LABELS>(
        xp, yp, c.data_ptr<double>(), static_cast<const typename Kr::A*>(g.data_ptr()), B, C, n,
        spec, static_cast<typename Kr::T*>(gx.data_ptr()), stream));
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_cuda(
    const at::Tensor& logits, const at::Tensor& target, c10::string_view kind,
    at::ArrayRef<double> params, bool per_sample, bool save, c10::string_view activation,
    bool include_background) {
  const char* op = "loss";
  const bool softmax = is_softmax(activation, op);
  TORCH_CHECK_VALUE(!save, "hytver::loss: save=True is a CPU path (the GPU recomputes faster "
                    "than it reads)");
  check_loss_inputs(logits, target, op, softmax);
  const algebra::Spec spec = make_spec(logits, std::string(kind), params, per_sample, op,
                                       softmax, include_background);
  if (softmax) return softmax_loss_cuda(logits, target, spec, op);
  check_inputs(logits, target, op);
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
                              c10::string_view kind, at::ArrayRef<double> params,
                              c10::string_view activation) {
  const char* op = "loss_backward";
  const bool softmax = is_softmax(activation, op);
  check_loss_inputs(logits, target, op, softmax);
  const algebra::Spec spec = make_spec(logits, std::string(kind), params, false, op, softmax);
  check_coef(coef, logits, algebra::sums_k(spec.kind), op);
  check_loss_grad(grad, logits, op);
  if (softmax) return softmax_backward_cuda(grad, coef, logits, target, spec, op);
  check_inputs(logits, target, op);
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
  m.impl("loss", &hytver::loss_cuda);
  m.impl("loss_backward", &hytver::loss_backward_cuda);
}
