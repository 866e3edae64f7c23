"""Training on the device: the trainers and their one loop, resumable jobs, progress
output, checkpoints and GPU binding."""
