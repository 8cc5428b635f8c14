// Python binding of the upfirdn2d kernel: argument checks here, the launch in upfirdn2d_kernel.cu.

#include <torch/extension.h>

at::Tensor upfirdn2d_launch(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                            int64_t path);

// g is the correlation filter [fh, fw] (already mirrored unless flip_filter, gain folded in).
static at::Tensor upfirdn2d(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                            int64_t path) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, "upfirdn2d: x must be a 4-D CUDA tensor");
  TORCH_CHECK(g.device() == x.device() && g.scalar_type() == at::kFloat && g.dim() == 2 && g.is_contiguous(),
              "upfirdn2d: filter must be a contiguous 2-D float32 tensor on x's device");
  TORCH_CHECK(g.size(0) >= 1 && g.size(1) >= 1 && g.size(0) <= 1024 && g.size(1) <= 1024,
              "upfirdn2d: filter size out of range");
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up/down must be >= 1");
  TORCH_CHECK(x.size(2) * upy < (int64_t(1) << 30) && x.size(3) * upx < (int64_t(1) << 30),
              "upfirdn2d: image too large");
  TORCH_CHECK(path >= 0 && path <= 4,
              "upfirdn2d: path must be 0 (auto), 1 (general), 2 (tiled), 3 (tiled fixed) or 4 (channels-last)");
  return upfirdn2d_launch(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1, path);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d,
        "upfirdn2d with a 2-D correlation filter; path 0 auto, 1 general, 2 tiled, 3 tiled fixed, 4 channels-last");
}
