"""GPU support: the host's NVIDIA driver libraries in host_injections, the CUDA stack, GPU checks."""
