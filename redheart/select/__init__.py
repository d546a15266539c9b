"""Choosing the model: sweet spots per module group, parameter crossover and its candidates, the final model."""
