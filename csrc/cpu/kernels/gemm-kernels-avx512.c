/* The avx512 build of gemm-kernels.c (compiler flags set in CMakeLists.txt). */
#define SD_ISA 2
#include "gemm-kernels.c"
