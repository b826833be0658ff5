// Interface between the torch glue (csrc/cpu/hytver_cpu.cpp) and the per-ISA kernel
// translation units (csrc/cpu/isa_*.cpp). Framework-free: no torch, no std templates, so that
// nothing compiled for AVX2/AVX-512 can be merged into a baseline caller by the linker.
#pragma once
#include <stdint.h>

namespace hytver {
namespace cpu {

// Element types the kernels read. Bool targets are passed as U8 (0/1 bytes); I64: label maps.
enum DType : int { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3, kU8 = 4, kI64 = 5 };

// Target problems the forward kernels flag per chunk (Args::invalid), worst code wins.
enum Invalid : int {
  kValid = 0,
  kOutside01 = 1,      // a value outside [0, 1] (or NaN)
  kNotHard = 2,        // a value other than 0 and 1 where the loss needs hard labels
  kLabelRange = 3,     // softmax: a label outside [0, C)
  kNotNormalised = 4,  // softmax: one-hot / soft channels not summing to 1
};

// Number of sums per sample.
constexpr int kStatsK = 5;
constexpr int kExpK = 9;

// Fixed work unit: chunk boundaries depend only on the sample size, so the chunk partials (and
// the per-sample sums, added in chunk order) are the same for any number of threads.
constexpr int64_t kChunk = 16384;

struct Args {
  const void* x = nullptr;   // logits, B * n elements of type xt, contiguous
  const void* y = nullptr;   // target, B * n elements of type yt, contiguous
  void* gx = nullptr;        // backward output, B * n elements of type xt
  const double* g = nullptr; // backward input, B * K doubles (grad of the sums)
  int xt = kF32;
  int yt = kF32;
  int64_t n = 0;             // elements per sample
  int64_t chunks_per_sample = 0;
  double gamma = 0.0;        // exp_stats only
  double eps = 0.0;          // exp_stats only
  bool logs = true;          // exp_fwd_save: false skips C1, C0, F1, F0 (left 0) when gamma == 2
  // The saving forwards write, and the *_saved backwards read and then overwrite with the
  // float32 gradient, one float32 per element (element b * n + i, whatever the logits' type):
  // m = (x >= 0 ? -q : p), the smaller of p and q with the sign bit telling which, so that the
  // backward gets p and q without exp or division, and needs no new gradient buffer.
  float* saved = nullptr;
  // Forwards: when set, invalid[c] = the worst Invalid code of chunk c's target values
  // (kValid when every value is fine).
  double* invalid = nullptr;
  // Softmax kernels: logits (B, C, n) (float32 or float64), target a label map (B, n) of type
  // yt (U8 or I64; labels = true) or dense (B, C, n) (F32, F64, U8); g and partials hold C * K
  // doubles per sample / chunk (row b * C + c); exp_sums: the 9 exp sums (hard labels) with
  // gamma and eps, else the 5 sums.
  int64_t classes = 1;
  bool labels = false;
  bool exp_sums = false;
};

// Forward kernels process chunks [c0, c1) (chunk c = sample c / chunks_per_sample) and write K
// doubles per chunk to partials[c * K ...]. Backward kernels write gx for the same elements.
typedef void (*FwdFn)(const Args&, int64_t c0, int64_t c1, double* partials);
typedef void (*BwdFn)(const Args&, int64_t c0, int64_t c1);

struct Table {
  const char* name;
  FwdFn stats_fwd;
  BwdFn stats_bwd;
  FwdFn exp_fwd;
  BwdFn exp_bwd;
  // The forward + backward of training (stats: float32 / bfloat16 / float16 logits; exp:
  // float32 logits, and the backward only for gamma == 2 without F1 / F0 gradients): the
  // forward also writes Args::saved, the backward reads it and the target (not the logits) and
  // writes the float32 gradient over it.
  FwdFn stats_fwd_save;
  BwdFn stats_bwd_saved;
  FwdFn exp_fwd_save;
  BwdFn exp_bwd_saved;
  // Softmax over the C channels of each voxel: the forward writes C * K partials per chunk, the
  // backward the logits' gradient (float32 or float64) of every channel.
  FwdFn softmax_fwd;
  BwdFn softmax_bwd;
  // Softmax training path (the 5-sum kinds, float32 logits): softmax_fwd also writes p_c to
  // Args::saved when it is set; this backward reads it and the target (no exp) and writes the
  // float32 gradient over it.
  BwdFn softmax_bwd_saved;
};

// Defined in isa_base.cpp / isa_avx2.cpp / isa_avx512.cpp. The AVX ones return nullptr when the
// build target is not x86-64.
const Table* table_base();
const Table* table_avx2();
const Table* table_avx512();

}  // namespace cpu
}  // namespace hytver
