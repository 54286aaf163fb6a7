"""Cross-framework parity: ``tkfac_ms`` against the ``reference_torch`` oracle.

* :mod:`parity.onnx_weights`: one ONNX file gives both frameworks the same weights;
* :mod:`parity.compare`: runs both optimizers step by step, per-layer max relative errors;
* :mod:`parity.tolerances`: the one table of tolerances (used by the CLI and the tests);
* ``python -m parity`` (or ``scripts/run_parity.sh``): the table as text, JSON and Markdown.

The modules import MindSpore and torch; :mod:`parity.compare` sets the environment they need
(``ONEDNN_MAX_CPU_ISA``, ``OMP_WAIT_POLICY``) when it is imported first.
"""
