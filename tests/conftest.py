"""Shared test settings: small thread counts keep the 2-core CI machine responsive."""

import torch

torch.set_num_threads(2)
