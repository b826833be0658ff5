// Argument checks of the hytver::loss ops, shared by the CPU and CUDA glue (torch-dependent;
// the algebra itself is csrc/kernels/hytver_loss_algebra.h).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "../kernels/hytver_loss_algebra.h"

namespace hytver {

// The algebra's Spec from the op's arguments; ValueError naming what is wrong.
// The activation argument: true for "softmax", false for "sigmoid", else a ValueError.
inline bool is_softmax(c10::string_view activation, const char* op) {
  TORCH_CHECK_VALUE(activation == "sigmoid" || activation == "softmax", "hytver::", op,
                    ": activation must be 'sigmoid' or 'softmax', got '",
                    std::string(activation), "'");
  return activation == "softmax";
}

inline algebra::Spec make_spec(const at::Tensor& logits, const std::string& kind,
                               at::ArrayRef<double> params, bool per_sample, const char* op,
                               bool softmax = false, bool include_background = true) {
  algebra::Spec s;
  s.softmax = softmax;
  s.include_background = include_background;
  s.kind = algebra::name_to_kind(kind.c_str());
  TORCH_CHECK_VALUE(s.kind >= 0, "hytver::", op, ": unknown loss kind '", kind, "'");
  const int count = algebra::param_count(s.kind);
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == count, "hytver::", op, ": loss '",
                    kind, "' takes ", count, " hyperparameters, got ", params.size());
  for (int i = 0; i < count; ++i) {
    TORCH_CHECK_VALUE(params[i] == params[i] && params[i] > -1e300 && params[i] < 1e300,
                      "hytver::", op, ": hyperparameters must be finite, got ", params);
    s.prm[i] = params[i];
  }
  s.per_sample = per_sample;
  s.tiny = logits.scalar_type() == at::kDouble ? 2.2250738585072014e-308 : 1.1754943508222875e-38;
  if (algebra::is_exp(s.kind)) {
    const double gamma = algebra::voxel_gamma(s);
    TORCH_CHECK_VALUE(gamma >= 0.0 && gamma < 1e30, "hytver::", op,
                      ": gamma must be finite and >= 0, got ", gamma);
  }
  return s;
}

// Shape checks of the loss ops: logits (B, C, ...) with C >= 1 (softmax: C >= 2), target of
// the same shape (softmax: or a label map, see softmax_labels).
inline void check_loss_inputs(const at::Tensor& logits, const at::Tensor& target,
                              const char* op, bool softmax = false) {
  TORCH_CHECK_VALUE(logits.dim() >= 2, "hytver::", op,
                    ": logits must have shape (B, C, *spatial), got ", logits.sizes());
  TORCH_CHECK_VALUE(logits.numel() > 0, "hytver::", op, ": logits are empty (shape ",
                    logits.sizes(), ")");
  if (softmax) {
    TORCH_CHECK_VALUE(logits.size(1) >= 2, "hytver::", op,
                      ": softmax needs C >= 2 channels, got logits of shape ", logits.sizes());
    return;
  }
  TORCH_CHECK_VALUE(target.sizes() == logits.sizes(), "hytver::", op, ": target shape ",
                    target.sizes(), " does not match logits shape ", logits.sizes());
}

// Softmax targets: true for a label map (integer, (B, 1, *spatial) or (B, *spatial)), false
// for one-hot / soft (B, C, *spatial); a ValueError for any other shape or dtype.
inline bool softmax_labels(const at::Tensor& logits, const at::Tensor& target, const char* op) {
  if (target.sizes() == logits.sizes()) {
    const auto t = target.scalar_type();
    TORCH_CHECK_VALUE(t == at::kFloat || t == at::kDouble || t == at::kByte || t == at::kBool,
                      "hytver::", op, ": a one-hot / soft target (B, C, *spatial) must be "
                      "float32, float64, uint8 or bool, got ", t);
    return false;
  }
  const auto spatial = logits.sizes().slice(2);
  const bool with_axis = target.dim() == logits.dim() && target.size(0) == logits.size(0) &&
                         target.size(1) == 1 && target.sizes().slice(2) == spatial;
  const bool without_axis = target.dim() == logits.dim() - 1 &&
                            target.size(0) == logits.size(0) &&
                            target.sizes().slice(1) == spatial;
  TORCH_CHECK_VALUE(with_axis || without_axis, "hytver::", op, ": target shape ",
                    target.sizes(), " fits neither a label map (B, 1, *spatial) nor a one-hot "
                    "target (B, C, *spatial) for logits of shape ", logits.sizes());
  TORCH_CHECK_VALUE(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
                    "hytver::", op, ": a label map must have an integer dtype, got ",
                    target.scalar_type());
  return true;
}

// The coefficient tensor (rows, K) of the backward ops, checked.
inline void check_coef(const at::Tensor& coef, const at::Tensor& logits, int K, const char* op) {
  const int64_t rows = logits.size(0) * logits.size(1);
  TORCH_CHECK_VALUE(coef.dim() == 2 && coef.size(0) == rows && coef.size(1) == K &&
                        coef.scalar_type() == at::kDouble && coef.device() == logits.device(),
                    "hytver::", op, ": coef must be the float64 (", rows, ", ", K,
                    ") tensor of the forward on the logits' device, got ", coef.scalar_type(),
                    " ", coef.sizes());
}

// The loss's upstream gradient: one floating-point value on the logits' device.
inline void check_loss_grad(const at::Tensor& grad, const at::Tensor& logits, const char* op) {
  TORCH_CHECK_VALUE(grad.numel() == 1 && at::isFloatingType(grad.scalar_type()) &&
                        grad.device() == logits.device(),
                    "hytver::", op, ": grad must be one floating-point value on the logits' "
                    "device, got ", grad.scalar_type(), " ", grad.sizes());
}

inline at::ScalarType loss_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace hytver
