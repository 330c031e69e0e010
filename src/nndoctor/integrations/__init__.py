"""Adapters that bring the one watcher (`watcher.Doctor`) to where training already runs:
an unmodified script (`script`), Lightning, the Hugging Face Trainer, TensorBoard and
torch.distributed. Each is a thin layer that decides when the doctor's hooks fire."""
