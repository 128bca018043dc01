"""What is trained: workloads and their configs, targets, quantized base, precision, fake tensors, data-parallel layout."""
