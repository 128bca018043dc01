"""A named card's terms: its rates (``rates``), achievable fractions and fixed costs
(``efficiency``), and the step-time model over a traced step's ops (``step_time``)."""
