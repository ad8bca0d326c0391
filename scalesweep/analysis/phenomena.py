"""The phenomenon catalog: declarative definitions in YAML files.

The built-in catalog ships inside the package (`scalesweep/phenomena/*.yaml`, package
data, so a plain `pip install` has it). A project adds its own phenomena, or
replaces a built-in one by its name, in an `analysis/` folder of the working
directory (beside its `sweeps/`): that folder is searched first.

A phenomenon is what a researcher looks for in every run: a *strength*
expression over the run's summaries, which direction is "more pronounced",
a *presence* threshold, the smallest change that matters (`min_effect`), and
optionally categorical *regimes* (e.g. the grokking phases of Liu et al.
2022, "Towards Understanding Grokking") and an *alternative* continuous
metric (Schaeffer et al. 2023, "Are Emergent Abilities of Large Language
Models a Mirage?": a discontinuous metric can fake emergence, so the
classifier re-checks the verdict on a continuous one).

The YAML holds no code: expressions go through `expressions.py`, which only
knows arithmetic, comparisons and a few numpy functions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scalesweep import safe_yaml
from scalesweep.analysis import expressions
from scalesweep.analysis import series as step_series
from scalesweep.errors import UserError, did_you_mean

if TYPE_CHECKING:  # pandas is imported where a table is read: checking a spec needs none
    import pandas as pd

OTHER = "other"


class Phenomenon(BaseModel):
    """One phenomenon: how strong it is in a run, and when it counts as present."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    strength: str
    direction: Literal["higher", "lower"] = "higher"
    presence: float = 0.0
    min_effect: float = Field(0.0, ge=0.0)
    signed: bool = False
    regimes: dict[str, str] | None = None
    alternative: str | None = None
    becomes: str | None = None  # the phenomenon this one may turn into at larger scale (a declared A -> B pair)
    params: dict[str, float] = Field(default_factory=dict)
    # "run": the strength is one value per run (summaries, step functions), classified along the scale
    # axes; "step": it is evaluated at every logged step of each run's step series and classified along
    # the training step within each scale point (`analysis/steps.py`, docs/classifier.md).
    over: Literal["run", "step"] = "run"

    @field_validator("strength", "alternative")
    @classmethod
    def _parse_expr(cls, value: str | None) -> str | None:
        if value is not None:
            expressions.parse(value)
        return value

    @field_validator("regimes")
    @classmethod
    def _parse_regimes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for cond in (value or {}).values():
            expressions.parse(cond)
        return value

    @model_validator(mode="after")
    def _over_steps(self) -> Phenomenon:
        """A per-step strength is itself a step-series expression: a step function inside it would
        reduce a series to a run's single value, and regimes (a property of a run, tested with runs as
        independent units) have no meaning for the repeated steps of one run."""
        if self.over != "step":
            return self
        if self.regimes:
            raise ValueError(
                "regimes are a property of a run and cannot be classified over steps; drop `regimes` or `over: step`"
            )
        for expr in filter(None, (self.strength, self.alternative)):
            if step_series.uses_step_function(expr):
                raise ValueError(
                    f'with over: step, "{expr}" is evaluated at every logged step, so it cannot use a step '
                    f"function ({', '.join(step_series.STEP_FUNCTIONS)}); write the series itself, e.g. test_acc"
                )
        return self

    def is_present(self, strength: np.ndarray | float) -> np.ndarray:
        """Present when strength is beyond `presence` in `direction` (NaN: not)."""
        s = np.asarray(strength, dtype=float)
        with np.errstate(invalid="ignore"):
            return s > self.presence if self.direction == "higher" else s < self.presence

    def expressions_used(self) -> list[str]:
        """Every expression of the phenomenon, for up-front name checks."""
        exprs = [self.strength, *(self.regimes or {}).values()]
        exprs += [self.alternative] if self.alternative else []
        # a per-step strength reads the step series: said as the argument of a step function, so that
        # `validate` checks its names are step series and the report reads those series from MLflow
        return [step_series.as_series_argument(e) for e in exprs] if self.over == "step" else exprs


PROJECT_DIR = "analysis"  # a project's own phenomena, in the working directory


def builtin_catalog_dir() -> Path:
    """The catalog shipped with the package: `scalesweep/phenomena/`."""
    return Path(__file__).resolve().parents[1] / "phenomena"


def catalog_dir() -> Path:
    """The base catalog: `$SCALESWEEP_CATALOG`, else the built-in `scalesweep/phenomena/`."""
    env = os.environ.get("SCALESWEEP_CATALOG")
    if env:
        return Path(env)
    return builtin_catalog_dir()


def search_dirs() -> list[Path]:
    """Where a phenomenon name is looked up, first match wins: the project's `analysis/`
    (in the working directory, where a spec's relative paths resolve too), then the catalog."""
    return [Path.cwd() / PROJECT_DIR, catalog_dir()]


