// CPU implementations of the hytver:: loss ops: input checks, ISA choice, chunked parallel
// loops, the loss algebra on the host.
// The arithmetic lives in csrc/kernels/hytver_cpu_kernels.h, compiled per ISA in isa_*.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "../include/hytver_loss_spec.h"
#include "../kernels/hytver_cpu_table.h"

namespace hytver {
namespace {

using cpu::Table;

struct IsaSupport {
  bool avx2 = false;
  bool avx512 = false;
};

IsaSupport detect_isa() {
  IsaSupport s;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  s.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
  s.avx512 = s.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
  s.avx2 = s.avx2 && cpu::table_avx2() != nullptr;
  s.avx512 = s.avx512 && cpu::table_avx512() != nullptr;
  return s;
}

const IsaSupport& isa_support() {
  static const IsaSupport s = detect_isa();
  return s;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> v{"base"};
  if (isa_support().avx2) v.emplace_back("avx2");
  if (isa_support().avx512) v.emplace_back("avx512");
  return v;
}

// The best ISA of this CPU, or the one named by HYTVER_CPU_ISA (read at every call, so tests can
// switch it in-process).
const Table* select_table() {
  const IsaSupport& s = isa_support();
  const char* env = std::getenv("HYTVER_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) {
    if (s.avx512) return cpu::table_avx512();
    if (s.avx2) return cpu::table_avx2();
    return cpu::table_base();
  }
  if (std::strcmp(env, "base") == 0) return cpu::table_base();
  if (std::strcmp(env, "avx2") == 0) {
    TORCH_CHECK(s.avx2, "HYTVER_CPU_ISA=avx2, but this CPU (or build) has no AVX2+FMA path");
    return cpu::table_avx2();
  }
  if (std::strcmp(env, "avx512") == 0) {
    TORCH_CHECK(s.avx512,
                "HYTVER_CPU_ISA=avx512, but this CPU (or build) has no AVX-512 (F/BW/DQ/VL) path");
    return cpu::table_avx512();
  }
  TORCH_CHECK_VALUE(false, "HYTVER_CPU_ISA=", env,
                    " is not one of auto, base, avx2, avx512");
  return nullptr;
}

std::string cpu_isa() { return select_table()->name; }

struct Prepared {
  at::Tensor x;
  at::Tensor y;
  cpu::Args args;
  int64_t B = 0;
  int64_t total_chunks = 0;
  int64_t grain = 1;  // at::parallel_for grain size in chunks
};

constexpr int64_t kMinTaskElements = 32768;

int logits_code(const at::Tensor& logits, const char* op) {
  switch (logits.scalar_type()) {
    case at::kFloat: return cpu::kF32;
    case at::kDouble: return cpu::kF64;
    case at::kBFloat16: return cpu::kBF16;
    case at::kHalf: return cpu::kF16;
    default:
      TORCH_CHECK_VALUE(false, "hytver::", op,
                        ": logits must be float32, float64, bfloat16 or float16, got ",
                        logits.scalar_type());
  }
  return -1;
}

int target_code(const at::Tensor& target, const char* op) {
  switch (target.scalar_type()) {
    case at::kFloat: return cpu::kF32;
    case at::kDouble: return cpu::kF64;
    case at::kByte: return cpu::kU8;
    case at::kBool: return cpu::kU8;  // one byte, 0 or 1
    default:
      TORCH_CHECK_VALUE(false, "hytver::", op,
                        ": target must be float32, float64, uint8 or bool, got ",
                        target.scalar_type());
  }
  return -1;
}

// rows: the number of rows the kernels see (one row of sums each); -1: the batch size.
Prepared prepare(const at::Tensor& logits, const at::Tensor& target, const char* op,
                 int64_t rows = -1) {
  TORCH_CHECK_VALUE(logits.dim() >= 1, "hytver::", op,
                    ": logits need a batch dimension (B, ...), got a 0-dim tensor");
  TORCH_CHECK_VALUE(target.device() == logits.device(), "hytver::", op,
                    ": logits and target must be on the same device, got ", logits.device(),
                    " and ", target.device());
  Prepared p;
  p.args.xt = logits_code(logits, op);
  p.args.yt = target_code(target, op);
  p.B = rows >= 0 ? rows : logits.size(0);
  TORCH_CHECK_VALUE(target.dim() >= 1 && target.size(0) == logits.size(0) &&
                        target.numel() == logits.numel(),
                    "hytver::", op, ": target shape ", target.sizes(),
                    " does not match logits shape ", logits.sizes(),
                    " (need the same batch size and the same number of elements per sample)");
  p.x = logits.contiguous();
  p.y = target.scalar_type() == at::kBool ? target.contiguous().view(at::kByte)
                                           : target.contiguous();
  p.args.n = p.B > 0 ? logits.numel() / p.B : 0;
  p.args.chunks_per_sample = (p.args.n + cpu::kChunk - 1) / cpu::kChunk;
  p.args.x = p.x.data_ptr();
  p.args.y = p.y.data_ptr();
  p.total_chunks = p.B * p.args.chunks_per_sample;
  // Chunks per task: waking a second thread costs more than a few thousand voxels take.
  const int64_t chunk_len = p.args.n < cpu::kChunk ? p.args.n : cpu::kChunk;
  p.grain = chunk_len > 0 ? (kMinTaskElements + chunk_len - 1) / chunk_len : 1;
  return p;
}

// Which kernel of the table: the saving forwards keep per-voxel values for the *_saved backwards.
enum class Kind { kStats, kExp };

cpu::FwdFn forward_fn(const Table* t, Kind kind, bool save) {
  if (kind == Kind::kStats) return save ? t->stats_fwd_save : t->stats_fwd;
  return save ? t->exp_fwd_save : t->exp_fwd;
}

int sums_count(Kind kind) { return kind == Kind::kStats ? cpu::kStatsK : cpu::kExpK; }

// stats saves for float32 / bfloat16 / float16 logits, exp_stats for float32 logits only (its
// backward may recompute, and then writes a logits-typed gradient over the saved values).
void check_saving_dtype(const at::Tensor& logits, Kind kind, const char* op) {
  if (kind == Kind::kStats) {
    TORCH_CHECK_VALUE(logits.scalar_type() != at::kDouble, "hytver::", op,
                      ": float64 logits have no saving variant (use the plain op, which "
                      "recomputes in float64)");
  } else {
    TORCH_CHECK_VALUE(logits.scalar_type() == at::kFloat, "hytver::", op,
                      ": the saving variant takes float32 logits, got ", logits.scalar_type(),
                      " (use the plain op)");
  }
}

// The float64 sums (rows, K); with `saved` the kernel also fills a new float32 tensor of the
// logits' shape. !logs (exp only): the columns C1, C0, F1, F0 are 0 (the gamma == 2 kernel skips
// them).
// validate: ValueError when a target value lies outside [0, 1] (found by the kernels' pass).
at::Tensor forward(const at::Tensor& logits, const at::Tensor& target, Kind kind, double gamma,
                   double eps, const char* op, at::Tensor* saved = nullptr, bool logs = true,
                   int64_t rows = -1, bool validate = false) {
  Prepared p = prepare(logits, target, op, rows);
  p.args.gamma = gamma;
  p.args.eps = eps;
  p.args.logs = logs;
  const int K = sums_count(kind);
  if (saved != nullptr) {
    check_saving_dtype(logits, kind, op);
    *saved = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
    p.args.saved = saved->data_ptr<float>();
  }
  if (p.total_chunks == 0) return at::zeros({p.B, K}, logits.options().dtype(at::kDouble));
  const cpu::FwdFn fn = forward_fn(select_table(), kind, saved != nullptr);
  std::vector<double> partials(static_cast<size_t>(p.total_chunks) * K);
  std::vector<double> invalid(validate ? static_cast<size_t>(p.total_chunks) : 0);
  if (validate) p.args.invalid = invalid.data();
  const cpu::Args& args = p.args;
  double* part = partials.data();
  // Fixed chunks: each writes its own partials, so the thread count cannot change the result.
  at::parallel_for(0, p.total_chunks, p.grain,
                   [&](int64_t c0, int64_t c1) { fn(args, c0, c1, part); });
  for (double v : invalid) {
    if (v != 0.0) {  // the error path: the range for the message
      const auto range = at::aminmax(target.to(at::kDouble));
      const double lo = std::get<0>(range).item<double>(), hi = std::get<1>(range).item<double>();
      TORCH_CHECK_VALUE(kind != Kind::kExp || !(lo >= 0.0 && hi <= 1.0), "hytver::", op,
                        ": this loss's fused sums need hard labels (target values 0 or 1), "
                        "found a value strictly between 0 and 1");
      TORCH_CHECK_VALUE(false, "hytver::", op, ": target values must lie in [0, 1] (and not be "
                        "NaN), found range [", lo, ", ", hi, "]");
    }
  }
  at::Tensor sums = at::empty({p.B, K}, logits.options().dtype(at::kDouble));
  double* s = sums.data_ptr<double>();
  const int64_t cps = args.chunks_per_sample;
  for (int64_t b = 0; b < p.B; ++b) {
    for (int k = 0; k < K; ++k) {
      double acc = 0.0;
      for (int64_t c = 0; c < cps; ++c) acc += part[(b * cps + c) * K + k];
      s[b * K + k] = acc;
    }
    if (!logs) {
      for (int k : {3, 4, 7, 8}) s[b * K + k] = 0.0;
    }
  }
  return sums;
}

// The logit gradient into a new tensor of the logits' type, recomputed from the logits. g: the
// contiguous float64 (rows, K) gradient of the sums.
at::Tensor backward(const at::Tensor& g, const at::Tensor& logits, const at::Tensor& target,
                    Kind kind, double gamma, double eps, const char* op, int64_t rows = -1) {
  Prepared p = prepare(logits, target, op, rows);
  p.args.gamma = gamma;
  p.args.eps = eps;
  at::Tensor gx = at::empty(logits.sizes(), p.x.options());
  if (p.total_chunks == 0) return gx;
  p.args.g = g.data_ptr<double>();
  p.args.gx = gx.data_ptr();
  const Table* t = select_table();
  const cpu::BwdFn fn = kind == Kind::kStats ? t->stats_bwd : t->exp_bwd;
  const cpu::Args& args = p.args;
  at::parallel_for(0, p.total_chunks, p.grain, [&](int64_t c0, int64_t c1) { fn(args, c0, c1); });
  return gx;
}

// The logit gradient written over `saved` (the saving forward's values) as float32: from them
// (no exp, no division) for stats, and for exp_stats when gamma == 2 and the F1 / F0 columns of
// grad are zero (DSC++); otherwise exp_stats recomputes from the logits into the same memory.
void backward_into_saved(const at::Tensor& g, const at::Tensor& saved, const at::Tensor& logits,
                         const at::Tensor& target, Kind kind, double gamma, double eps,
                         const char* op, int64_t rows) {
  Prepared p = prepare(logits, target, op, rows);
  p.args.gamma = gamma;
  p.args.eps = eps;
  check_saving_dtype(logits, kind, op);
  TORCH_CHECK_VALUE(saved.scalar_type() == at::kFloat && saved.sizes() == logits.sizes() &&
                        saved.is_contiguous() && saved.device() == logits.device(),
                    "hytver::", op, ": saved must be the contiguous float32 tensor of the logits' "
                    "shape ", logits.sizes(), " from the saving forward, got ",
                    saved.scalar_type(), " ", saved.sizes());
  if (p.total_chunks == 0) return;
  p.args.g = g.data_ptr<double>();
  p.args.saved = saved.data_ptr<float>();
  const Table* t = select_table();
  cpu::BwdFn fn = t->stats_bwd_saved;
  if (kind == Kind::kExp) {
    bool no_focal = true;
    for (int64_t b = 0; b < p.B; ++b) {
      no_focal = no_focal && p.args.g[b * cpu::kExpK + 7] == 0.0 &&
                 p.args.g[b * cpu::kExpK + 8] == 0.0;
    }
    if (gamma == 2.0 && no_focal) {
      fn = t->exp_bwd_saved;
    } else {
      fn = t->exp_bwd;  // float32 logits (checked): a float32 gradient over the saved values
      p.args.gx = p.args.saved;
    }
  }
  const cpu::Args& args = p.args;
  at::parallel_for(0, p.total_chunks, p.grain, [&](int64_t c0, int64_t c1) { fn(args, c0, c1); });
}

// ---------------------------------------------------------------------------------------------
// the loss ops: sums per (sample, channel) row, then the shared algebra on the host

Kind kind_of(const algebra::Spec& s) { return algebra::is_exp(s.kind) ? Kind::kExp : Kind::kStats; }

// ---- softmax

struct SoftPrepared {
  at::Tensor x;  // float32 or float64 logits (half types upcast), contiguous
  at::Tensor y;  // label map (uint8 / int64) or dense target, contiguous
  cpu::Args args;
  int64_t B = 0, C = 0;
  int64_t total_chunks = 0;
  int64_t grain = 1;
};

SoftPrepared prepare_softmax(const at::Tensor& logits, const at::Tensor& target,
                             const algebra::Spec& spec, const char* op) {
  TORCH_CHECK_VALUE(target.device() == logits.device(), "hytver::", op,
                    ": logits and target must be on the same device, got ", logits.device(),
                    " and ", target.device());
  logits_code(logits, op);
  SoftPrepared p;
  p.B = logits.size(0);
  p.C = logits.size(1);
  const bool labels = softmax_labels(logits, target, op);
  p.x = (logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat)).contiguous();
  if (labels) {
    p.y = (target.scalar_type() == at::kByte ? target : target.to(at::kLong)).contiguous();
    p.args.yt = target.scalar_type() == at::kByte ? cpu::kU8 : cpu::kI64;
  } else {
    p.y = target.scalar_type() == at::kBool ? target.contiguous().view(at::kByte)
                                            : target.contiguous();
    p.args.yt = target_code(target, op);
  }
  p.args.xt = p.x.scalar_type() == at::kDouble ? cpu::kF64 : cpu::kF32;
  p.args.labels = labels;
  p.args.classes = p.C;
  p.args.exp_sums = algebra::is_exp(spec.kind);
  p.args.gamma = algebra::voxel_gamma(spec);
  p.args.eps = algebra::clamp_eps(spec);
  p.args.n = logits.numel() / (p.B * p.C);
  p.args.chunks_per_sample = (p.args.n + cpu::kChunk - 1) / cpu::kChunk;
  p.args.x = p.x.data_ptr();
  p.args.y = p.y.data_ptr();
  p.total_chunks = p.B * p.args.chunks_per_sample;
  const int64_t chunk_len = p.args.n < cpu::kChunk ? p.args.n : cpu::kChunk;
  const int64_t work = chunk_len * p.C;
  p.grain = work > 0 ? (kMinTaskElements + work - 1) / work : 1;
  return p;
}

// The ValueError of a target problem the softmax kernels flagged.
void raise_softmax_target(int code, const at::Tensor& target, int64_t C, const char* op) {
  if (code == cpu::kLabelRange) {
    const auto range = at::aminmax(target.to(at::kLong));
    TORCH_CHECK_VALUE(false, "hytver::", op, ": labels must lie in [0, C) = [0, ", C,
                      "), found range [", std::get<0>(range).item<int64_t>(), ", ",
                      std::get<1>(range).item<int64_t>(), "]");
  }
  TORCH_CHECK_VALUE(code != cpu::kOutside01, "hytver::", op,
                    ": one-hot / soft target values must lie in [0, 1] (and not be NaN)");
  TORCH_CHECK_VALUE(code != cpu::kNotHard, "hytver::", op,
                    ": this loss needs hard labels (a label map, or one-hot in {0, 1}); found a "
                    "soft target value strictly between 0 and 1");
  TORCH_CHECK_VALUE(code != cpu::kNotNormalised, "hytver::", op,
                    ": one-hot / soft target channels must sum to 1 at every voxel (within "
                    "1e-4), found a voxel where they do not");
}

// The softmax saving variant: float32 logits, the kinds with the 5 sums.
void check_softmax_saving(const at::Tensor& logits, const algebra::Spec& spec, const char* op) {
  TORCH_CHECK_VALUE(logits.scalar_type() == at::kFloat && !algebra::is_exp(spec.kind), "hytver::",
                    op, ": the softmax saving variant takes float32 logits and a loss without "
                    "per-voxel powers, got ", logits.scalar_type(), " and '",
                    algebra::kind_name(spec.kind), "' (use the plain op)");
}

// The float64 sums (B * C, K) of the softmax kernels; with `saved` the forward also writes p_c
// (float32, the logits' shape) into a new tensor for softmax_backward_into_saved.
at::Tensor softmax_forward(const at::Tensor& logits, const at::Tensor& target,
                           const algebra::Spec& spec, const char* op,
                           at::Tensor* saved = nullptr) {
  SoftPrepared p = prepare_softmax(logits, target, spec, op);
  if (saved != nullptr) {
    check_softmax_saving(logits, spec, op);
    *saved = at::empty(logits.sizes(), logits.options().dtype(at::kFloat));
    p.args.saved = saved->data_ptr<float>();
  }
  const int K = algebra::sums_k(spec.kind);
  const int64_t C = p.C;
  std::vector<double> partials(static_cast<size_t>(p.total_chunks * C * K));
  std::vector<double> invalid(static_cast<size_t>(p.total_chunks));
  p.args.invalid = invalid.data();
  const cpu::FwdFn fn = select_table()->softmax_fwd;
  const cpu::Args& args = p.args;
  double* part = partials.data();
  at::parallel_for(0, p.total_chunks, p.grain,
                   [&](int64_t c0, int64_t c1) { fn(args, c0, c1, part); });
  int worst = 0;
  for (double v : invalid) worst = v > worst ? static_cast<int>(v) : worst;
  if (worst != 0) raise_softmax_target(worst, target, C, op);
  at::Tensor sums = at::empty({p.B * C, K}, logits.options().dtype(at::kDouble));
  double* s = sums.data_ptr<double>();
  const int64_t cps = args.chunks_per_sample;
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t k = 0; k < C * K; ++k) {
      double acc = 0.0;  // chunks in order: the same for any number of threads
      for (int64_t c = 0; c < cps; ++c) acc += part[(b * cps + c) * C * K + k];
      s[b * C * K + k] = acc;
    }
  }
  return sums;
}

