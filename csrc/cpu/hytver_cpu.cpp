// CPU implementations of the hytver:: ops: input checks, ISA choice, chunked parallel loops.
// The arithmetic lives in csrc/kernels/hytver_cpu_kernels.h, compiled per ISA in isa_*.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

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
};

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

Prepared prepare(const at::Tensor& logits, const at::Tensor& target, const char* op) {
  TORCH_CHECK_VALUE(logits.dim() >= 1, "hytver::", op,
                    ": logits need a batch dimension (B, ...), got a 0-dim tensor");
  TORCH_CHECK_VALUE(target.device() == logits.device(), "hytver::", op,
                    ": logits and target must be on the same device, got ", logits.device(),
                    " and ", target.device());
  Prepared p;
  p.args.xt = logits_code(logits, op);
  p.args.yt = target_code(target, op);
  p.B = logits.size(0);
  TORCH_CHECK_VALUE(target.dim() >= 1 && target.size(0) == p.B &&
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
  return p;
}

void check_hyper(double gamma, double eps, const char* op) {
  TORCH_CHECK_VALUE(gamma >= 0.0 && gamma < 1e30, "hytver::", op,
                    ": gamma must be finite and >= 0, got ", gamma);
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < 0.5, "hytver::", op, ": eps must be in [0, 0.5), got ",
                    eps);
}

at::ScalarType sums_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Which kernel of the table: the saving forwards keep per-voxel values for the *_saved backwards.
enum class Kind { kStats, kExp };

// Only stats has a saving variant (the callers never pass `saved` for kExp).
cpu::FwdFn forward_fn(const Table* t, Kind kind, bool save) {
  if (kind == Kind::kStats) return save ? t->stats_fwd_save : t->stats_fwd;
  return t->exp_fwd;
}

cpu::BwdFn backward_fn(const Table* t, Kind kind, bool from_saved) {
  if (kind == Kind::kStats) return from_saved ? t->stats_bwd_saved : t->stats_bwd;
  return t->exp_bwd;
}

int sums_count(Kind kind) { return kind == Kind::kStats ? cpu::kStatsK : cpu::kExpK; }

void check_saving_dtype(const at::Tensor& logits, const char* op) {
  TORCH_CHECK_VALUE(logits.scalar_type() != at::kDouble, "hytver::", op,
                    ": float64 logits have no saving variant (use the plain op, which "
                    "recomputes in float64)");
}

// The sums; with `saved` (stats only) the kernel also fills a new float32 (1, B * n) tensor.
at::Tensor forward(const at::Tensor& logits, const at::Tensor& target, Kind kind, double gamma,
                   double eps, const char* op, at::Tensor* saved = nullptr) {
  Prepared p = prepare(logits, target, op);
  p.args.gamma = gamma;
  p.args.eps = eps;
  const int K = sums_count(kind);
  const auto out_dtype = sums_dtype(logits);
  if (saved != nullptr) {
    check_saving_dtype(logits, op);
    *saved = at::empty({1, p.B * p.args.n}, logits.options().dtype(at::kFloat));
    p.args.saved = saved->data_ptr<float>();
  }
  if (p.total_chunks == 0) return at::zeros({p.B, K}, logits.options().dtype(out_dtype));
  const cpu::FwdFn fn = forward_fn(select_table(), kind, saved != nullptr);
  std::vector<double> partials(static_cast<size_t>(p.total_chunks) * K);
  const cpu::Args& args = p.args;
  double* part = partials.data();
  // Fixed chunks: each writes its own partials, so the thread count cannot change the result.
  at::parallel_for(0, p.total_chunks, 1,
                   [&](int64_t c0, int64_t c1) { fn(args, c0, c1, part); });
  at::Tensor sums = at::empty({p.B, K}, logits.options().dtype(at::kDouble));
  double* s = sums.data_ptr<double>();
  const int64_t cps = args.chunks_per_sample;
  for (int64_t b = 0; b < p.B; ++b) {
    for (int k = 0; k < K; ++k) {
      double acc = 0.0;
      for (int64_t c = 0; c < cps; ++c) acc += part[(b * cps + c) * K + k];
      s[b * K + k] = acc;
    }
  }
  return out_dtype == at::kDouble ? sums : sums.to(out_dtype);
}

