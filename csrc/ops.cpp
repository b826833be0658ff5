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
  // CPU training variants (stats: float32 / bfloat16 / float16 logits; exp_stats: float32):
  // the forward also returns one float32 per voxel (the logits' shape) from which the backward
  // gets the gradient without exp or division, and which it overwrites with that float32
  // gradient (so training allocates no gradient buffer). The backwards read only the logits'
  // shape and dtype, except exp_stats_backward_saved_ where it must recompute (gamma != 2 or a
  // nonzero F1 / F0 gradient).
  m.def("stats_save(Tensor logits, Tensor target) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "stats_backward_saved_(Tensor grad_stats, Tensor(a!) saved, Tensor logits, "
      "Tensor target) -> ()",
      {at::Tag::pt2_compliant_tag});
  // logs=False: C1, C0, F1, F0 come back as 0 (DSC++ needs none of them; with gamma == 2 the
  // kernel then skips the log series).
  m.def(
      "exp_stats_save(Tensor logits, Tensor target, float gamma, float eps, bool logs=True) "
      "-> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "exp_stats_backward_saved_(Tensor grad, Tensor(a!) saved, Tensor logits, Tensor target, "
      "float gamma, float eps) -> ()",
      {at::Tag::pt2_compliant_tag});
}
