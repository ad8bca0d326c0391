"""`python -m scalesweep` is the same as the `scalesweep` command."""

from scalesweep.cli import app

app()
