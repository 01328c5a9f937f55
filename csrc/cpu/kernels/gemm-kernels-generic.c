/* The generic build of gemm-kernels.c (compiler flags set in CMakeLists.txt). */
#define SD_ISA 0
#include "gemm-kernels.c"
