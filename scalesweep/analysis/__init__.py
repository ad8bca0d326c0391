"""Analysis layer: phenomena, trend statistics, the classifier and scaling-law fits.

- `expressions`: a safe expression language over a runs table's columns.
- `phenomena`: the phenomenon catalog (`scalesweep/phenomena/*.yaml`, a project's `analysis/`) and its evaluation.
- `classify`: expansion / shrinkage / transformation / persistent / absent /
  inconclusive verdicts per (phenomenon, axis, slice).
- `fits`: saturating power laws, Chinchilla L(N, D), broken neural scaling laws.
- `commands`: the functions behind `scalesweep classify` and `scalesweep fit`.
"""
