"""Reading YAML that a user wrote, without trusting it.

`yaml.safe_load` already refuses tags such as `!!python/object/apply:os.system`,
so a spec cannot run code. It does not refuse a "billion laughs" document:
nine anchors, each a list of nine aliases of the previous one, is 400 bytes of
text that safe_load shares by reference, but that validation, `repr` in an
error message or `json.dumps` in the planner would walk as 9**9 values. So the
document's parse events are counted first, alias by alias, and a document that
would expand to more than `MAX_VALUES` values (or nest deeper than
`MAX_DEPTH`, or refer to itself) is refused before anything is built.

The depth limit is scalesweep's own, whatever PyYAML does: since 6.0.4 libyaml refuses
deep flow nesting itself ("exceeded maximum nesting depth"), and its scanner reads all of
a run of brackets before the first event, so it refuses before the count below sees
anything. A document libyaml refuses is then counted again with the pure-Python parser
(no such limit), so a deep document gets the same message with any PyYAML.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from scalesweep.errors import UserError

MAX_CHARS = 1_000_000
MAX_VALUES = 100_000
MAX_DEPTH = 64
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def load(text: str, source: str) -> Any:
    """Parse `text` with a safe loader after checking what it would expand to; errors are UserErrors."""
    if len(text) > MAX_CHARS:
        raise UserError(f"{source}: the file is larger than {MAX_CHARS:,} characters; this is a short YAML file.")
    try:
        check_expansion(text, source)
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (C or Python SafeLoader)
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not valid YAML ({' '.join(str(err).split())}).") from None
    except RecursionError:
        raise UserError(f"{source}: the YAML nests too deeply to be read.") from None


def check_expansion(text: str, source: str) -> None:
    """Refuse documents that expand (through aliases) past MAX_VALUES values, nest past
    MAX_DEPTH, or hold an alias to an anchor that is still open (a recursive value)."""
    try:
        _count_events(yaml.parse(text, Loader=_LOADER), source)
    except yaml.YAMLError:
        if _LOADER is yaml.SafeLoader:
            raise
        # libyaml's own refusal (its nesting limit, or plain bad YAML): the pure-Python parser
        # decides whether one of scalesweep's limits comes first; if not, libyaml's error stands.
        _count_events(yaml.parse(text, Loader=yaml.SafeLoader), source)
        raise


def _count_events(events: Iterable[yaml.Event], source: str) -> None:
    sizes: dict[str, int] = {}  # anchor -> number of values it expands to
    stack: list[list[Any]] = []  # per open collection: [anchor, values so far]
    total = 0
    for event in events:
        if isinstance(event, _OPEN):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise UserError(
                    f"{source}: the YAML nests deeper than {MAX_DEPTH} levels; a spec is a few levels deep."
                )
            continue
        if isinstance(event, yaml.AliasEvent):
            size = _alias_size(event.anchor, sizes, stack, source)
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, _CLOSE):
            anchor, size = stack.pop()
            if anchor:
                sizes[anchor] = size
        else:
            continue
        if stack:
            stack[-1][1] += size
        else:
            total += size
        if total > MAX_VALUES or (stack and stack[-1][1] > MAX_VALUES):
            raise UserError(
                f"{source}: the YAML expands to more than {MAX_VALUES:,} values through its anchors and aliases "
                f"(a 'billion laughs' document?); write the values out, or use fewer aliases."
            )


def _alias_size(anchor: str, sizes: dict[str, int], stack: list[list[Any]], source: str) -> int:
    if any(open_anchor == anchor for open_anchor, _ in stack):
        raise UserError(f'{source}: the alias "*{anchor}" refers to a value that contains it (a recursive value).')
    return sizes.get(anchor, 1)  # an undefined anchor is left to the loader's own error
