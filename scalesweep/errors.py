"""User-facing errors, and the wording helpers every module shares ("did you mean", an
exception's first line, a name safe as a folder).

Anything the user can fix (a bad spec, an unknown name, an unreachable server,
a missing file) is raised as a `UserError`. The CLI prints its message as one
paragraph and exits with code 2: a researcher should never have to read a
traceback to learn that they misspelt a field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by input the user can fix; the CLI exits with code 2."""

    exit_code = 2


def did_you_mean(given: str, valid: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest valid name, or ''."""
    matches = difflib.get_close_matches(str(given), list(valid), n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def unknown_text(kind: str, given: str, valid: Iterable[str]) -> str:
    """The standard words for a name that is not in a registry: what was given, the closest
    valid name, and every valid one (the spec's field errors and the registries' lookups)."""
    valid = sorted(valid)
    return f'unknown {kind} "{given}"{did_you_mean(given, valid)}; valid: {", ".join(valid)}'


def unknown_name(kind: str, given: str, valid: Iterable[str]) -> UserError:
    """`unknown_text` as the error to raise."""
    return UserError(unknown_text(kind, given, valid) + ".")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message: enough to say what failed, in one paragraph."""
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def safe_name(name: str, keep: str = "-_.") -> str:
    """A name safe as one path component or HTML id: letters, digits and `keep`; all else `_`
    (a sweep's artifact, report and record folders; a report's figure files and anchors)."""
    return "".join(c if c.isalnum() or c in keep else "_" for c in str(name))
