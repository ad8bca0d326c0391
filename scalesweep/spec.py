"""Sweep specs: what a researcher writes in `sweeps/*.yaml`.

A spec is loaded into pydantic models so that every mistake is caught before
anything runs, and reported as one paragraph naming the file, the field, what
was given and what would be valid. Unknown fields are refused (with a "did you
mean") because a misspelt `wieght_decay` silently ignored would waste a
night of compute.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scalesweep import safe_yaml, sidecar
from scalesweep.errors import UserError, did_you_mean, unknown_text
from scalesweep.sidecar import RefinePoint
from scalesweep.uris import local_path

MAX_RUNS_WITHOUT_CONFIRM = 10_000
MAX_RUNS = 10**9
MAX_SIZE = 10**9  # a width or a number of examples; beyond this no run fits in memory
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
USER_OBSERVABLE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


class StrictModel(BaseModel):
    """Base for spec sections: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(StrictModel):
    name: str = Field(description="a task of the zoo, e.g. modular_arithmetic")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_task(self) -> TaskSpec:
        from scalesweep.zoo import TASKS

        if self.name not in TASKS:
            raise ValueError(unknown_text("task", self.name, TASKS))
        _validate_params(TASKS[self.name].params_model, self.params, f'task "{self.name}"')
        return self


class ModelSpec(StrictModel):
    family: str = Field(description="a model family of the zoo, e.g. mlp")
    params: dict[str, Any] = Field(default_factory=dict)
    parametrization: Literal["sp", "mup"] = "sp"

    @model_validator(mode="after")
    def _known_family(self) -> ModelSpec:
        from scalesweep.zoo import FAMILIES

        if self.family not in FAMILIES:
            raise ValueError(unknown_text("model family", self.family, FAMILIES))
        _validate_params(FAMILIES[self.family].params_model, self.params, f'model family "{self.family}"')
        return self


class AxesSpec(StrictModel):
    """The scale knobs. `model_size` is the family's width knob."""

    model_size: list[int] = Field(min_length=1)
    data_size: list[int] = Field(default_factory=list, description="required by the grid design; isoflop sets it")
    seeds: int | list[int] = 1

    @field_validator("model_size", "data_size")
    @classmethod
    def _positive_distinct(cls, values: list[int]) -> list[int]:
        if any(not 0 < v <= MAX_SIZE for v in values):
            raise ValueError(f"sizes must be positive integers up to {MAX_SIZE:,}, got {values}")
        if len(set(values)) != len(values):
            raise ValueError(f"sizes must be distinct, got {values}")
        return sorted(values)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: int | list[int]) -> int | list[int]:
        if isinstance(seeds, int) and not 1 <= seeds <= 1000:
            raise ValueError(f"a seed count must be between 1 and 1000, got {seeds}")
        if isinstance(seeds, list) and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"a seed list must be non-empty and distinct, got {seeds}")
        if isinstance(seeds, list) and any(not 0 <= s <= MAX_SEED for s in seeds):
            raise ValueError(f"seeds must be between 0 and {MAX_SEED}, got {seeds}")
        return seeds

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class TrainingSpec(StrictModel):
    steps: int = Field(default=1000, ge=1, le=10_000_000)
    batch_size: int = Field(default=512, ge=1, le=1_000_000)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0, le=100)
    weight_decay: float = Field(default=0.0, ge=0, le=1000)
    eval_every: int = Field(default=50, ge=1)
    fit_threshold: float = Field(default=0.9, gt=0, le=1)
    fail_at_step: int | None = Field(
        default=None, ge=0, description="testing aid: raise at this step to exercise failure handling"
    )


def printable_name(name: str, what: str) -> str:
    """`name`, refused when blank or holding control characters or line breaks (it is printed
    in messages, reports and run names; shown escaped in the refusal)."""
    if not name.isprintable() or not name.strip():
        raise ValueError(f"{what} must be printable text without control characters or line breaks, got {name!r}")
    return name


class PhenomenonRef(StrictModel):
    name: str
    params: dict[str, float] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        return printable_name(name, "a phenomenon name")


class ResourceRule(StrictModel):
    """Runs with model_size >= min_model_size get these resources instead of the defaults."""

    min_model_size: int = Field(ge=1)
    cpus_per_run: float | None = Field(default=None, gt=0, le=1024)
    gpus_per_run: float | None = Field(default=None, ge=0, le=64)


