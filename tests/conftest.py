"""Shared pytest setup.

oneDNN must be told to stay on AVX2 kernels before MindSpore is imported: on AVX-512 CPUs its
convolutions otherwise fall onto a slow reference kernel (see docs/performance.md).
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")
