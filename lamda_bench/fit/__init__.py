"""`fit`: the planner, its CLI and output, and the budgets it plans against."""
