"""``dftnet study``: structured MLPs in a GPT at equal compute budgets: the plan of cells, their
training, step costs, FLOPs, the compute frontier and the report."""