at::Tensor softmax_backward(const at::Tensor& g, const at::Tensor& logits,
                            const at::Tensor& target, const algebra::Spec& spec, const char* op) {
  SoftPrepared p = prepare_softmax(logits, target, spec, op);
  at::Tensor gx = at::empty(p.x.sizes(), p.x.options());
  p.args.g = g.data_ptr<double>();
  p.args.gx = gx.data_ptr();
  const cpu::BwdFn fn = select_table()->softmax_bwd;
  const cpu::Args& args = p.args;
  at::parallel_for(0, p.total_chunks, p.grain, [&](int64_t c0, int64_t c1) { fn(args, c0, c1); });
  return gx.scalar_type() == logits.scalar_type() ? gx : gx.to(logits.scalar_type());
}

// The softmax gradient written over the saving forward's p_c (no exp, no max).
void softmax_backward_into_saved(const at::Tensor& g, const at::Tensor& saved,
                                 const at::Tensor& logits, const at::Tensor& target,
                                 const algebra::Spec& spec, const char* op) {
  check_softmax_saving(logits, spec, op);
  TORCH_CHECK_VALUE(saved.scalar_type() == at::kFloat && saved.sizes() == logits.sizes() &&
                        saved.is_contiguous() && saved.device() == logits.device(),
                    "hytver::", op, ": saved must be the contiguous float32 tensor of the logits' "
                    "shape ", logits.sizes(), " from the saving forward, got ",
                    saved.scalar_type(), " ", saved.sizes());
  SoftPrepared p = prepare_softmax(logits, target, spec, op);
  p.args.g = g.data_ptr<double>();
  p.args.saved = saved.data_ptr<float>();
  const cpu::BwdFn fn = select_table()->softmax_bwd_saved;
  const cpu::Args& args = p.args;
  at::parallel_for(0, p.total_chunks, p.grain, [&](int64_t c0, int64_t c1) { fn(args, c0, c1); });
}