class ResourcesSpec(StrictModel):
    """What one Ray task (one seed ensemble) asks for; fractional GPUs pack small runs on one card."""

    cpus_per_run: float = Field(default=1.0, gt=0, le=1024)
    gpus_per_run: float = Field(default=0.0, ge=0, le=64)
    max_concurrent: int | None = Field(default=None, ge=1)
    larger: list[ResourceRule] = Field(default_factory=list)

    def for_model_size(self, model_size: int) -> tuple[float, float]:
        """(cpus, gpus) for a run of this width: the last matching rule by threshold wins."""
        cpus, gpus = self.cpus_per_run, self.gpus_per_run
        for rule in sorted(self.larger, key=lambda r: r.min_model_size):
            if model_size >= rule.min_model_size:
                cpus = rule.cpus_per_run if rule.cpus_per_run is not None else cpus
                gpus = rule.gpus_per_run if rule.gpus_per_run is not None else gpus
        return cpus, gpus


class DesignSpec(StrictModel):
    """How scale points are chosen. `grid` (default): every model_size x data_size.
    `isoflop` (Hoffmann et al. 2022, approach 2): per compute budget C in FLOPs, every
    model size trained on C / (6 n_params) examples; `scalesweep/plan/designs.py` says how."""

    kind: Literal["grid", "isoflop"] = "grid"
    budgets: list[float] = Field(default_factory=list, description="compute budgets C in FLOPs (isoflop only)")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, budgets: list[float]) -> list[float]:
        if any(not math.isfinite(b) or b <= 0 for b in budgets) or len(set(budgets)) != len(budgets):
            raise ValueError(f"budgets must be distinct positive FLOP counts, e.g. [1e9, 4e9], got {budgets}")
        return sorted(budgets)

    @model_validator(mode="after")
    def _budgets_match_kind(self) -> DesignSpec:
        if self.kind == "isoflop" and not self.budgets:
            raise ValueError("an isoflop design needs budgets: a list of compute budgets in FLOPs, e.g. [1e9, 4e9]")
        if self.kind == "grid" and self.budgets:
            raise ValueError('budgets belong to kind "isoflop"; a grid design takes its sizes from axes')
        return self


class TrackingSpec(StrictModel):
    uri: str | None = None
    experiment: str | None = None
    curves_figure: bool = True  # a curves.png per child run (about 0.1 s of the driver's time per run)

    @field_validator("uri")
    @classmethod
    def _local_store_inside(cls, uri: str | None) -> str | None:
        if uri is not None:
            local = local_path(uri)
            if local is not None:
                check_inside_workdir(local)
        return uri


class CheckpointSpec(StrictModel):
    """When a long run saves a checkpoint to resume from after its driver or worker dies.

    Not part of the run key (it is not in `RunConfig`): a checkpoint changes where a
    killed run restarts, never what it computes. Checkpoints are taken at evaluation
    steps only, so that the rows up to one are all recorded with it."""

    enabled: bool = True
    after_seconds: float = Field(
        default=60.0, ge=0, le=10**7, description="first checkpoint once a run has trained this long"
    )
    every_seconds: float = Field(default=60.0, ge=0, le=10**7, description="then one at most this often")
    keep: bool = Field(default=False, description="keep the checkpoints of finished runs (else deleted)")


# Cheap enough to run on every sweep; each is NaN where the model lacks what it reads
# (induction_score needs attention, features_per_dim the toy model of superposition).
DEFAULT_OBSERVABLES = [
    "loss",
    "accuracy",
    "fit_steps",
    "weight_norm",
    "grad_norm",
    "loss_spikes",
    "activation_rms",
    "effective_rank",
    "dead_fraction",
    "features_per_dim",
    "induction_score",
]


