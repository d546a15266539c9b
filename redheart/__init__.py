"""redheart: the training system for the Red Heart multi-task text model."""

__version__ = "0.1.0"
