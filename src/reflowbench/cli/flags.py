"""Generate argparse flags from dataclass fields, and read them back as overrides.

A field ``calib_batches: int = 50  # help text`` becomes ``--calib-batches INT`` with that help;
``bool`` fields become ``--flag/--no-flag``; ``List[...]`` fields take comma-separated values.
Flags default to "not given" so that presets and config files are only overridden explicitly.
"""

from __future__ import annotations

import argparse
import inspect
import re
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable, Dict, Tuple

from reflowbench.utils.known_names import refuse_unknown


def _field_comments(cls: type) -> Dict[str, str]:
    """``# help`` comments of a dataclass's fields, inherited fields included (a subclass's own comment wins)."""
    comments: Dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        comments.update({m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, re.MULTILINE)})
    return comments


def _unwrap_optional(hint: Any) -> Tuple[Any, bool]:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _parser_for(hint: Any, flag: str) -> Tuple[Callable[[str], Any], str]:
    base, _ = _unwrap_optional(hint)
    if typing.get_origin(base) in (list, typing.List):
        (item,) = typing.get_args(base)
        item_parse, item_name = _parser_for(item, flag)

        def parse_list(text: str) -> list:
            try:
                return [item_parse(part.strip()) for part in text.split(",") if part.strip()]
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise argparse.ArgumentTypeError(f"{flag} takes comma-separated {item_name} values, got {text!r}") from exc

        return parse_list, f"{item_name},..."
    if base in (int, float, str):
        return base, base.__name__.upper()
    return str, "VALUE"


def _default_text(f) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if value is None:  # unset: the field's own comment says what happens then
        return ""
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f" (default: {value})"


def add_dataclass_arguments(parser: argparse._ActionsContainer, cls: type, dest_prefix: str, flag_prefix: str = "") -> None:
    """Add one flag per field of dataclass ``cls``; values land in ``namespace.<dest_prefix><field>``."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for f in fields(cls):
        flag = "--" + (flag_prefix + f.name).replace("_", "-")
        help_text = (comments.get(f.name, "") + _default_text(f)).replace("%", "%%")  # argparse formats help with %: a plugin's "1 %" must not crash --help
        dest = dest_prefix + f.name
        base, _ = _unwrap_optional(hints[f.name])
        if base is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parse, metavar = _parser_for(hints[f.name], flag)
            parser.add_argument(flag, dest=dest, type=parse, metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def given(namespace: argparse.Namespace, dest_prefix: str) -> Dict[str, Any]:
    """The flags of one dataclass that were given explicitly, as {field: value}."""
    return {k[len(dest_prefix) :]: v for k, v in vars(namespace).items() if k.startswith(dest_prefix)}


def build_dataclass(cls: type, overrides: Dict[str, Any], source: str) -> Any:
    refuse_unknown(overrides, (f.name for f in fields(cls)), source)
    return cls(**overrides)