class SweepSpec(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    task: TaskSpec
    model: ModelSpec
    axes: AxesSpec
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    training: TrainingSpec = TrainingSpec()
    observables: list[str] = Field(default_factory=lambda: list(DEFAULT_OBSERVABLES))
    phenomena: list[str | PhenomenonRef] = Field(default_factory=lambda: ["generalization_gap"])
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    max_retries: int = Field(default=1, ge=0, le=20)
    checkpoint: CheckpointSpec = CheckpointSpec()
    design: DesignSpec = DesignSpec()
    refinements: list[RefinePoint] = Field(default_factory=list, description="runs added by `scalesweep refine`")

    @model_validator(mode="after")
    def _axes_fit_design(self) -> SweepSpec:
        if self.design.kind == "grid" and not self.axes.data_size:
            raise ValueError("axes.data_size is required (a list of training-set sizes) unless design.kind is isoflop")
        if self.design.kind == "isoflop" and self.axes.data_size:
            raise ValueError(
                "an isoflop design sets each run's data size from its budget; remove axes.data_size "
                "(see docs/designs.md)"
            )
        self._data_sizes_fit_task()
        return self

    def _data_sizes_fit_task(self) -> None:
        """A data size the task cannot provide would fail every such run: refuse it now.
        (Skipped when the grid varies the task's parameters: each point has its own limit.)"""
        from scalesweep.zoo import TASKS

        task = TASKS[self.task.name]
        if task.max_data_size is None or not self.axes.data_size or any(k.startswith("task.") for k in self.grid):
            return
        limit = task.max_data_size(task.params_model.model_validate(self.task.params))
        if max(self.axes.data_size) > limit:
            raise ValueError(
                f"data_size {max(self.axes.data_size)} is more than task {self.task.name} with these params "
                f"can provide (at most {limit}); lower axes.data_size or enlarge the task (e.g. p or n_bits)"
            )

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        return printable_name(name, "a sweep name")

    @field_validator("phenomena")
    @classmethod
    def _printable_phenomena(cls, refs: list[str | PhenomenonRef]) -> list[str | PhenomenonRef]:
        for ref in refs:
            if isinstance(ref, str):
                printable_name(ref, "a phenomenon name")
        return refs

    @field_validator("observables")
    @classmethod
    def _known_observables(cls, names: list[str]) -> list[str]:
        """Names only: a user observable (module:function) is imported by the worker, never here."""
        from scalesweep.observables import OBSERVABLES

        for name in names:
            if ":" in name and not USER_OBSERVABLE.fullmatch(name):
                raise ValueError(f'"{name}" is not of the form module:function (e.g. mypackage.metrics:margin)')
            if ":" not in name and name not in OBSERVABLES:
                raise ValueError(unknown_text("observable", name, OBSERVABLES))
        return names

    @field_validator("phenomena")
    @classmethod
    def _phenomenon_files_inside(cls, refs: list[str | PhenomenonRef]) -> list[str | PhenomenonRef]:
        for ref in refs:
            name = ref if isinstance(ref, str) else ref.name
            if name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name:
                check_inside_workdir(name)
        return refs

    @field_validator("grid")
    @classmethod
    def _grid_paths(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        short_names = [path.split(".")[-1] for path in grid]
        for path, values in grid.items():
            if not values:
                raise ValueError(f'grid dimension "{path}" has no values')
            if short_names.count(path.split(".")[-1]) > 1:
                raise ValueError(f'grid dimensions share the short name "{path.split(".")[-1]}"')
            _check_grid_path(path)
        return grid

    @model_validator(mode="after")
    def _grid_values_valid(self) -> SweepSpec:
        """Each grid value must be valid where it goes, or the planner would fail on it later."""
        for path, values in self.grid.items():
            for value in values:
                _check_grid_value(self, path, value)
        return self

    @property
    def n_runs(self) -> int:
        """How many runs `plan` would expand to, counted without expanding."""
        n_grid = math.prod(len(v) for v in self.grid.values())
        n_data = len(self.axes.data_size) or len(self.design.budgets)  # an isoflop design: one profile per budget
        return n_grid * len(self.axes.model_size) * n_data * len(self.axes.seed_list) + len(self.refinements)

    @property
    def phenomenon_refs(self) -> list[PhenomenonRef]:
        return [PhenomenonRef(name=p) if isinstance(p, str) else p for p in self.phenomena]

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"scalesweep/{self.name}"


def _check_grid_path(path: str) -> None:
    """A grid dimension is a dotted path into the spec, e.g. training.weight_decay."""
    if path.startswith(("task.params.", "model.params.")) and path.count(".") == 2:
        return
    if path == "model.parametrization":
        return
    head, _, field = path.partition(".")
    if head == "training" and field in TrainingSpec.model_fields:
        return
    valid = [f"training.{f}" for f in TrainingSpec.model_fields]
    valid += ["task.params.<name>", "model.params.<name>", "model.parametrization"]
    raise ValueError(
        f'grid dimension "{path}" is not a sweepable field{did_you_mean(path, valid)}; valid: {", ".join(valid)}'
    )


def _check_grid_value(spec: SweepSpec, path: str, value: Any) -> None:
    head, _, leaf = path.rpartition(".")
    if path == "model.parametrization":
        try:
            ModelSpec.model_validate({**spec.model.model_dump(), "parametrization": value})
        except ValidationError as err:
            raise ValueError(f'grid dimension "{path}": {err.errors()[0]["msg"]} (given: {_short(value)})') from None
        return
    if head == "training":
        try:
            TrainingSpec.model_validate({**spec.training.model_dump(), leaf: value})
        except ValidationError as err:
            msg = err.errors()[0]["msg"]
            raise ValueError(f'grid dimension "{path}": {msg} (given: {_short(value)})') from None
        return
    from scalesweep.zoo import FAMILIES, TASKS

    if head == "task.params":
        model, params, owner = TASKS[spec.task.name].params_model, spec.task.params, f'task "{spec.task.name}"'
    else:
        model, params, owner = (
            FAMILIES[spec.model.family].params_model,
            spec.model.params,
            f'family "{spec.model.family}"',
        )
    _validate_params(model, {**params, leaf: value}, f'grid dimension "{path}": {owner}')


def check_inside_workdir(path: str) -> None:
    """A relative path in a spec must stay inside the working directory; absolute paths are explicit."""
    if Path(path).is_absolute():
        return
    cwd = Path.cwd().resolve()
    if not (cwd / path).resolve().is_relative_to(cwd):
        raise ValueError(
            f'the relative path "{path}" leads outside the working directory {cwd}; '
            f"give an absolute path if you mean a file elsewhere"
        )


def _validate_params(params_model: type[BaseModel], params: dict[str, Any], owner: str) -> None:
    """Check a task's or family's own parameters, re-raised as one plain message."""
    try:
        params_model.model_validate(params)
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            valid = list(params_model.model_fields)
            raise ValueError(
                f'{owner} has no parameter "{name}"{did_you_mean(name, valid)}; its parameters: {", ".join(valid)}'
            ) from None
        raise ValueError(f'{owner} parameter "{name}": {first["msg"]} (given: {_short(first.get("input"))})') from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; every problem becomes one UserError paragraph."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such spec file. Specs live in sweeps/, e.g. sweeps/quickstart.yaml.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the spec ({err}).") from None
    spec = parse_spec(text, source=str(path))
    added = sidecar.read_refinements(sidecar.refine_path(path))  # runs `scalesweep refine` added (sidecar.py)
    return spec.model_copy(update={"refinements": [*spec.refinements, *added]}) if added else spec


def _one_line_error(err: Exception) -> str:
    return " ".join(str(err).split())[:300]


def parse_spec(text: str, source: str = "<spec>") -> SweepSpec:
    """Validate spec text (YAML). Only a safe loader is used (a spec cannot run code), after a
    check that anchors and aliases do not expand it past what a spec holds (see safe_yaml)."""
    data = safe_yaml.load(text, source)
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: a spec is a YAML mapping with at least name, task, model and axes; got {type(data).__name__}."
        )
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise UserError(describe_validation_error(err, source)) from None
    except (RecursionError, OverflowError) as err:
        raise UserError(
            f"{source}: the spec holds a value too large or too deep to use ({type(err).__name__})."
        ) from None
    _check_size(spec, source)
    from scalesweep.checks import check_spec  # the names it holds, against the registries and catalog

    check_spec(spec, source)
    return spec


