"""Shared pytest setup.

oneDNN must be told to stay on AVX2 kernels before MindSpore is imported: on AVX-512 CPUs its
convolutions otherwise fall onto a slow reference kernel (see docs/performance.md).
Idle OpenMP threads must sleep rather than spin: tests that run MindSpore and torch in one
process otherwise slow each other down up to 8x (measured in docs/parity.md, Findings).
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
