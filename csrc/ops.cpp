// Schemas of the hytver:: custom operators and the module stub that Python imports.
//
// Kernels: csrc/cpu/hytver_cpu.cpp (CPU), csrc/cuda/hytver_cuda.cu (CUDA, when built).
// Fake (meta) kernels and autograd are registered in Python (hytver_dist/ops.py).
#include <Python.h>
#include <torch/library.h>

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

TORCH_LIBRARY(hytver, m) {
  // Per-sample sums (B, 5): TP, FP, FN, C1 = sum y*softplus(-x), C0 = sum (1-y)*softplus(x).
  m.def("stats(Tensor logits, Tensor target) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("stats_backward(Tensor grad_stats, Tensor logits, Tensor target) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // Per-sample sums (B, 9) with p clamped to [eps, 1 - eps] and the gamma powers of the focal
  // and DSC++ losses (hard labels).
  m.def("exp_stats(Tensor logits, Tensor target, float gamma, float eps) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "exp_stats_backward(Tensor grad, Tensor logits, Tensor target, float gamma, float eps) "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
  // The loss of a registered loss kind (hytver_dist/losses/registry.py names; hyperparameters
  // in the order of csrc/kernels/hytver_loss_algebra.h) on logits (B, C, *spatial) and a target
  // of the same shape: (loss, coef, saved). loss: 0-dim (float64 for float64 logits, else
  // float32); coef: float64 (B*C, K), the gradient of the loss w.r.t. the per-(sample, channel)
  // sums, which the backward needs. save=True (CPU, non-float64 logits): saved holds one float32
  // per voxel (the logits' shape) from which loss_backward_saved_ gets the gradient without exp
  // or division, writing it over saved (no gradient buffer); else saved is empty.
  m.def(
      "loss(Tensor logits, Tensor target, str kind, float[] params, bool per_sample=False, "
      "bool save=False) -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // The logit gradient: grad (the loss's 0-dim gradient) * sum_k coef[row, k] * dsum_k/dx.
  m.def(
      "loss_backward(Tensor grad, Tensor coef, Tensor logits, Tensor target, str kind, "
      "float[] params) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "loss_backward_saved_(Tensor grad, Tensor coef, Tensor(a!) saved, Tensor logits, "
      "Tensor target, str kind, float[] params) -> ()",
      {at::Tag::pt2_compliant_tag});
}
