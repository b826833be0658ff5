// The loss algebra of every registered loss, written once: the loss value from the per-row sums
// and its gradient w.r.t. those sums. Framework-free (no torch, no std): host code for the CPU
// glue, and `__host__ __device__` under nvcc for the CUDA finalize kernel.
//
// Rows: the sums come per row r = b * C + c (sample b, channel c) of logits (B, C, *spatial),
// n voxels per row, in the column order of the kernels:
//   stats kinds (K = 5):  TP, FP, FN, C1 = sum y*softplus(-x), C0 = sum (1-y)*softplus(x)
//   exp kinds   (K = 9):  the same five from p clamped to [eps, 1-eps], then Eq = sum y*q^g,
//                         Ep = sum (1-y)*p^g, F1 = sum y*q^g*(-log p), F0 = sum (1-y)*p^g*(-log q)
//                         (hard labels; g = the kind's per-voxel exponent).
// Sigmoid (C independent channels): the loss of C channels is the mean over channels of the
// single-channel loss: region terms are per channel (one group over the batch, or one per
// sample), averaged over all C * groups; voxel means are over all B * C * n voxels;
// class-weighted CE is a ratio per channel.
// Softmax (C classes, p_c = softmax over the channels): row b * C + c holds class c's sums with
// y_c = [label == c] (or the one-hot / soft target's channel c), p_c, q_c = 1 - p_c and
// -log p_c from the log-softmax: TP, FP, FN, C1 = sum y_c*(-log p_c) (C0 = 0); the exp kinds
// also Eq = sum y_c*q~_c^g, Ep = sum (1-y_c)*p~_c^g, F1 = sum y_c*q~_c^g*(-log p~_c) (F0 = 0).
// Region terms: per class as in the binary case, averaged over the included classes (class 0
// only with include_background). Voxel terms are categorical: sum_c y_c*H_c(p_c) with class 0
// weighted as the binary background and classes >= 1 as the foreground, means over B * n.
//
// loss_and_coef() returns the loss and writes coef[r * K + k] = dL/dsums[r * K + k] (the same
// value for every row of a group). IEEE semantics throughout: 0/0 gives NaN, never a trap.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define HYTVER_HD __host__ __device__
#else
#define HYTVER_HD
#endif

