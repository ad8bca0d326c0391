"""The refine sidecar: the runs `scalesweep refine` added to a spec, read and written here.

`sweeps/x.yaml` -> `sweeps/x.refine.yaml`. `spec.load_spec` merges its points into the spec's
`refinements`, so every command that loads the spec plans them; `refine.record` appends to it.
Why a file beside the spec and not a tag in MLflow: `plan` and `validate` work without a
tracking store, and the record can be reviewed and committed with the spec. Standard library,
pydantic and YAML only: `load_spec` (and so `validate`) imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scalesweep import safe_yaml
from scalesweep.errors import UserError


class RefinePoint(BaseModel):
    """One run added by `scalesweep refine` (see refine.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_size: int = Field(ge=1)
    data_size: int | None = Field(default=None, ge=1, description="grid design")
    budget: float | None = Field(default=None, gt=0, description="isoflop design")
    seed: int
    grid: dict[str, Any] = Field(default_factory=dict, description="short grid name -> value of the slice")
    reason: str = ""


def refine_path(spec_path: str | Path) -> Path:
    """sweeps/x.yaml -> sweeps/x.refine.yaml."""
    return Path(spec_path).with_suffix(".refine.yaml")


def read_refinements(path: Path) -> list[RefinePoint]:
    """The points of a refine sidecar ([] when there is none)."""
    if not path.is_file():
        return []
    data = safe_yaml.load(path.read_text(encoding="utf-8"), str(path)) or {}
    try:
        return [RefinePoint.model_validate(p) for p in (data.get("refinements") or [])]
    except (ValidationError, AttributeError) as err:
        raise UserError(
            f"{path}: not a refine record ({' '.join(str(err).split())[:300]}). It is written by "
            f"`scalesweep refine`; delete it to drop the added runs from the plan (they stay in MLflow)."
        ) from None


def append_refinements(spec_path: Path, points: list[RefinePoint]) -> Path:
    """Add points to the spec's sidecar (made if absent); its path."""
    path = refine_path(spec_path)
    every = read_refinements(path) + list(points)
    header = (
        f"# Runs added by `scalesweep refine` to {Path(spec_path).name}; every command that loads the spec\n"
        f"# plans them too. Delete this file to drop them from the plan (their runs stay in MLflow).\n"
    )
    body = yaml.safe_dump({"refinements": [p.model_dump(exclude_none=True) for p in every]}, sort_keys=False)
    path.write_text(header + body, encoding="utf-8")
    return path
