// AVX2 + FMA copy of the CPU kernels (x86-64-v3). Called only when the CPU supports it.
// No torch headers here: see csrc/kernels/hytver_cpu_kernels.h.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,f16c,lzcnt,movbe"))), \
                             apply_to = function)
#else
#pragma GCC target("arch=x86-64-v3")
#endif
#define HYTVER_ISA_NS isa_avx2
#define HYTVER_ISA_NAME "avx2"
#define HYTVER_TABLE_FN table_avx2
#define HYTVER_FLOAT_LANES 8
#include "../kernels/hytver_cpu_kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
#include "../kernels/hytver_cpu_table.h"
namespace hytver {
namespace cpu {
const Table* table_avx2() { return nullptr; }
}  // namespace cpu
}  // namespace hytver
#endif