namespace hytver {
namespace algebra {

// Loss kinds (the registry names in this order; name_to_kind maps them).
enum Kind : int {
  kDice = 0,
  kTversky,
  kFocalTversky,
  kLogCoshDice,
  kCE,
  kWeightedCE,
  kFocal,
  kDiceCE,
  kFocalDice,
  kCombo,
  kHyTver,
  kSymmetricUF,
  kAsymmetricUF,
  kDicePP,
  kNumKinds
};

// Hyperparameters per kind, in this order (the Python classes pass them so):
//   dice, logcosh_dice: smooth              tversky: alpha, smooth
//   focal_tversky: alpha, gamma, smooth      ce: -          weighted_ce: w_bg, w_fg
//   focal: alpha (< 0: none), gamma          dice_ce: lambda_dice, lambda_ce, smooth
//   focal_dice: lambda_dice, lambda_focal, alpha (< 0: none), gamma, smooth
//   combo: beta, gamma, smooth               hytver: alpha, beta, gamma, smooth
//   symmetric/asymmetric_unified_focal: weight, delta, gamma        dice_pp: gamma
constexpr int kMaxParams = 5;
constexpr int kStatsK = 5;
constexpr int kExpK = 9;
constexpr double kUnifiedEps = 1e-7;  // the clamp and smoothing of unified focal and DSC++
enum Col : int { TP = 0, FP, FN, C1, C0, EQ, EP, F1, F0 };

struct Spec {
  int kind = kHyTver;
  double prm[kMaxParams] = {0, 0, 0, 0, 0};
  bool per_sample = false;
  bool softmax = false;          // activation: sigmoid (false) or softmax (true)
  bool include_background = true;  // softmax: class 0 enters the region terms
  double tiny = 1.1754943508222875e-38;  // floor of the focal powers: the sums dtype's tiny
};

HYTVER_HD inline int param_count(int kind) {
  const int counts[kNumKinds] = {1, 2, 3, 1, 0, 2, 2, 3, 5, 3, 4, 3, 3, 1};
  return kind >= 0 && kind < kNumKinds ? counts[kind] : -1;
}

// Which sums a kind needs: the exponent kinds read the 9 exp sums.
HYTVER_HD inline bool is_exp(int kind) {
  return kind == kFocal || kind == kFocalDice || kind == kSymmetricUF || kind == kAsymmetricUF ||
         kind == kDicePP;
}
HYTVER_HD inline int sums_k(int kind) { return is_exp(kind) ? kExpK : kStatsK; }
// The exponent kinds' sums exist for hard labels only (y in {0, 1}; softmax: one class each).
HYTVER_HD inline bool needs_hard_labels(int kind) { return is_exp(kind); }

// The per-voxel exponent and clamp of the exp sums (0, 0 for the stats kinds).
HYTVER_HD inline double voxel_gamma(const Spec& s) {
  switch (s.kind) {
    case kFocal: return s.prm[1];
    case kFocalDice: return s.prm[3];
    case kSymmetricUF:
    case kAsymmetricUF: return s.prm[2];
    case kDicePP: return s.prm[0];
    default: return 0.0;
  }
}
HYTVER_HD inline double clamp_eps(const Spec& s) {
  return (s.kind == kSymmetricUF || s.kind == kAsymmetricUF || s.kind == kDicePP) ? kUnifiedEps
                                                                                  : 0.0;
}
// False: the kind reads none of C1, C0, F1, F0 (the CPU kernels may skip their logs).
HYTVER_HD inline bool uses_logs(int kind) { return kind != kDicePP; }

namespace detail {

HYTVER_HD inline double d_abs(double v) { return v < 0 ? -v : v; }

// I = (k*t + s) / (k*t + a*fn + b*fp + s) and dI/dt, dI/dfn, dI/dfp.
struct Ratio {
  double v, dt, dfn, dfp;
};
HYTVER_HD inline Ratio ratio(double t, double fn, double fp, double a, double b, double s,
                             double k) {
  const double num = k * t + s;
  const double den = num + a * fn + b * fp;
  const double den2 = den * den;
  return {num / den, k * (a * fn + b * fp) / den2, -a * num / den2, -b * num / den2};
}

// Shapes applied to v = 1 - index: value and derivative.
enum Shape : int { kIdentity = 0, kPower, kLogCosh };
struct Val {
  double v, d;
};
HYTVER_HD inline Val shape(int kind, double v, double gamma, double floor) {
  if (kind == kIdentity) return {v, 1.0};
  if (kind == kLogCosh) {  // log(cosh v) = |v| + log1p(exp(-2|v|)) - log 2, without overflow
    const double a = d_abs(v);
    return {a + log1p(exp(-2.0 * a)) - 0.69314718055994530942, tanh(v)};
  }
  // max(v, floor)^gamma; below the floor a constant (no gradient, as clamp_min); NaN stays NaN
  if (v != v) return {v, v};
  if (v >= floor) return {pow(v, gamma), gamma * pow(v, gamma - 1.0)};
  return {pow(floor, gamma), 0.0};
}

// The first class of the region terms: 1 under softmax without the background, else 0.
HYTVER_HD inline int64_t first_class(const Spec& sp) {
  return sp.softmax && !sp.include_background ? 1 : 0;
}

// weight * mean over the (included) C * groups of shape(1 - ratio(TP, FN, FP)); groups per
// channel: all samples (global) or each sample.
struct RegionArgs {
  double a, b, s, k;  // ratio weights, smoothing, TP scale
  int shape;
  double gamma;
};
HYTVER_HD inline double region(const Spec& sp, const RegionArgs& ra, double weight,
                               const double* sums, int64_t B, int64_t C, int K, double* coef) {
  const int64_t per_channel = sp.per_sample ? B : 1;
  const int64_t members = sp.per_sample ? 1 : B;
  const int64_t c0 = first_class(sp);
  const double groups = static_cast<double>((C - c0) * per_channel);
  double total = 0.0;
  for (int64_t c = c0; c < C; ++c) {
    for (int64_t g = 0; g < per_channel; ++g) {
      double tp = 0, fp = 0, fn = 0;
      for (int64_t m = 0; m < members; ++m) {  // fixed order: samples ascending
        const double* row = sums + ((g + m) * C + c) * K;
        tp += row[TP];
        fp += row[FP];
        fn += row[FN];
      }
      const Ratio r = ratio(tp, fn, fp, ra.a, ra.b, ra.s, ra.k);
      const Val v = shape(ra.shape, 1.0 - r.v, ra.gamma, sp.tiny);
      total += v.v;
      const double w = -weight * v.d / groups;
      for (int64_t m = 0; m < members; ++m) {
        double* cr = coef + ((g + m) * C + c) * K;
        cr[TP] += w * r.dt;
        cr[FN] += w * r.dfn;
        cr[FP] += w * r.dfp;
      }
    }
  }
  return weight * total / groups;
}

HYTVER_HD inline double dice_region(const Spec& sp, double weight, double smooth, int shp,
                                    const double* sums, int64_t B, int64_t C, int K,
                                    double* coef) {
  return region(sp, {1.0, 1.0, smooth, 2.0, shp, 0.0}, weight, sums, B, C, K, coef);
}
HYTVER_HD inline double tversky_region(const Spec& sp, double weight, double alpha, double smooth,
                                       int shp, double gamma, const double* sums, int64_t B,
                                       int64_t C, int K, double* coef) {
  return region(sp, {alpha, 1.0 - alpha, smooth, 1.0, shp, gamma}, weight, sums, B, C, K, coef);
}

// sum over rows of sum_j w[j] * row[cols[j]] (the voxel-mean terms).
HYTVER_HD inline double linear(const double* sums, int64_t rows, int K, const int* cols,
                               const double* w, int count, double* coef) {
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int j = 0; j < count; ++j) {
      total += w[j] * sums[r * K + cols[j]];
      coef[r * K + cols[j]] += w[j];
    }
  }
  return total;
}

// weight * mean over rows and the classes (bg, fg) of shape_c(1 - index_c): the unified focal
// and DSC++ region terms (per sample and channel). fg: (TP, fn_col, fp_col); bg: (n - TP - FN -
// FP, fp_col, fn_col): the background's FN is the foreground's FP and vice versa.
HYTVER_HD inline double class_region(const double* sums, int64_t rows, int K, double n,
                                     const RegionArgs& ra, int bg_shape, int fg_shape,
                                     double floor, double weight, int fn_col, int fp_col,
                                     double* coef) {
  double total = 0.0;
  const double scale = -weight / (2.0 * static_cast<double>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = sums + r * K;
    double* g = coef + r * K;
    const double tp = row[TP], fn = row[fn_col], fp = row[fp_col];
    const Ratio bg = ratio(n - tp - row[FN] - row[FP], fp, fn, ra.a, ra.b, ra.s, ra.k);
    const Ratio fg = ratio(tp, fn, fp, ra.a, ra.b, ra.s, ra.k);
    const Val vb = shape(bg_shape, 1.0 - bg.v, ra.gamma, floor);
    const Val vf = shape(fg_shape, 1.0 - fg.v, ra.gamma, floor);
    total += vb.v + vf.v;
    g[TP] += scale * (vf.d * fg.dt - vb.d * bg.dt);
    g[FN] -= scale * vb.d * bg.dt;
    g[FP] -= scale * vb.d * bg.dt;
    g[fn_col] += scale * (vf.d * fg.dfn + vb.d * bg.dfp);
    g[fp_col] += scale * (vf.d * fg.dfp + vb.d * bg.dfn);
  }
  return weight * total / (2.0 * static_cast<double>(rows));
}

// Class-weighted CE, one ratio per channel, averaged over channels.
HYTVER_HD inline double weighted_ce(double w_bg, double w_fg, const double* sums, int64_t B,
                                    int64_t C, int K, double n, double* coef) {
  double total = 0.0;
  const double voxels = static_cast<double>(B) * n;
  for (int64_t c = 0; c < C; ++c) {
    double s_y = 0, num = 0;
    for (int64_t b = 0; b < B; ++b) {
      const double* row = sums + (b * C + c) * K;
      s_y += row[TP] + row[FN];
      num += w_fg * row[C1] + w_bg * row[C0];
    }
    const double weight = w_fg * s_y + w_bg * (voxels - s_y);
    total += num / weight;
    const double d_sy = -(w_fg - w_bg) * num / (weight * weight) / static_cast<double>(C);
    for (int64_t b = 0; b < B; ++b) {
      double* g = coef + (b * C + c) * K;
      g[C1] += w_fg / weight / static_cast<double>(C);
      g[C0] += w_bg / weight / static_cast<double>(C);
      g[TP] += d_sy;
      g[FN] += d_sy;
    }
  }
  return total / static_cast<double>(C);
}

HYTVER_HD inline double ce_terms(double w1, double w0, int col1, int col0, const double* sums,
                                 int64_t rows, int K, double* coef) {
  const int cols[2] = {col1, col0};
  const double w[2] = {w1, w0};
  return linear(sums, rows, K, cols, w, 2, coef);
}

// focal: (alpha*F1 + (1-alpha)*F0) / N, alpha < 0: (F1 + F0) / N.
HYTVER_HD inline double focal(double weight, double alpha, const double* sums, int64_t rows,
                              int K, double voxels, double* coef) {
  const double w1 = alpha < 0 ? 1.0 : alpha;
  const double w0 = alpha < 0 ? 1.0 : 1.0 - alpha;
  return ce_terms(weight * w1 / voxels, weight * w0 / voxels, F1, F0, sums, rows, K, coef);
}


// The unified focal losses' hyperparameters (weight, delta, gamma) as region arguments.
struct Unified {
  double weight, delta;
  bool sym;
  RegionArgs ra;
};
HYTVER_HD inline Unified unified(const Spec& sp) {
  const double delta = sp.prm[1], gamma = sp.prm[2];
  return {sp.prm[0], delta, sp.kind == kSymmetricUF,
          {delta, 1.0 - delta, kUnifiedEps, 1.0, kPower, 1.0 - gamma}};
}

// ---- softmax (categorical) terms

// sum over rows of w(c) * row[col], w(0) = w_bg, w(c >= 1) = w_fg.
HYTVER_HD inline double class_linear(const double* sums, int64_t B, int64_t C, int K, int col,
                                     double w_bg, double w_fg, double* coef) {
  double total = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const double w = c == 0 ? w_bg : w_fg;
      total += w * sums[(b * C + c) * K + col];
      coef[(b * C + c) * K + col] += w;
    }
  }
  return total;
}

