"""Initializations that fine-tuning starts from: the variants, and how each is made
(pre-trained weights, Gaussian samples of them, layer-wise construction from data)."""