// ---- the ops

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_cpu(
    const at::Tensor& logits, const at::Tensor& target, c10::string_view kind,
    at::ArrayRef<double> params, bool per_sample, bool save, c10::string_view activation,
    bool include_background) {
  const char* op = save ? "loss(save=True)" : "loss";
  const bool softmax = is_softmax(activation, op);
  check_loss_inputs(logits, target, op, softmax);
  const algebra::Spec spec = make_spec(logits, std::string(kind), params, per_sample, op,
                                       softmax, include_background);
  const int64_t B = logits.size(0), C = logits.size(1);
  const int64_t rows = B * C;
  const int64_t n = logits.numel() / rows;
  at::Tensor saved;
  at::Tensor sums;
  if (softmax) {
    sums = softmax_forward(logits, target, spec, op, save ? &saved : nullptr);
  } else {
    sums = forward(logits, target, kind_of(spec), algebra::voxel_gamma(spec),
                   algebra::clamp_eps(spec), op, save ? &saved : nullptr,
                   algebra::uses_logs(spec.kind), rows, true);
  }
  at::Tensor coef = at::empty_like(sums);
  const double value =
      algebra::loss_and_coef(spec, sums.data_ptr<double>(), B, C, n, coef.data_ptr<double>());
  at::Tensor loss = at::scalar_tensor(value, logits.options().dtype(loss_dtype(logits)));
  if (!save) saved = at::empty({0}, logits.options().dtype(at::kFloat));
  return {loss, coef, saved};
}

