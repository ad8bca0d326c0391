"""What a scale axis needs before a verdict along it can be decided (DESIGN.md, classifier rule 1).

At least `MIN_POINTS` distinct scale values spanning at least `MIN_SPAN` times: fewer
points cannot tell a trend from a bend, a shorter span cannot tell a trend from noise.
Shared by the classifier and by `plan`'s warnings, which read it without importing
the classifier (pandas, scipy).
"""

MIN_POINTS = 3
MIN_SPAN = 4.0
