"""The toy world: tasks (data) and model families with a size knob.

Two registries, filled by the modules below. A task turns (params, data_size,
seed) into a `Dataset`; a family turns (params, width, data shape,
parametrization) into a torch module. New tasks or families register
themselves with `register_task` / `register_family`.
"""

from scalesweep.zoo import models, tasks  # noqa: F401  (importing them registers the families and tasks)
from scalesweep.zoo.base import FAMILIES, TASKS, Dataset, DataShape, FamilyInfo, TaskInfo

__all__ = ["FAMILIES", "TASKS", "DataShape", "Dataset", "FamilyInfo", "TaskInfo"]