// Class-weighted categorical CE: sum_rows w_c*C1 / sum_rows w_c*(TP + FN) (S_y = TP + FN).
HYTVER_HD inline double softmax_weighted_ce(double w_bg, double w_fg, const double* sums,
                                            int64_t B, int64_t C, int K, double* coef) {
  double num = 0.0, den = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const double* row = sums + (b * C + c) * K;
      const double w = c == 0 ? w_bg : w_fg;
      num += w * row[C1];
      den += w * (row[TP] + row[FN]);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      double* g = coef + (b * C + c) * K;
      const double w = c == 0 ? w_bg : w_fg;
      g[C1] += w / den;
      g[TP] -= w * num / (den * den);
      g[FN] -= w * num / (den * den);
    }
  }
  return num / den;
}

// weight * mean over (sample, included class) of shape_c(1 - ratio(TP, fn_col, fp_col)): the
// unified focal and DSC++ region terms under softmax (shape bg_shape for class 0).
HYTVER_HD inline double softmax_class_region(const Spec& sp, const double* sums, int64_t B,
                                             int64_t C, int K, const RegionArgs& ra,
                                             int bg_shape, int fg_shape, double weight,
                                             int fn_col, int fp_col, double* coef) {
  const int64_t c0 = first_class(sp);
  const double count = static_cast<double>(B * (C - c0));
  double total = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = c0; c < C; ++c) {
      const double* row = sums + (b * C + c) * K;
      double* g = coef + (b * C + c) * K;
      const Ratio r = ratio(row[TP], row[fn_col], row[fp_col], ra.a, ra.b, ra.s, ra.k);
      const Val v = shape(c == 0 ? bg_shape : fg_shape, 1.0 - r.v, ra.gamma, sp.tiny);
      total += v.v;
      const double w = -weight * v.d / count;
      g[TP] += w * r.dt;
      g[fn_col] += w * r.dfn;
      g[fp_col] += w * r.dfp;
    }
  }
  return weight * total / count;
}

