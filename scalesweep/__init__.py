"""scalesweep: cross-scale scaling studies of small neural networks.

Ray schedules the runs, MLflow records them, and the analysis layer says, for
each phenomenon, whether it expands, shrinks or transforms as scale grows.
"""

__version__ = "0.1.0"