def _dirs(dirs: Iterable[str | Path] | None) -> list[Path]:
    return [Path(d) for d in dirs] if dirs is not None else search_dirs()


def _files(search_dirs: Iterable[str | Path] | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in _dirs(search_dirs):
        if folder.is_dir():
            for path in sorted(folder.glob("*.y*ml")):
                found.setdefault(path.stem, path)
    return found


def list_phenomena(search_dirs: Iterable[str | Path] | None = None) -> list[str]:
    """Names of the phenomena in the catalog (file stems), sorted."""
    return sorted(_files(search_dirs))


def _read_yaml(path: Path) -> dict[str, Any]:
    """A safe loader only, with the spec's limits on aliases and depth (see safe_yaml)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read phenomenon file {path}: {err}") from None
    data = safe_yaml.load(text, f"phenomenon file {path}")
    if not isinstance(data, dict):
        raise UserError(f"phenomenon file {path} must hold a mapping of fields.")
    return data


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any], path: Path) -> None:
    fields = set(Phenomenon.model_fields)
    params = dict(data.get("params") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "params":
            params.update(value)
        elif key in fields:
            data[key] = value
        elif key in params:
            params[key] = value
        else:
            valid = sorted(fields | set(params))
            raise UserError(
                f'cannot override "{key}" of phenomenon {path.stem}{did_you_mean(key, valid)}; '
                f"valid fields and parameters are: {', '.join(valid)}."
            )
    data["params"] = params


def _validation_error(path: Path, err: ValidationError) -> UserError:
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(file)"
        parts.append(f'field "{field}": {e["msg"]}')
    valid = ", ".join(Phenomenon.model_fields)
    return UserError(f"phenomenon file {path}: {'; '.join(parts)}. Valid fields are: {valid}.")


def load_phenomenon(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    search_dirs: Iterable[str | Path] | None = None,
) -> Phenomenon:
    """Load a phenomenon by catalog name (or a path to a YAML file).

    `overrides` replaces fields (`presence`, `min_effect`, ...) or named
    `params` (e.g. `{"gap": 500}`); `None` values are ignored so CLI flags
    can be passed straight through.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):  # a file, not a catalog name
        if not path.is_file():
            raise UserError(
                f"phenomenon file {name} does not exist (a relative path starts from the working directory "
                f"{Path.cwd()}); give an existing YAML file, or the name of a catalog phenomenon."
            )
    else:
        files = _files(search_dirs)
        if name not in files:
            raise unknown_phenomenon(name, files, _dirs(search_dirs))
        path = files[name]
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    _apply_overrides(data, overrides or {}, path)
    try:
        return Phenomenon(**data)
    except ValidationError as err:
        raise _validation_error(path, err) from None
    except UserError as err:
        raise UserError(f"phenomenon file {path}: {err}") from None


def unknown_phenomenon(name: str, known: Iterable[str], dirs: list[Path]) -> UserError:
    """'unknown phenomenon "x" (did you mean ...); valid phenomena are: ...', saying where it looked."""
    valid = sorted(known)
    where = " and ".join(str(d) for d in dirs)
    listing = f"valid phenomena are: {', '.join(valid)}" if valid else "no phenomenon file was found"
    return UserError(
        f'unknown phenomenon "{name}"{did_you_mean(name, valid)}; {listing} (looked in {where}). '
        f"Add your own as a YAML file in ./{PROJECT_DIR}/, or give a path to one."
    )


def evaluate(runs: pd.DataFrame, ph: Phenomenon) -> pd.DataFrame:
    """Add `strength`, `present`, `regime` (if any) and `alternative` (if any).

    Every name an expression uses must be a column (or a param); otherwise a
    `UserError` names the phenomenon and the columns that exist.
    """
    for expr in ph.expressions_used():
        try:
            expressions.check_names(expr, runs.columns, ph.params)
        except UserError as err:
            raise UserError(f'phenomenon "{ph.name}": {err}') from None
    out = runs.copy()
    strength = expressions.evaluate(ph.strength, runs, ph.params).astype(float)
    out["strength"] = strength
    out["present"] = ph.is_present(strength)
    if ph.regimes:
        out["regime"] = _regimes(runs, ph)
    if ph.alternative:
        out["alternative"] = expressions.evaluate(ph.alternative, runs, ph.params).astype(float)
    return out


def _regimes(runs: pd.DataFrame, ph: Phenomenon) -> np.ndarray:
    """First matching regime wins; rows matching none are labelled "other"."""
    labels = np.full(len(runs), OTHER, dtype=object)
    unset = np.ones(len(runs), dtype=bool)
    for label, cond in (ph.regimes or {}).items():
        hit = expressions.truth(expressions.evaluate(cond, runs, ph.params)) & unset
        labels[hit] = label
        unset &= ~hit
    return labels
