"""What a spec can name: tasks, model families, observables and phenomena, as rows.

`scalesweep list [tasks|families|observables|phenomena]` prints these rows as
tables, and `scalesweep list --markdown` as the page `docs/zoo.md` (which a
test keeps equal to it). Everything is read from the registries themselves
(`zoo.TASKS`, `zoo.FAMILIES`, `observables.OBSERVABLES`) and from the
phenomenon catalog (`scalesweep/phenomena/*.yaml`, and a project's own `analysis/*.yaml`
in the working directory), so the list cannot drift from the code.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

KINDS = ("tasks", "families", "observables", "phenomena")


@dataclass(frozen=True)
class Entry:
    """One thing a spec can name: its parameters (`name = default: description`) and one line."""

    name: str
    parameters: list[str]
    description: str
    extra: dict[str, str]  # kind-specific columns (a family's knob, an observable's level, ...)


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.\s+(?=[A-Z`(])")


def first_sentence(text: str | None) -> str:
    """The first sentence of a docstring or description, on one line ("et al. 2022" does not end one)."""
    words = " ".join((text or "").split())
    end = _SENTENCE_END.search(words)
    return words[: end.start() + 1] if end else words


def parameters_of(model: type[BaseModel]) -> list[str]:
    """`name = default: description` for each field of a params model ("required" without a default)."""
    rows = []
    for name, field in model.model_fields.items():
        default = "required" if field.default is PydanticUndefined else _show(field.default)
        row = f"{name} = {default}"
        if field.description:
            row += f": {field.description}"
        rows.append(row)
    return rows


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def tasks() -> list[Entry]:
    from scalesweep.zoo import TASKS
    from scalesweep.zoo.base import load

    return [
        Entry(
            name,
            parameters_of(info.params_model),
            first_sentence(inspect.getdoc(load(info.generator))),
            {"known for": " ".join(info.known_for.split())},
        )
        for name, info in sorted(TASKS.items())
    ]


def families() -> list[Entry]:
    from scalesweep.zoo import FAMILIES
    from scalesweep.zoo.base import load

    rows = []
    for name, info in sorted(FAMILIES.items()):
        build = load(info.builder)
        built = _built_class(build, inspect.getmodule(build))
        doc = inspect.getdoc(built) if built is not None else inspect.getdoc(build)
        rows.append(Entry(name, parameters_of(info.params_model), first_sentence(doc), {"model_size is": info.knob}))
    return rows


def _built_class(build: Any, module: Any) -> type | None:
    """The nn.Module class a family's build function returns (its docstring describes the family)."""
    source = inspect.getsource(build)
    for name, value in vars(module).items():
        if inspect.isclass(value) and value.__module__ == module.__name__ and f"return {name}(" in source:
            return value
    return None


def observables() -> list[Entry]:
    from scalesweep.observables import OBSERVABLES

    rows = []
    for name, ob in OBSERVABLES.items():
        kind = " + ".join(k for k, fn in (("init", ob.at_init), ("step", ob.step), ("summary", ob.summary)) if fn)
        rows.append(
            Entry(name, [], ob.description, {"level": ob.level, "kind": kind, "columns": ", ".join(ob.columns)})
        )
    return rows


def phenomena() -> list[Entry]:
    from scalesweep.analysis.phenomena import list_phenomena, load_phenomenon

    rows = []
    for name in list_phenomena():
        ph = load_phenomenon(name)
        parameters = [f"{key} = {_show(value)}" for key, value in ph.params.items()]
        parameters += [f"presence = {ph.presence:g}", f"min_effect = {ph.min_effect:g}"]
        extra = {
            "strength": ph.strength,
            "more pronounced": ph.direction,
            "regimes": ", ".join(ph.regimes or {}) or "-",
        }
        rows.append(Entry(name, parameters, first_sentence(ph.description), extra))
    return rows


def entries(kind: str) -> list[Entry]:
    return {"tasks": tasks, "families": families, "observables": observables, "phenomena": phenomena}[kind]()


TITLES = {
    "tasks": "Tasks (`task.name`, `task.params`)",
    "families": "Model families (`model.family`, `model.params`; the width knob is `axes.model_size`)",
    "observables": "Observables (`observables:`)",
    "phenomena": "Phenomena (`phenomena:`; override with `{name: ..., params: {...}}`)",
}


def markdown() -> str:
    """The page docs/zoo.md: every kind, one table each."""
    lines = [
        "# The zoo: what a spec can name",
        "",
        "Generated by `scalesweep list --markdown > docs/zoo.md` from the registries "
        "(`scalesweep/zoo/`, `scalesweep/observables.py`) and the phenomenon catalog "
        "(`scalesweep/phenomena/*.yaml`; a project adds its own in `analysis/`); `tests/test_catalog.py` keeps it "
        "up to date. "
        "`scalesweep list tasks` (or `families`, `observables`, `phenomena`) prints the same in a terminal.",
    ]
    for kind in KINDS:
        rows = entries(kind)
        extra = list(rows[0].extra) if rows else []
        has_params = kind != "observables"
        header = ["name", *(["parameters (= default)"] if has_params else []), *extra, "description"]
        lines += ["", f"## {TITLES[kind]}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [f"`{row.name}`"]
            if has_params:
                cells.append("<br>".join(f"`{p.split(':')[0]}`{p[len(p.split(':')[0]) :]}" for p in row.parameters))
            cells += [_md(row.extra[key]) for key in extra]
            cells.append(_md(row.description))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")
