// Schemas of the hytver:: custom operators and the module stub that Python imports.
//
// Kernels: csrc/cpu/hytver_cpu.cpp (CPU), csrc/cuda/hytver_cuda.cu (CUDA, when built); the
// autograd formula of `loss`: csrc/autograd.cpp. Fake (meta) kernels are registered in Python
// (hytver_dist/ops.py), which torch.compile needs.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "kernels/hytver_loss_algebra.h"

extern "C" {
// Importing hytver_dist._C loads this library and so runs the static registrations below.
// No Python functions are bound (pybind11 functions break torch.compile(fullgraph=True)), and
// the stub keeps to the limited API so one build serves every CPython >= 3.9.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      NULL,  // doc
      -1,    // size
      NULL,  // methods
  };
  return PyModule_Create(&module_def);
}
}

namespace {

// The loss kinds the kernels know (csrc/kernels/hytver_loss_algebra.h), for the Python side and
// for the test that checks them against the loss classes: names, hyperparameter counts, sums
// per row, and whether the kind needs hard labels.
std::tuple<std::vector<std::string>, std::vector<int64_t>, std::vector<int64_t>,
           std::vector<int64_t>>
loss_kinds() {
  namespace al = hytver::algebra;
  std::vector<std::string> names;
  std::vector<int64_t> params, sums, hard;
  for (int k = 0; k < al::kNumKinds; ++k) {
    names.emplace_back(al::kind_name(k));
    params.push_back(al::param_count(k));
    sums.push_back(al::sums_k(k));
    hard.push_back(al::needs_hard_labels(k) ? 1 : 0);
  }
  return {names, params, sums, hard};
}

}  // namespace

TORCH_LIBRARY(hytver, m) {
  // The loss of a registered loss kind (hyperparameters in the order of
  // csrc/kernels/hytver_loss_algebra.h) on logits (B, C, *spatial): (loss, coef, saved).
  // activation "sigmoid": C independent binary problems, target of the logits' shape;
  // "softmax": C >= 2 classes, target a label map (B, 1, *spatial) of integers or one-hot /
  // soft (B, C, *spatial); include_background: whether class 0 enters the region terms.
  // loss: 0-dim (float64 for float64 logits, else float32); coef: float64 (B*C, K), the
  // gradient of the loss w.r.t. the per-(sample, channel) sums, which the backward needs.
  // save=True (CPU; sigmoid: non-float64 logits; softmax: float32 logits and a 5-sum kind):
  // saved holds one float32 per logit (sigmoid: m = x >= 0 ? -q : p; softmax: p_c) from which
  // loss_backward_saved_ gets the gradient without exp, writing it over saved (no gradient
  // buffer); else saved is empty. The autograd formula consumes saved.
  m.def(
      "loss(Tensor logits, Tensor target, str kind, float[] params, bool per_sample=False, "
      "bool save=False, str activation=\"sigmoid\", bool include_background=True) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // The logit gradient: grad (the loss's 0-dim gradient) * sum_k coef[row, k] * dsum_k/dx.
  m.def(
      "loss_backward(Tensor grad, Tensor coef, Tensor logits, Tensor target, str kind, "
      "float[] params, str activation=\"sigmoid\") -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "loss_backward_saved_(Tensor grad, Tensor coef, Tensor(a!) saved, Tensor logits, "
      "Tensor target, str kind, float[] params, str activation=\"sigmoid\") -> ()",
      {at::Tag::pt2_compliant_tag});
  m.def("loss_kinds() -> (str[], int[], int[], int[])", &loss_kinds);
}
