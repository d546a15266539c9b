"""The report's sections, one file each; registry.py lists them in the order the report shows them."""
