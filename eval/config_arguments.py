"""Command-line options generated from a config dataclass, so the jobs share one source
for every HyperAttention setting, its default and its help."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .common import JobError

ConfigT = TypeVar("ConfigT")


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _option_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type from a parse function: its ValueError's message becomes the error
    line (argparse would print only the function's name)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            expected = {int: "an integer", float: "a number"}.get(parse)
            message = f"expected {expected}; got {text!r}" if expected else str(err)
            raise argparse.ArgumentTypeError(message) from None

    return convert


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_cls: type,
    *,
    defaults: Mapping[str, Any] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """One option per field of `config_cls`: type, choices and help from the field's
    metadata, the default from the dataclass unless `defaults` sets a job's own."""
    defaults = dict(defaults or {})
    skipped = set(skip)
    for field in dataclasses.fields(config_cls):
        if field.name in skipped:
            continue
        default = defaults.get(field.name, field.default)
        meta = field.metadata
        parse = meta.get("parse") or (str if isinstance(default, str) else int)
        options: dict[str, Any] = {"type": _option_type(parse), "default": default}
        if "choices" in meta:
            options["choices"] = list(meta["choices"])
        help_text = meta.get("help", "")
        if help_text and default is not None:
            help_text += " (default: %(default)s"
            if default != field.default:  # a job's own default: say the library's too
                help_text += f"; HyperAttentionConfig's: {field.default}"
            help_text += ")"
        options["help"] = help_text or None
        parser.add_argument(option_name(field.name), **options)


def config_from_arguments(args: argparse.Namespace, config_cls: type[ConfigT]) -> ConfigT:
    """The config the options describe; an invalid value is a JobError naming the field."""
    names = [f.name for f in dataclasses.fields(config_cls)]
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:
        raise JobError(str(err)) from err
