"""Throughput and scaling benchmarks of randlabels, each a ratio against a baseline.

Run ``make bench`` (CPU, small sizes, minutes) or ``make bench-gpu`` (CUDA, full
sizes), or ``python -m benchmarks --help``. Every figure is measured side by side in
one run, baseline and library alternating, and the median of repeated trials is
kept. Results go to ``benchmarks/results/DEVICE.json`` and to the DEVICE section of
``docs/PERFORMANCE.md`` (the other device's section is kept as it was).

- :mod:`benchmarks.engine`: the training engine against a plain Dataset/DataLoader
  loop, images/s and ratio (cnn2, vgg16, resnet18); FLOPs per image and, on a GPU,
  the fraction of its peak bf16 FLOP/s.
- :mod:`benchmarks.packing`: R replicas of a small cnn2 in one process
  (:mod:`randlabels.training.packed`) against R separate sequential runs.
- :mod:`benchmarks.covariance`: the library's streaming patch covariance against
  numpy im2col and XᵀX.
- :mod:`benchmarks.workflow`: ``snakemake -n`` time against the number of jobs.
"""
