"""The FLOPs convention shared by planning (`plan/compute.py`) and analysis (`analysis/isoflop.py`,
`analysis/fits.py`): training costs 6 FLOPs per parameter per token (forward 2 + backward 4
multiply-adds; Kaplan et al. 2020), so C ≈ 6 · N · D. Imports nothing: the analysis layer may
import it without importing anything above it.
"""

FLOPS_PER_PARAM_TOKEN = 6  # forward (2) + backward (4) multiply-adds per parameter per token
FLOPS_PER_PARAM_EXAMPLE = FLOPS_PER_PARAM_TOKEN  # an example of a task with one target per example
