"""What the Snakemake workflow builds for a config: the validated config, the plan of
files and settings, the paper's named targets, code dependencies and cost."""
