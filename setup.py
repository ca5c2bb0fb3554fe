from setuptools import find_packages, setup

setup(
    name="lossgrid",
    version="0.1.0",
    description="Fast, filter-normalized loss landscapes of neural networks (batch evaluation engine)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lossgrid", "lossgrid.*"]),
    package_data={"lossgrid": ["kernels/*.cu", "schemas/*.json"]},
    install_requires=[
        "torch>=2.4,<3",
        "numpy>=1.24",
        "h5py>=3.8",
        "click>=8.1",
        "onnx>=1.16",
        # ONNX Runtime comes from an extra: its CPU (`onnxruntime`) and CUDA (`onnxruntime-gpu`) builds
        # install into one package directory, so only one of them may be installed (see extras below)
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "safetensors>=0.4",
        # interactive HTML (lossgrid plot --out x.html, lossgrid evolve --html) in a plain install
        "plotly>=5.18",
    ],
    extras_require={
        # the CPU build of ONNX Runtime: the onnxruntime backend on CPUs, `lossgrid export`'s parity check
        "cpu": ["onnxruntime>=1.18"],
        # CuPy and onnxruntime-gpu (which runs on the CPU too) for CUDA 12; gpu-cuda13 for CUDA 13 drivers and
        # toolkits. Never combine with "cpu": both ONNX Runtime builds would share one package directory.
        "gpu": ["cupy-cuda12x>=13", "onnxruntime-gpu>=1.18"],
        "gpu-cuda13": ["cupy-cuda13x>=14", "onnxruntime-gpu>=1.31"],
        "tensorrt": ["tensorrt>=10"],
        "export": ["onnxscript>=0.1"],
        # plotly is a core dependency now; the extra stays so that `pip install "lossgrid[html]"` still works
        "html": [],
        "vtk": ["scipy>=1.9"],  # our own VTK writer; scipy interpolates upsampled grids (NumPy otherwise)
        "tensorboard": ["tensorboard>=2.14"],
        # benchmarks/hessian_pyhessian.py compares lossgrid hessian with PyHessian 0.1 at its defaults
        "bench": ["pyhessian==0.1"],
        # the browser tests and `make screenshots` drive a Chromium program (Debian: apt-get install chromium)
        # through Playwright's Python package; Playwright's own browser download is never used
        "dev": ["onnxruntime>=1.18", "pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100", "ruff>=0.5",
                "onnxscript>=0.1", "vtk>=9.2", "scipy>=1.9", "tensorboard>=2.14", "playwright>=1.40"],
    },
    entry_points={"console_scripts": ["lossgrid=lossgrid.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