// The loss under softmax (see the top of this file); coef zeroed by the caller.
HYTVER_HD inline double softmax_loss(const Spec& sp, const double* sums, int64_t B, int64_t C,
                                     int64_t n, double* coef) {
  const int K = sums_k(sp.kind);
  const double voxels = static_cast<double>(B) * static_cast<double>(n);
  const double* p = sp.prm;
  switch (sp.kind) {
    case kCE: return class_linear(sums, B, C, K, C1, 1.0 / voxels, 1.0 / voxels, coef);
    case kWeightedCE: return softmax_weighted_ce(p[0], p[1], sums, B, C, K, coef);
    case kFocal: {
      const double w1 = p[0] < 0 ? 1.0 : p[0], w0 = p[0] < 0 ? 1.0 : 1.0 - p[0];
      return class_linear(sums, B, C, K, F1, w0 / voxels, w1 / voxels, coef);
    }
    case kDiceCE:
      return dice_region(sp, p[0], p[2], kIdentity, sums, B, C, K, coef) +
             class_linear(sums, B, C, K, C1, p[1] / voxels, p[1] / voxels, coef);
    case kFocalDice: {
      const double w1 = p[2] < 0 ? 1.0 : p[2], w0 = p[2] < 0 ? 1.0 : 1.0 - p[2];
      return dice_region(sp, p[0], p[4], kIdentity, sums, B, C, K, coef) +
             class_linear(sums, B, C, K, F1, p[1] * w0 / voxels, p[1] * w1 / voxels, coef);
    }
    case kCombo:
      return class_linear(sums, B, C, K, C1, p[1] * (1.0 - p[0]) / voxels, p[1] * p[0] / voxels,
                          coef) +
             dice_region(sp, 1.0 - p[1], p[2], kIdentity, sums, B, C, K, coef);
    case kHyTver:
      return class_linear(sums, B, C, K, C1, p[2] * (1.0 - p[1]) / voxels, p[2] * p[1] / voxels,
                          coef) +
             tversky_region(sp, 1.0 - p[2], p[0], p[3], kIdentity, 0.0, sums, B, C, K, coef);
    case kSymmetricUF:
    case kAsymmetricUF: {
      const Unified u = unified(sp);
      const double region_term = softmax_class_region(
          sp, sums, B, C, K, u.ra, u.sym ? kPower : kIdentity, kPower, u.weight, FN, FP, coef);
      const double w = (1.0 - u.weight) / voxels;
      // Background: the modulated term (F1) in both; foreground: F1 (symmetric) or C1.
      double voxel_term = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = 0; c < C; ++c) {
          const int col = (c == 0 || u.sym) ? F1 : C1;
          const double wc = w * (c == 0 ? 1.0 - u.delta : u.delta);
          voxel_term += wc * sums[(b * C + c) * K + col];
          coef[(b * C + c) * K + col] += wc;
        }
      }
      return region_term + voxel_term;
    }
    case kDicePP: {
      const RegionArgs ra = {1.0, 1.0, kUnifiedEps, 2.0, kIdentity, 0.0};
      return softmax_class_region(sp, sums, B, C, K, ra, kIdentity, kIdentity, 1.0, EQ, EP,
                                  coef);
    }
    default: return nan("");
  }
}

}  // namespace detail

