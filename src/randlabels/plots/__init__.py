"""Figures of the reproduction, one module per figure.

Each module (``misalignment``, ``transfer_function``, ``learning_curves``,
``transfer_summary``, ``eigenfilters``, and for the paper's named targets
``depth_transfer``, ``transfer_map``, ``specialization``, ``kernel_size``) exposes a single ``plot(...)`` that reads
pandas tables or numpy arrays and writes one PNG. Keeping one figure per module lets
the workflow re-render only the figure whose code changed; the shared look lives in
:mod:`randlabels.plots.style`. Nothing is imported here so that importing the
package stays cheap and never pulls in training code.
"""
