"""randlabels: what neural networks learn when trained with random labels.

A reproduction of Maennel et al. (NeurIPS 2020) as a library plus a Snakemake
workflow. The library is importable without Snakemake, e.g.::

    from randlabels.analysis.stats import misalignment, transfer_function
"""

__version__ = "0.1.0"
