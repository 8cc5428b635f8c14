// Python binding of the bias_act kernel: argument checks here, the launch in bias_act_kernel.cu.

#include <torch/extension.h>

at::Tensor bias_act_launch(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g1, const at::Tensor& g2,
                           int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp);

// Empty tensors stand for "absent" (b: no bias; g1/g2: not needed by the mode).
static at::Tensor bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g1, const at::Tensor& g2,
                           int64_t dim, int64_t act, int64_t mode, double alpha, double gain, double clamp) {
  TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "bias_act: x must be dense (contiguous in some order)");
  TORCH_CHECK(x.dim() == 0 || (dim >= 0 && dim < x.dim()), "bias_act: dim out of range: ", dim);
  TORCH_CHECK(mode >= 0 && mode <= 3, "bias_act: mode must be 0, 1, 2 or 3, got ", mode);
  TORCH_CHECK(act >= 0 && act <= 8, "bias_act: unknown activation id ", act);
  TORCH_CHECK(mode != 3 || (act <= 2 && alpha >= 0 && gain > 0 && !b.numel()),
              "bias_act: mode 3 (gradient from the output) needs linear/relu/lrelu, alpha >= 0, gain > 0, no bias");
  if (b.numel()) {
    TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(), "bias_act: b must match x");
    TORCH_CHECK(b.dim() == 1 && b.is_contiguous() && x.dim() > 0 && b.size(0) == x.size(dim),
                "bias_act: b must be contiguous 1-D of length x.size(dim)");
  }
  for (const at::Tensor* g : {&g1, &g2}) {
    if (!g->numel()) continue;
    TORCH_CHECK(g->device() == x.device() && g->scalar_type() == x.scalar_type() && g->sizes() == x.sizes() &&
                    g->strides() == x.strides(),
                "bias_act: gradient inputs must have the dtype, shape and strides of x");
  }
  TORCH_CHECK(mode == 0 || g1.numel() == x.numel(), "bias_act: modes 1 to 3 need g1");
  return bias_act_launch(x, b, g1, g2, dim, act, mode, alpha, gain, clamp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp (mode 0) and its derivatives (1, 2; 3 from the output)");
}