// The loss (see the top of this file) and coef = dL/dsums, both rows x sums_k(kind) with rows =
// B * C. coef is overwritten. Unknown kinds give NaN.
HYTVER_HD inline double loss_and_coef(const Spec& sp, const double* sums, int64_t B, int64_t C,
                                      int64_t n, double* coef) {
  using namespace detail;
  const int K = sums_k(sp.kind);
  const int64_t rows = B * C;
  for (int64_t i = 0; i < rows * K; ++i) coef[i] = 0.0;
  const double* p = sp.prm;
  switch (sp.kind) {  // region terms only: the same for both activations
    case kDice: return dice_region(sp, 1.0, p[0], kIdentity, sums, B, C, K, coef);
    case kLogCoshDice: return dice_region(sp, 1.0, p[0], kLogCosh, sums, B, C, K, coef);
    case kTversky:
      return tversky_region(sp, 1.0, p[0], p[1], kIdentity, 0.0, sums, B, C, K, coef);
    case kFocalTversky:
      return tversky_region(sp, 1.0, p[0], p[2], kPower, p[1], sums, B, C, K, coef);
    default: break;
  }
  if (sp.softmax) return softmax_loss(sp, sums, B, C, n, coef);
  const double voxels = static_cast<double>(rows) * static_cast<double>(n);
  switch (sp.kind) {
    case kCE: return ce_terms(1.0 / voxels, 1.0 / voxels, C1, C0, sums, rows, K, coef);
    case kWeightedCE: return weighted_ce(p[0], p[1], sums, B, C, K, static_cast<double>(n), coef);
    case kFocal: return focal(1.0, p[0], sums, rows, K, voxels, coef);
    case kDiceCE:
      return dice_region(sp, p[0], p[2], kIdentity, sums, B, C, K, coef) +
             ce_terms(p[1] / voxels, p[1] / voxels, C1, C0, sums, rows, K, coef);
    case kFocalDice:
      return dice_region(sp, p[0], p[4], kIdentity, sums, B, C, K, coef) +
             focal(p[1], p[2], sums, rows, K, voxels, coef);
    case kCombo:
      return ce_terms(p[1] * p[0] / voxels, p[1] * (1.0 - p[0]) / voxels, C1, C0, sums, rows, K,
                      coef) +
             dice_region(sp, 1.0 - p[1], p[2], kIdentity, sums, B, C, K, coef);
    case kHyTver:
      return ce_terms(p[2] * p[1] / voxels, p[2] * (1.0 - p[1]) / voxels, C1, C0, sums, rows, K,
                      coef) +
             tversky_region(sp, 1.0 - p[2], p[0], p[3], kIdentity, 0.0, sums, B, C, K, coef);
    case kSymmetricUF:
    case kAsymmetricUF: {
      const Unified u = unified(sp);
      const double region_term =
          class_region(sums, rows, K, static_cast<double>(n), u.ra, u.sym ? kPower : kIdentity,
                       kPower, sp.tiny, u.weight, FN, FP, coef);
      const double w = (1.0 - u.weight) / voxels;
      return region_term +
             ce_terms(w * u.delta, w * (1.0 - u.delta), u.sym ? F1 : C1, F0, sums, rows, K, coef);
    }
    case kDicePP: {
      const RegionArgs ra = {1.0, 1.0, kUnifiedEps, 2.0, kIdentity, 0.0};
      return class_region(sums, rows, K, static_cast<double>(n), ra, kIdentity, kIdentity,
                          sp.tiny, 1.0, EQ, EP, coef);
    }
    default: return nan("");
  }
}

// The registry name of a kind (nullptr if unknown).
inline const char* kind_name(int kind) {
  static const char* const names[kNumKinds] = {"dice",
                                  "tversky",
                                  "focal_tversky",
                                  "logcosh_dice",
                                  "ce",
                                  "weighted_ce",
                                  "focal",
                                  "dice_ce",
                                  "focal_dice",
                                  "combo",
                                  "hytver",
                                  "symmetric_unified_focal",
                                  "asymmetric_unified_focal",
                                  "dice_pp"};
  return kind >= 0 && kind < kNumKinds ? names[kind] : nullptr;
}

// Host only: the kind of a registry name, -1 if unknown.
inline int name_to_kind(const char* name) {
  for (int k = 0; k < kNumKinds; ++k) {
    const char* a = kind_name(k);
    const char* b = name;
    while (*a != '\0' && *a == *b) {
      ++a;
      ++b;
    }
    if (*a == '\0' && *b == '\0') return k;
  }
  return -1;
}

}  // namespace algebra
}  // namespace hytver
