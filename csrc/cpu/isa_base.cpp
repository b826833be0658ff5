// Baseline copy of the CPU kernels (x86-64 SSE2, or the default target of other architectures).
// No torch headers here: see csrc/kernels/hytver_cpu_kernels.h.
#define HYTVER_ISA_NS isa_base
#define HYTVER_ISA_NAME "base"
#define HYTVER_TABLE_FN table_base
#define HYTVER_FLOAT_LANES 4
#include "../kernels/hytver_cpu_kernels.h"
