"""What is measured: covariances and alignment, the statistics file, activation probes,
and the tables and headline numbers built from them."""
