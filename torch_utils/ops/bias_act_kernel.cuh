// Fused bias + activation + gain + clamp, and its first/second derivative, as one elementwise kernel.
//
// With z = x + b[c] (c = index along the bias dimension), f = act(z), y = f * gain:
//   mode 0:  out = clamp(y, -clamp, clamp)                         (forward)
//   mode 1:  out = g1      * gain * f'(z) * [|y| <= clamp]         (dL/dx given dL/dout = g1)
//   mode 2:  out = g1 * g2 * gain * f''(z) * [|y| <= clamp]        (second-order term)
//   mode 3:  out = g1 * gain * f'(y) * [|y| < clamp]               (dL/dx from the *output*: x holds
//            the forward's result y, no bias; linear / relu / lrelu with gain > 0 only, where f'
//            depends on the sign alone and a saturated output equals the clamp)
// clamp < 0 means "no clamp". The clamp test of modes 1 and 2 matches torch.clamp's backward, which
// passes the gradient where the input lies inside the closed interval; mode 3 sees only the clamped
// output, so it blocks where |y| reaches the clamp as stored in y's dtype (the reference's
// piecewise-linear backward does the same). Arithmetic runs in float (double for
// double inputs); half inputs are converted on load and rounded once on store.
//
// This header holds the kernel and the launch decisions; the `launch` callback passed to bias_act_run
// only issues the kernel. bias_act_kernel.cu launches on the GPU; the test suite's CPU emulator
// (tests/torch_utils/ops/cuda_emulation) runs this same code.

#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>

#include "kernel_common.cuh"