def _check_size(spec: SweepSpec, source: str) -> None:
    if spec.n_runs > MAX_RUNS:
        raise UserError(
            f"{source}: the grid has {spec.n_runs:,} runs, more than {MAX_RUNS:,}; shrink the axes or grid."
        )


def describe_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's errors into one readable paragraph (first three problems)."""
    problems = [_describe_one(e) for e in err.errors()[:3]]
    more = f" ({len(err.errors()) - 3} more problems not shown.)" if len(err.errors()) > 3 else ""
    return _visible(f"{source}: " + " ".join(problems) + more)


def _describe_one(error: dict[str, Any]) -> str:
    loc = [_visible(str(part)) for part in error["loc"]]
    field = ".".join(loc) or "(top level)"
    given = error.get("input")
    if error["type"] == "extra_forbidden":
        valid = _valid_fields(error["loc"][:-1])
        hint = did_you_mean(loc[-1], valid)
        return f'unknown field "{field}"{hint}; valid fields here: {", ".join(valid)}.'
    if error["type"] == "missing":
        return f'missing required field "{field}".'
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across fields: its message names them
        return f"{message}."
    if "(given: " in message:  # a nested check already showed the offending value
        return f'field "{field}": {message}.'
    return f'field "{field}": {message} (given: {_short(given)}).'


def _valid_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at a location of the spec, for "did you mean"."""
    model: Any = SweepSpec
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _visible(text: str) -> str:
    """A field name as typed, with control characters (a newline in a key) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
