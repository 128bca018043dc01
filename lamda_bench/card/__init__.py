"""What a cell would show on a named card: the CUDA caching allocator's model (``allocator``)."""
