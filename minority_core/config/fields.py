"""Every knob is declared once, with its help text: the CLI's options and the flat keyword form of
the Python API are generated from the declarations, so adding a knob is one edit.

A knob is a field of a config section (a frozen dataclass such as `MinorityGuidance`, or a
pydantic model such as `OutputConfig`) whose metadata holds its help text and, where the flat
name differs from the field name, its flat name (`scale` of the guidance is `guidance_scale`,
`--guidance-scale` on the command line).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

MISSING = dataclasses.MISSING


def knob(default: Any = MISSING, *, help: str, flag: str | None = None, cli: str | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help text; `flag` is its flat name where it differs from the
    field's, `cli` its command-line option where that differs from the flat name (a repeatable
    option is singular: `--prompt A --prompt B` fills `prompts`)."""
    metadata = {"help": help, "flag": flag, "cli": cli}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Knob:
    """One option as the edges see it: its flat name, where it lives, its type and its help."""

    flat: str  # keyword of the flat API
    path: tuple[str, ...]  # section path, e.g. ("sampler", "guidance", "scale")
    annotation: Any
    default: Any
    help: str
    cli: str  # the command-line option, without the leading '--'

    @property
    def choices(self) -> tuple[str, ...] | None:
        literal = _literal(self.annotation)
        return tuple(str(v) for v in literal) if literal else None

    @property
    def base_type(self) -> Any:
        """int, float, str or bool, stripped of Optional/tuple; None for a mapping or other shape."""
        inner = _strip_optional(self.annotation)
        if typing.get_origin(inner) is tuple:
            inner = typing.get_args(inner)[0]
        if _literal(inner) or str in typing.get_args(inner):  # a union with text (steps: 250 or "ddim50") is read as text
            return str
        return inner if inner in (int, float, str, bool) else None

    @property
    def repeated(self) -> bool:
        """A tuple of values (class labels, prompts): a repeatable option on the command line."""
        return typing.get_origin(_strip_optional(self.annotation)) is tuple


def dataclass_knobs(cls: type, path: tuple[str, ...]) -> list[Knob]:
    """The knobs of a frozen dataclass section (fields without help text are not knobs)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        default = f.default if f.default is not MISSING else None
        flat = f.metadata.get("flag") or f.name
        out.append(Knob(flat, (*path, f.name), hints[f.name], default, f.metadata["help"], f.metadata.get("cli") or flat.replace("_", "-")))
    return out


def model_knobs(cls: Any, path: tuple[str, ...]) -> list[Knob]:
    """The knobs of a pydantic section: every field with a description."""
    out = []
    for name, info in cls.model_fields.items():
        if not info.description:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flat = extra.get("flag") or name
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        out.append(Knob(flat, (*path, name), info.annotation, default, info.description, extra.get("cli") or flat.replace("_", "-")))
    return out


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _literal(annotation: Any) -> tuple | None:
    inner = _strip_optional(annotation)
    return typing.get_args(inner) if typing.get_origin(inner) is typing.Literal else None
