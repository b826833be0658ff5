// The autograd formula of hytver::loss, registered for the Autograd key in C++ (one path for
// eager, torch.compile and every device): the backward is the op hytver::loss_backward, or,
// after a saving forward (save=True, CPU), hytver::loss_backward_saved_, which writes the
// gradient over the saved values (they are consumed: a second backward recomputes). Above
// autograd the op's third output is then empty: the saved values belong to the graph node.
// Registering it here rather than with torch.library.register_autograd keeps the Python
// autograd.Function machinery off every step (see docs/benchmarks.md, host cost).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace hytver {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LossFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, c10::string_view, at::ArrayRef<double>, bool, bool,
    c10::string_view, bool);
using BackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, c10::string_view, at::ArrayRef<double>,
                              c10::string_view);
using BackwardSavedFn = void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, c10::string_view,
                             at::ArrayRef<double>, c10::string_view);

const c10::TypedOperatorHandle<LossFn>& loss_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("hytver::loss", "").typed<LossFn>();
  return op;
}

class LossFunction : public torch::autograd::Function<LossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits,
                               const at::Tensor& target, const std::string& kind,
                               const std::vector<double>& params, bool per_sample, bool save,
                               const std::string& activation, bool include_background) {
    at::AutoDispatchBelowADInplaceOrView below;  // the device kernel, not this one again
    auto [loss, coef, saved] = loss_op().call(logits, target, kind, params, per_sample, save,
                                              activation, include_background);
    ctx->save_for_backward({logits, target, coef});
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["params"] = params;
    ctx->saved_data["activation"] = activation;
    // The saved values stay private to this node (not a saved variable, and not returned:
    // the backward writes the gradient over them); callers above autograd get an empty tensor.
    const bool use_saved = save;
    ctx->saved_data["saved"] = saved;
    // Traced (fake / functional tensors: AOT autograd) the backward recomputes from the logits
    // rather than mutating a traced intermediate (ops.loss never asks to save under compile).
    const auto keys = logits.key_set();
    const bool traced =
        keys.has(c10::DispatchKey::Python) || keys.has(c10::DispatchKey::Functionalize);
    ctx->saved_data["use_saved"] = use_saved && !traced;
    at::Tensor shown = use_saved ? at::empty({0}, saved.options()) : saved;
    ctx->mark_non_differentiable({coef, shown});
    ctx->set_materialize_grads(false);
    return {loss, coef, shown};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(8);
    const at::Tensor& grad = grads[0];
    if (!grad.defined() || !ctx->needs_input_grad(0)) return out;
    const auto vars = ctx->get_saved_variables();
    const at::Tensor &logits = vars[0], &target = vars[1], &coef = vars[2];
    const std::string kind = ctx->saved_data["kind"].toStringRef();
    const std::vector<double> params = ctx->saved_data["params"].toDoubleVector();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    if (ctx->saved_data["use_saved"].toBool()) {
      at::Tensor saved = ctx->saved_data["saved"].toTensor();
      ctx->saved_data["use_saved"] = false;  // consumed: a second backward recomputes
      ctx->saved_data["saved"] = at::Tensor();

      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("hytver::loss_backward_saved_", "")
                                 .typed<BackwardSavedFn>();
      op.call(grad, coef, saved, logits, target, kind, params, activation);
      out[0] = saved.to(logits.scalar_type());  // no copy for float32 logits
    } else {
      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("hytver::loss_backward", "")
                                 .typed<BackwardFn>();
      out[0] = op.call(grad, coef, logits, target, kind, params, activation);
    }
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_autograd(
    const at::Tensor& logits, const at::Tensor& target, c10::string_view kind,
    at::ArrayRef<double> params, bool per_sample, bool save, c10::string_view activation,
    bool include_background) {
  const variable_list out = LossFunction::apply(
      logits, target, std::string(kind), params.vec(), per_sample, save, std::string(activation),
      include_background);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace hytver

TORCH_LIBRARY_IMPL(hytver, Autograd, m) { m.impl("loss", &hytver::loss_autograd); }
