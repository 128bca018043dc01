"""LaMDA and LaMDA++: the layer, its inits, its freezing schedule, spectral rank allocation."""
