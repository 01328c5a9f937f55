/* The avx2 build of gemm-kernels.c (compiler flags set in CMakeLists.txt). */
#define SD_ISA 1
#include "gemm-kernels.c"
