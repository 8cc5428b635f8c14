// GPU launch of the upfirdn2d kernels (the kernels and the launch decisions: upfirdn2d_kernel.cuh).

#include "upfirdn2d_kernel.cuh"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

at::Tensor upfirdn2d_launch(const at::Tensor& x, const at::Tensor& g, int64_t upx, int64_t upy, int64_t downx,
                            int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                            int64_t path) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  return upfirdn2d_run(x, g, upx, upy, downx, downy, padx0, padx1, pady0, pady1, path,
                       [&](auto kernel, dim3 grid, dim3 block, size_t smem, auto... args) {
                         kernel<<<grid, block, smem, stream>>>(args...);
                         C10_CUDA_KERNEL_LAUNCH_CHECK();
                       });
}
