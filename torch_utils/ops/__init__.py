"""Differentiable ops with a PyTorch reference and, for CUDA tensors, custom kernels (see _cuda.py)."""

# Device types whose tensors are offered to the CUDA kernels. Only "cuda" in real use; the kernel
# tests add "cpu" while the CPU emulation of the kernels stands in for the built extensions.
KERNEL_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