namespace {

// Keep in sync with _ACT_IDS in torch_utils/ops/_cuda.py.
enum Act : int { kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish };

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double dev_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float dev_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double dev_log1p(double v) { return log1p(v); }

template <typename T>
__device__ __forceinline__ T sigmoid(T z) { return T(1) / (T(1) + dev_exp(-z)); }

// f(z), f'(z), f''(z). Derivatives at kinks follow PyTorch's autograd (relu: 0 at 0, lrelu: alpha).
template <typename T>
__device__ __forceinline__ void activation(int act, T z, T alpha, T& f, T& d1, T& d2) {
  const T selu_scale = T(1.0507009873554804934193349852946);
  const T selu_alpha = T(1.6732632423543772848170429916717);
  d2 = T(0);
  switch (act) {
    case kRelu: f = z > T(0) ? z : T(0); d1 = z > T(0) ? T(1) : T(0); break;
    case kLrelu: f = z > T(0) ? z : z * alpha; d1 = z > T(0) ? T(1) : alpha; break;
    case kTanh: f = dev_tanh(z); d1 = T(1) - f * f; d2 = T(-2) * f * d1; break;
    case kSigmoid: {
      f = sigmoid(z); d1 = f * (T(1) - f); d2 = d1 * (T(1) - T(2) * f); break;
    }
    case kElu: {
      const T e = dev_exp(z);
      f = z > T(0) ? z : alpha * (e - T(1)); d1 = z > T(0) ? T(1) : alpha * e; d2 = z > T(0) ? T(0) : alpha * e;
      break;
    }
    case kSelu: {
      const T e = selu_scale * selu_alpha * dev_exp(z);
      f = z > T(0) ? selu_scale * z : e - selu_scale * selu_alpha;
      d1 = z > T(0) ? selu_scale : e; d2 = z > T(0) ? T(0) : e;
      break;
    }
    case kSoftplus: {
      // torch.nn.functional.softplus returns z itself above threshold 20 (gradient 1 there).
      const T s = sigmoid(z);
      const bool lin = z > T(20);
      f = lin ? z : dev_log1p(dev_exp(z)); d1 = lin ? T(1) : s; d2 = lin ? T(0) : s * (T(1) - s);
      break;
    }
    case kSwish: {
      const T s = sigmoid(z), ds = s * (T(1) - s);
      f = z * s; d1 = s + z * ds; d2 = ds * (T(2) + z * (T(1) - T(2) * s));
      break;
    }
    default: f = z; d1 = T(1); break;  // kLinear
  }
}

struct BiasActParams {
  int64_t numel, bias_stride, bias_size;  // bias index of element i = (i / bias_stride) % bias_size
  FastDivmod by_stride, by_size;          // the same divisions, for launches with 32-bit indices
  bool vector_bias;                       // every pack of VEC elements has a single bias index
  int act, mode;
  double alpha, gain, clamp;
};

__device__ __forceinline__ int64_t bias_index(int64_t i, const BiasActParams& p) {
  return (i / p.bias_stride) % p.bias_size;
}
__device__ __forceinline__ uint32_t bias_index(uint32_t i, const BiasActParams& p) {
  return p.by_size.mod(p.by_stride.div(i));
}

// One element: mode 0 returns the clamped output, modes 1-3 the gradient (see the file comment).
template <typename acc_t>
__device__ __forceinline__ acc_t bias_act_element(acc_t x, acc_t bias, acc_t g1, acc_t g2, const BiasActParams& p,
                                                  acc_t alpha, acc_t gain, acc_t clamp, acc_t stored_clamp) {
  if (p.mode == 3) {
    const bool pass = clamp < acc_t(0) || (x > -stored_clamp && x < stored_clamp);
    const acc_t slope = p.act == kLinear || x > acc_t(0) ? acc_t(1) : (p.act == kLrelu ? alpha : acc_t(0));
    return pass ? g1 * gain * slope : acc_t(0);
  }
  acc_t f, d1, d2;
  activation<acc_t>(p.act, x + bias, alpha, f, d1, d2);
  const acc_t y = f * gain;
  if (p.mode == 0) return clamp >= acc_t(0) ? (y > clamp ? clamp : (y < -clamp ? -clamp : y)) : y;
  const bool pass = clamp < acc_t(0) || (y >= -clamp && y <= clamp);
  return pass ? g1 * g2 * gain * (p.mode == 1 ? d1 : d2) : acc_t(0);
}

// index_t: uint32_t when numel < 2^31 (then v + step cannot wrap: step <= 2^24 packs), else int64_t.
// VEC > 1: every pointer is 16-byte aligned; thread t handles the elements [VEC*v, VEC*v + VEC) for
// v = t, t + step, ... with one load per input and one store, and the last numel % VEC elements
// one by one. Absent inputs are null: b (no bias), g1 (mode 0), g2 (modes 0, 1, 3).
template <typename scalar_t, typename index_t, int VEC>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ b, const scalar_t* __restrict__ g1,
                                const scalar_t* __restrict__ g2, BiasActParams p) {
  using acc_t = at::acc_type<scalar_t, true>;
  using pack_t = Pack<scalar_t, VEC>;
  const acc_t alpha = acc_t(p.alpha), gain = acc_t(p.gain), clamp = acc_t(p.clamp);
  const acc_t stored_clamp = acc_t(static_cast<scalar_t>(clamp));  // a saturated y equals this (mode 3)
  const index_t step = index_t(blockDim.x) * gridDim.x, numel = index_t(p.numel), packs = numel / VEC;
  const index_t first = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (index_t v = first; v < packs; v += step) {
    const pack_t xv = reinterpret_cast<const pack_t*>(x)[v];
    pack_t g1v, g2v, ov;
    if (g1 != nullptr) g1v = reinterpret_cast<const pack_t*>(g1)[v];
    if (g2 != nullptr) g2v = reinterpret_cast<const pack_t*>(g2)[v];
    acc_t bias = acc_t(0);
    if (b != nullptr && p.vector_bias) bias = acc_t(b[bias_index(v * VEC, p)]);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      if (b != nullptr && !p.vector_bias) bias = acc_t(b[bias_index(v * VEC + j, p)]);
      const acc_t gr1 = g1 != nullptr ? acc_t(g1v.v[j]) : acc_t(0), gr2 = g2 != nullptr ? acc_t(g2v.v[j]) : acc_t(1);
      ov.v[j] = scalar_t(bias_act_element(acc_t(xv.v[j]), bias, gr1, gr2, p, alpha, gain, clamp, stored_clamp));
    }
    reinterpret_cast<pack_t*>(out)[v] = ov;
  }
  if (VEC > 1 && first < numel - packs * VEC) {  // the tail, one element per thread (fewer than VEC)
    const index_t i = packs * VEC + first;
    const acc_t bias = b != nullptr ? acc_t(b[bias_index(i, p)]) : acc_t(0);
    const acc_t gr1 = g1 != nullptr ? acc_t(g1[i]) : acc_t(0), gr2 = g2 != nullptr ? acc_t(g2[i]) : acc_t(1);
    out[i] = scalar_t(bias_act_element(acc_t(x[i]), bias, gr1, gr2, p, alpha, gain, clamp, stored_clamp));
  }
}