// The logit gradient; with `saved` (from the saving forward) the kernel reads it and the target
// instead of recomputing from the logits (which then only give the shape and the dtype).
at::Tensor backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& target,
                    Kind kind, double gamma, double eps, const char* op,
                    const at::Tensor* saved = nullptr) {
  Prepared p = prepare(logits, target, op);
  p.args.gamma = gamma;
  p.args.eps = eps;
  const int K = sums_count(kind);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == p.B && grad.size(1) == K, "hytver::", op,
                    ": grad must have shape (", p.B, ", ", K, "), got ", grad.sizes());
  TORCH_CHECK_VALUE(grad.device() == logits.device(), "hytver::", op,
                    ": grad and logits must be on the same device");
  TORCH_CHECK_VALUE(at::isFloatingType(grad.scalar_type()), "hytver::", op,
                    ": grad must be a floating-point tensor, got ", grad.scalar_type());
  at::Tensor saved_c;
  if (saved != nullptr) {
    check_saving_dtype(logits, op);
    TORCH_CHECK_VALUE(saved->scalar_type() == at::kFloat && saved->dim() == 2 &&
                          saved->size(0) == 1 && saved->size(1) == p.B * p.args.n &&
                          saved->device() == logits.device(),
                      "hytver::", op, ": saved must be the float32 (1, ", p.B * p.args.n,
                      ") tensor of the saving forward, got ", saved->scalar_type(), " ",
                      saved->sizes());
    saved_c = saved->contiguous();
    p.args.saved_in = saved_c.data_ptr<float>();
  }
  at::Tensor g = grad.to(at::kDouble).contiguous();
  at::Tensor gx = at::empty(logits.sizes(), p.x.options());
  if (p.total_chunks == 0) return gx;
  p.args.g = g.data_ptr<double>();
  p.args.gx = gx.data_ptr();
  const cpu::BwdFn fn = backward_fn(select_table(), kind, saved != nullptr);
  const cpu::Args& args = p.args;
  at::parallel_for(0, p.total_chunks, 1, [&](int64_t c0, int64_t c1) { fn(args, c0, c1); });
  return gx;
}

at::Tensor stats_cpu(const at::Tensor& logits, const at::Tensor& target) {
  return forward(logits, target, Kind::kStats, 0.0, 0.0, "stats");
}

at::Tensor stats_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                              const at::Tensor& target) {
  return backward(grad, logits, target, Kind::kStats, 0.0, 0.0, "stats_backward");
}

std::tuple<at::Tensor, at::Tensor> stats_save_cpu(const at::Tensor& logits,
                                                  const at::Tensor& target) {
  at::Tensor saved;
  at::Tensor sums = forward(logits, target, Kind::kStats, 0.0, 0.0, "stats_save", &saved);
  return {sums, saved};
}

at::Tensor stats_backward_saved_cpu(const at::Tensor& grad, const at::Tensor& saved,
                                    const at::Tensor& logits, const at::Tensor& target) {
  return backward(grad, logits, target, Kind::kStats, 0.0, 0.0, "stats_backward_saved", &saved);
}

at::Tensor exp_stats_cpu(const at::Tensor& logits, const at::Tensor& target, double gamma,
                         double eps) {
  check_hyper(gamma, eps, "exp_stats");
  return forward(logits, target, Kind::kExp, gamma, eps, "exp_stats");
}

at::Tensor exp_stats_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                  const at::Tensor& target, double gamma, double eps) {
  check_hyper(gamma, eps, "exp_stats_backward");
  return backward(grad, logits, target, Kind::kExp, gamma, eps, "exp_stats_backward");
}

}  // namespace
}  // namespace hytver

// Introspection of the CPU paths (no tensors: catch-all kernels).
TORCH_LIBRARY_FRAGMENT(hytver, m) {
  m.def("cpu_isa() -> str", &hytver::cpu_isa);
  m.def("supported_cpu_isas() -> str[]", &hytver::supported_isas);
}

TORCH_LIBRARY_IMPL(hytver, CPU, m) {
  m.impl("stats", &hytver::stats_cpu);
  m.impl("stats_backward", &hytver::stats_backward_cpu);
  m.impl("exp_stats", &hytver::exp_stats_cpu);
  m.impl("exp_stats_backward", &hytver::exp_stats_backward_cpu);
  m.impl("stats_save", &hytver::stats_save_cpu);
  m.impl("stats_backward_saved", &hytver::stats_backward_saved_cpu);
}
