"""Planning: a SweepSpec in, the runs it asks for out, each a RunConfig with its run key.

runconfig.py  RunConfig (one run, fully resolved) and its run key
designs.py    how a grid slice's points are chosen: grid, IsoFLOP; refine's added points
expand.py     plan(spec): grid slices x the design's points, then refinements
compute.py    n_params (closed form per family), tokens per example, FLOPs
groups.py     which runs train together as one vectorised model (group_by_stack)
"""

from scalesweep.plan.expand import plan, refined_run
from scalesweep.plan.groups import group_by_stack
from scalesweep.plan.runconfig import RunConfig, group_by_ensemble, stable_hash

__all__ = ["RunConfig", "group_by_ensemble", "group_by_stack", "plan", "refined_run", "stable_hash"]
