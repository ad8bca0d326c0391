"""The toy world: tasks (data) and model families with a size knob.

Two registries (`base.py`), filled by the declarations of the built-ins:
`task_params.py` and `family_params.py` say what a spec may set and what it
costs, without torch; `tasks.py` makes a task's tensors and `models.py` builds a
family's torch module, imported only where a run trains. A task turns (params,
data_size, seed) into a `data.Dataset`; a family turns (params, width, data
shape, parametrization) into a torch module. A task or family of your own
registers itself with `register_task` / `register_family`.
"""

from scalesweep.zoo import family_params, task_params  # noqa: F401  (importing them fills the registries)
from scalesweep.zoo.base import FAMILIES, TASKS, DataShape, FamilyInfo, TaskInfo

__all__ = ["FAMILIES", "TASKS", "DataShape", "FamilyInfo", "TaskInfo"]