inline const void* ptr_or_null(const at::Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }

// x, g1, g2 (when non-empty) share one dense layout; b is empty or 1-D contiguous of size x.size(dim).
// launch(kernel, grid, block, shared_bytes, kernel arguments...) issues one kernel.
template <typename Launch>
at::Tensor bias_act_run(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g1, const at::Tensor& g2,
                        int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp,
                        Launch&& launch) {
  at::Tensor out = at::empty_like(x);  // preserve_format keeps x's strides for dense tensors
  TORCH_CHECK(out.strides() == x.strides(), "bias_act: output layout differs from x");
  if (x.numel() == 0) return out;
  BiasActParams p;
  p.numel = x.numel();
  p.bias_stride = x.dim() ? x.stride(dim) : 1;
  p.bias_size = x.dim() ? x.size(dim) : 1;
  // A size-1 dimension may carry any stride (even 0 or one beyond 2^32): its bias index is always 0.
  if (p.bias_size == 1 || p.bias_stride <= 0) p.bias_stride = 1;
  p.act = int(act);
  p.mode = int(mode);
  p.alpha = alpha;
  p.gain = gain;
  p.clamp = clamp;
  const bool narrow = p.numel < (int64_t(1) << 31);  // then stride and size are < 2^31 as well
  if (narrow) {
    p.by_stride = FastDivmod(uint32_t(p.bias_stride));
    p.by_size = FastDivmod(uint32_t(p.bias_size));
  }
  // 16-byte packs when every pointer allows them (offset views may not); the bias is then read once
  // per pack when a pack never straddles two bias indices.
  auto aligned = [](const at::Tensor& t) { return !t.numel() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  const bool packed = aligned(out) && aligned(x) && aligned(g1) && aligned(g2);
  const int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "bias_act", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const int vec = packed ? kVec : 1;
    p.vector_bias = p.bias_stride % vec == 0 || p.bias_size == 1;
    const int64_t blocks = std::min<int64_t>((p.numel / vec + threads - 1) / threads, 65536);
    const auto kernel = packed ? (narrow ? bias_act_kernel<scalar_t, uint32_t, kVec>
                                         : bias_act_kernel<scalar_t, int64_t, kVec>)
                               : (narrow ? bias_act_kernel<scalar_t, uint32_t, 1> : bias_act_kernel<scalar_t, int64_t, 1>);
    launch(kernel, dim3(unsigned(std::max<int64_t>(blocks, 1))), dim3(threads), size_t(0), out.data_ptr<scalar_t>(),
           x.data_ptr<scalar_t>(), static_cast<const scalar_t*>(ptr_or_null(b)),
           static_cast<const scalar_t*>(ptr_or_null(g1)), static_cast<const scalar_t*>(ptr_or_null(g2)), p);
  });
  return out;
}

}  // namespace
