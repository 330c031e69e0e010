"""How findings name modules and parameters: one form everywhere.

`Finding.where` holds the path exactly as `model.named_modules()` / `named_parameters()`
give it (`features.2`, `0.weight`): machine-usable, `model.get_submodule(where)` finds it.
What a person reads (the message, the terminal, the page) gives the module's type with the
path: `features.2` (BatchNorm1d), `0.weight` (Linear). The types travel in
`report.meta["module_types"]` (path -> class name), so a report loaded from JSON shows
the same names. The pre-flight checks write paths as `model.<path>` (the expression a fix
refers to); both forms resolve here.
"""
from __future__ import annotations

import re

MAX_TYPES = 2000  # modules kept in meta: a giant model's report stays small (unnamed ones show bare)


def module_types(model) -> dict[str, str]:
    """path -> module class name, for every named module of `model` ("" is the model itself)."""
    types = {}
    for name, module in model.named_modules():
        if len(types) >= MAX_TYPES:
            break
        types[name] = type(module).__name__
    return types


def type_of(path: str, types: dict) -> str | None:
    """The class name of the module `path` names, or of the module holding parameter `path`."""
    if not isinstance(path, str) or not types:
        return None
    bare = path[len("model."):] if path.startswith("model.") else "" if path == "model" else path
    if bare in types:
        return types[bare]
    owner = bare.rsplit(".", 1)[0] if "." in bare else None  # a parameter: its module's type
    return types.get(owner) if owner is not None else None


def label_where(path, types: dict) -> str:
    """`features.2 (BatchNorm1d)`; the path unchanged when its type is unknown."""
    kind = type_of(path, types)
    return f"{path} ({kind})" if kind else str(path)


_SPAN = re.compile(r"`([^`\s]+)`(?! \()")


def typed_message(text: str, types: dict) -> str:
    """Each `path` code span that names a module or parameter gets its type after it:
    "after `3`" -> "after `3` (ReLU)". Idempotent: a span already followed by "(" is left."""
    if not types or "`" not in text:
        return text

    def typed(match: re.Match) -> str:
        kind = type_of(match.group(1), types)
        return f"{match.group(0)} ({kind})" if kind else match.group(0)
    return _SPAN.sub(typed, text)


def name_modules(findings, types: dict) -> None:
    """Give every module a finding's message names its type (in place)."""
    for f in findings:
        f.message = typed_message(f.message, types)
