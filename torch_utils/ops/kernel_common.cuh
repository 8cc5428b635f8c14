// Small pieces shared by the kernels (bias_act_kernel.cuh, upfirdn2d_kernel.cuh): included by their
// GPU builds and by the tests' CPU emulator alike.

#pragma once

#include <cstdint>

namespace {

// n / d and n % d for a divisor d fixed for the whole launch, by a multiply-high, an add and a shift.
// GPUs have no integer divide instruction (a 64-bit `/` is a long software routine); one per element
// would make a memory-bound kernel compute-bound. Round-up method (Granlund & Montgomery): with
// l = ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1, n / d == (mulhi(n, m) + n) >> l for all
// 0 <= n, d < 2^31 (m < 2^32, and mulhi(n, m) + n < 2n cannot overflow).
struct FastDivmod {
  uint32_t d = 1, m = 1, l = 0;
  FastDivmod() = default;
  explicit FastDivmod(uint32_t divisor) : d(divisor) {
    while ((uint64_t(1) << l) < d) ++l;
    m = uint32_t((uint64_t(1) << 32) * ((uint64_t(1) << l) - d) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const { return (__umulhi(n, m) + n) >> l; }
  __device__ __forceinline__ uint32_t mod(uint32_t n) const { return n - div(n) * d; }
};

// N elements moved by one load or store instruction (16 bytes: 8 halves, 4 floats, 2 doubles). A
// thread waiting on one 2-byte load leaves most of the memory system idle; 16-byte accesses put 8x as
// many bytes in flight per thread, which is what lets fp16 reach the bandwidth fp32 reaches.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

}  // namespace
