"""Small networks train fastest on one thread, and one thread is immune to a busy machine."""
import torch

torch.set_num_threads(1)
