// The project's CUDA kernels compiled for the CPU through cuda_shim.h, with the bindings' signatures.
//
// Same .cuh code as the GPU build (kernels, output shapes, path choice, grid sizes); only the launch
// differs, and every input is surrounded by NaNs (out-of-bounds reads show). Tests swap this module
// in for the built plugins to check the kernels' arithmetic and the autograd glue in
// torch_utils/ops/_cuda.py without a GPU.

#include <torch/extension.h>

#include <cstdint>
#include <limits>

#include "cuda_shim.h"

#include "bias_act_kernel.cuh"
#include "upfirdn2d_kernel.cuh"

// A copy of t, with t's strides, inside a buffer of NaNs: a kernel reading outside t's elements (an
// indexing bug that a GPU might survive silently) gets NaNs, which the tests' comparisons catch.
static at::Tensor nan_guarded(const at::Tensor& t) {
  if (t.numel() == 0) return t;
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) {
    TORCH_CHECK(t.stride(d) >= 0, "emulated ops: negative strides are not supported");
    extent += (t.size(d) - 1) * t.stride(d);
  }
  // The copy keeps t's address modulo 16 bytes, so kernels that pick 16-byte accesses by alignment
  // take the same route as on t itself (the buffer's own start is aligned far beyond 16).
  const int64_t guard = 4096, misalign = int64_t(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16) / t.element_size();
  at::Tensor buf = at::full({extent + 2 * guard + 16}, std::numeric_limits<double>::quiet_NaN(), t.options());
  at::Tensor copy = buf.as_strided(t.sizes(), t.strides(), guard + misalign);
  copy.copy_(t);
  return copy;
}

static at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g1, const at::Tensor& g2,
                           int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.device().is_cpu() && x.is_non_overlapping_and_dense(), "emulated bias_act: x must be dense, on the CPU");
  for (const at::Tensor* g : {&g1, &g2})
    TORCH_CHECK(!g->numel() || (g->sizes() == x.sizes() && g->strides() == x.strides()),
                "emulated bias_act: gradient inputs must have the shape and strides of x");
  return bias_act_run(nan_guarded(x), nan_guarded(b), nan_guarded(g1), nan_guarded(g2), dim, act, mode, alpha, gain,
                      clamp, cuda_emulation::Launch{});
}

static at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                            int64_t path) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "emulated upfirdn2d: x must be 4-D, on the CPU");
  TORCH_CHECK(g.scalar_type() == at::kFloat && g.dim() == 2 && g.is_contiguous(),
              "emulated upfirdn2d: filter must be contiguous 2-D float32");
  return upfirdn2d_run(nan_guarded(x), nan_guarded(g), upx, upy, downx, downy, padx0, padx1, pady0, pady1, path,
                       cuda_emulation::Launch{});
}

// The kernel's FastDivmod on n [any shape] int64 in [0, 2^31): (n / d, n % d), for exactness tests.
static std::tuple<at::Tensor, at::Tensor> fast_divmod(const at::Tensor& n, int64_t d) {
  TORCH_CHECK(d >= 1 && d < (int64_t(1) << 31), "fast_divmod: d must be in [1, 2^31)");
  TORCH_CHECK(n.scalar_type() == at::kLong && n.device().is_cpu(), "fast_divmod: n must be int64 on the CPU");
  const at::Tensor nc = n.contiguous();
  at::Tensor q = at::empty_like(nc), r = at::empty_like(nc);
  const FastDivmod by(static_cast<uint32_t>(d));
  const int64_t* np = nc.data_ptr<int64_t>();
  int64_t *qp = q.data_ptr<int64_t>(), *rp = r.data_ptr<int64_t>();
  for (int64_t k = 0; k < nc.numel(); ++k) {
    TORCH_CHECK(np[k] >= 0 && np[k] < (int64_t(1) << 31), "fast_divmod: n must be in [0, 2^31)");
    qp[k] = by.div(static_cast<uint32_t>(np[k]));
    rp[k] = by.mod(static_cast<uint32_t>(np[k]));
  }
  return {q, r};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fast_divmod", &fast_divmod, "bias_act's FastDivmod (quotient, remainder) on the CPU");
  m.def("bias_act", &bias_act, "bias_act kernel run by the CPU emulator");
  m.def("upfirdn2d", &upfirdn2d, "upfirdn2d kernels run by the CPU emulator");
}