// coef * grad as the float64 gradient of the sums.
at::Tensor scaled_coef(const at::Tensor& grad, const at::Tensor& coef, const at::Tensor& logits,
                       int K, const char* op) {
  check_coef(coef, logits, K, op);
  check_loss_grad(grad, logits, op);
  return (coef * grad.to(at::kDouble).reshape({})).contiguous();
}

at::Tensor loss_backward_cpu(const at::Tensor& grad, const at::Tensor& coef,
                             const at::Tensor& logits, const at::Tensor& target,
                             c10::string_view kind, at::ArrayRef<double> params,
                             c10::string_view activation) {
  const char* op = "loss_backward";
  const bool softmax = is_softmax(activation, op);
  check_loss_inputs(logits, target, op, softmax);
  const algebra::Spec spec = make_spec(logits, std::string(kind), params, false, op, softmax);
  const at::Tensor g = scaled_coef(grad, coef, logits, algebra::sums_k(spec.kind), op);
  if (softmax) return softmax_backward(g, logits, target, spec, op);
  return backward(g, logits, target, kind_of(spec), algebra::voxel_gamma(spec),
                  algebra::clamp_eps(spec), op, logits.size(0) * logits.size(1));
}

void loss_backward_saved_cpu(const at::Tensor& grad, const at::Tensor& coef,
                             const at::Tensor& saved, const at::Tensor& logits,
                             const at::Tensor& target, c10::string_view kind,
                             at::ArrayRef<double> params, c10::string_view activation) {
  const char* op = "loss_backward_saved_";
  const bool softmax = is_softmax(activation, op);
  check_loss_inputs(logits, target, op, softmax);
  const algebra::Spec spec = make_spec(logits, std::string(kind), params, false, op, softmax);
  const at::Tensor g = scaled_coef(grad, coef, logits, algebra::sums_k(spec.kind), op);
  if (softmax) return softmax_backward_into_saved(g, saved, logits, target, spec, op);
  backward_into_saved(g, saved, logits, target, kind_of(spec), algebra::voxel_gamma(spec),
                      algebra::clamp_eps(spec), op, logits.size(0) * logits.size(1));
}

}  // namespace
}  // namespace hytver

// Introspection of the CPU paths (no tensors: catch-all kernels).
TORCH_LIBRARY_FRAGMENT(hytver, m) {
  m.def("cpu_isa() -> str", &hytver::cpu_isa);
  m.def("supported_cpu_isas() -> str[]", &hytver::supported_isas);
}

TORCH_LIBRARY_IMPL(hytver, CPU, m) {
  m.impl("loss", &hytver::loss_cpu);
  m.impl("loss_backward", &hytver::loss_backward_cpu);
  m.impl("loss_backward_saved_", &hytver::loss_backward_saved_cpu);
}
