// The project's CUDA kernels compiled for the CPU through cuda_shim.h, with the bindings' signatures.
//
// Same .cuh code as the GPU build (kernels, output shapes, path choice, grid sizes); only the launch
// differs. Tests swap this module in for the built plugins to check the kernels' arithmetic and the
// autograd glue in torch_utils/ops/_cuda.py without a GPU.

#include <torch/extension.h>

#include "cuda_shim.h"

#include "bias_act_kernel.cuh"
#include "upfirdn2d_kernel.cuh"

static at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g1, const at::Tensor& g2,
                           int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.device().is_cpu() && x.is_non_overlapping_and_dense(), "emulated bias_act: x must be dense, on the CPU");
  for (const at::Tensor* g : {&g1, &g2})
    TORCH_CHECK(!g->numel() || (g->sizes() == x.sizes() && g->strides() == x.strides()),
                "emulated bias_act: gradient inputs must have the shape and strides of x");
  return bias_act_run(x, b, g1, g2, dim, act, mode, alpha, gain, clamp, cuda_emulation::Launch{});
}

static at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                            int64_t path) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "emulated upfirdn2d: x must be 4-D, on the CPU");
  TORCH_CHECK(g.scalar_type() == at::kFloat && g.dim() == 2 && g.is_contiguous(),
              "emulated upfirdn2d: filter must be contiguous 2-D float32");
  return upfirdn2d_run(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1, path, cuda_emulation::Launch{});
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &bias_act, "bias_act kernel run by the CPU emulator");
  m.def("upfirdn2d", &upfirdn2d, "upfirdn2d kernels run by the CPU emulator");
}
