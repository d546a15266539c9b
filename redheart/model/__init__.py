"""The Red Heart model: its modules, their module groups, the losses and the parameter budgets they are sized to."""
