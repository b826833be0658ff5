// AVX-512 copy of the CPU kernels (x86-64-v4, 512-bit vectors). Called only when the CPU
// supports it. No torch headers here: see csrc/kernels/hytver_cpu_kernels.h.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(                                                              \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c,lzcnt," \
                          "movbe,prefer-vector-width=512"))),                                \
    apply_to = function)
#else
#pragma GCC target("arch=x86-64-v4", "prefer-vector-width=512")
#endif
#define HYTVER_ISA_NS isa_avx512
#define HYTVER_ISA_NAME "avx512"
#define HYTVER_TABLE_FN table_avx512
#define HYTVER_FLOAT_LANES 16
#include "../kernels/hytver_cpu_kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
#include "../kernels/hytver_cpu_table.h"
namespace hytver {
namespace cpu {
const Table* table_avx512() { return nullptr; }
}  // namespace cpu
}  // namespace hytver
#endif
