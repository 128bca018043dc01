"""One cell, no suite file: ``lamda-bench estimate`` (``cli``), its readable answer (``output``)
and the Python API ``lamda_bench.estimate`` (``api``)."""
