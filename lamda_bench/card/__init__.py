"""A named card's terms (docs/card-memory.md, docs/step-time.md): the card table (``cards``), the
CUDA caching allocator's model (``allocator``, ``allocator_settings``) replayed over a run
(``memory``, ``render``, ``hidden``), and the step-time model over a traced step's ops
(``rates``, ``efficiency``, ``step_time``, ``validation``)."""
