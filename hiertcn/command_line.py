"""The parts that the `hiertcn` and `hiertcn-stream` entry points share.

Both build their parser from command modules that each expose `register(subparsers)`, accept
`-v/--verbose` before and after every subcommand name, and set up logging in one format. This
module imports neither torch nor numpy, so the serving side (`stream`) may import it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence

# Prefix of the namespace attributes that count `-v` at each parser level.
_VERBOSE_PREFIX = "verbose_"

# The pid distinguishes the lines of the worker processes of a `hiertcn-stream run` pool.
LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


# Namespace attribute of the texts of the float flags that `StoreFloat` parsed, by flag.
FLAG_TEXTS = "flag_texts"
# The magnitudes of the nonzero numbers that a 64-bit float represents: the smallest subnormal
# number, and a bound just below the largest finite number, 1.7976931348623157e308.
FLOAT_RANGE = "4.9e-324 to 1.79e308"

# Largest seed: torch.manual_seed takes at most 2**64 - 1, and a signed 64-bit value also fits
# every checkpoint and JSON reader.
MAX_SEED = 2**63 - 1


class RecordGiven(argparse.Action):
    """Store a flag's value, or `const` when `nargs=0`, and add the flag to the tuple in the
    namespace attribute `given_attribute`, so that a command can tell a typed default from an
    unset flag. Subclasses set `given_attribute`."""

    given_attribute: str

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        given_flags = getattr(namespace, self.given_attribute, ())
        setattr(namespace, self.given_attribute, (*given_flags, self.option_strings[0]))


def format_number(value: float) -> str:
    """Format a flag's number for a message as a user types it: `0` for 0.0, `0.05` as is,
    and `1e-7` where `repr` writes `1e-07`."""
    if not isinstance(value, float):
        return str(value)
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def format_flag_number(value: float, flag: str, texts: Mapping[str, str]) -> str:
    """Format the number of `flag` for a message: the text that the user typed if `texts` (flag
    to text, see `StoreFloat`) contains one that still parses to `value`, else
    `format_number(value)`."""
    text = texts.get(flag)
    if text is None:
        return format_number(value)
    try:
        typed = float(text)
    except ValueError:
        typed = None  # a text that is not a number is never shown
    return text if typed == value else format_number(value)


def flag_texts(args: argparse.Namespace) -> Mapping[str, str]:
    """Return the texts of the float flags that `StoreFloat` recorded in `args`, by flag."""
    return getattr(args, FLAG_TEXTS, {})


def parse_float_flag(text: str) -> float:
    """Parse the text of a float flag. Raise ValueError naming the text when it is not a number,
    or when it is a nonzero number that a 64-bit float cannot represent.

    `float` reads such a number as 0.0 (`1e-400`) or inf (`1e400`), which the flag's own range
    check would then report as a value that the user never typed. The words inf and nan pass,
    so that the flag's own check judges them.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is invalid: use a number such as 0.5") from None
    written = text.strip()
    mantissa = written.lower().partition("e")[0]
    underflow = value == 0.0 and any(digit in mantissa for digit in "123456789")
    overflow = math.isinf(value) and "inf" not in written.lower()
    if underflow or overflow:
        raise ValueError(f"{written} is invalid: {beyond_float_fix(value)}")
    return value


def beyond_float_fix(value: float) -> str:
    """Return the fix for a number text that a 64-bit float reads as `value`, 0 or inf."""
    return (
        f"a 64-bit float reads it as {format_number(value)}, so write a number whose magnitude "
        f"is from {FLOAT_RANGE}"
    )


def float_type(text: str) -> float:
    """Parse a float flag's text with `parse_float_flag`, as an argparse `type` whose error
    message argparse prints."""
    try:
        return parse_float_flag(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def read_float_flag(action: argparse.Action, namespace: argparse.Namespace, text: str) -> float:
    """Parse the text of the float flag of `action` with `parse_float_flag`, and record the text
    in `namespace` under `FLAG_TEXTS`. An invalid text raises the `argparse.ArgumentError`
    that argparse prints with the usage."""
    try:
        value = parse_float_flag(text)
    except ValueError as error:
        raise argparse.ArgumentError(action, str(error)) from None
    texts = {**getattr(namespace, FLAG_TEXTS, {}), action.option_strings[0]: text.strip()}
    setattr(namespace, FLAG_TEXTS, texts)
    return value


class StoreFloat(argparse.Action):
    """Store the number of a float flag, parsed by `read_float_flag`, which also records the text
    as typed, so that messages can quote it (`format_flag_number`).

    NOTE: only `hiertcn train`, `hiertcn experiment` and `hiertcn-stream produce` use it. The
    float flags of the data options (--train-fraction, --valid-fraction), `hiertcn export`,
    `hiertcn-stream run`, `replay` and `state evict`, and ops/demo/run.py reject 1e-400 too
    (`float_type`, `stream.config.parse_float`), but their messages show the parsed number, not
    the text as typed.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, read_float_flag(self, namespace, str(values)))


def seed(text: str) -> int:
    """Parse a `--seed` style value: an integer from 0 to `MAX_SEED`, as numpy and torch take."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: use an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"{value} is invalid: use an integer from 0 to {MAX_SEED} (2**63 - 1)"
        )
    return value


def build_parser(
    prog: str,
    description: str,
    command_modules: Sequence[str],
    verbose_help: Callable[[str], str],
) -> argparse.ArgumentParser:
    """Build a parser with the subcommands of `command_modules` and `-v` at every level.

    A module in `command_modules` that is not installed adds no subcommand. `verbose_help`
    returns the help of `-v` for a subcommand name, or for "" at the top level.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_verbose_option(parser, depth=0, help_text=verbose_help(""))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in command_modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(subparsers)
    _add_verbose_to_subcommands(parser, 1, verbose_help)
    return parser


def add_verbose_option(parser: argparse.ArgumentParser, depth: int, help_text: str) -> None:
    """Add `-v/--verbose` to one parser level, counted in the attribute `verbose_<depth>`.

    argparse copies a subcommand's namespace over its parent's, so each level needs its own
    attribute, or a later level's count would replace an earlier one. `verbosity` adds them up.
    """
    parser.add_argument(
        "-v",
        "--verbose",
        dest=f"{_VERBOSE_PREFIX}{depth}",
        action="count",
        default=0,
        help=help_text,
    )


def _add_verbose_to_subcommands(
    parser: argparse.ArgumentParser, depth: int, verbose_help: Callable[[str], str]
) -> None:
    """Add `-v` to every subcommand below `parser`, so it may follow any subcommand name."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        # An alias maps to the same parser object, which must get the option only once.
        children = {id(child): (name, child) for name, child in action.choices.items()}
        for name, child in children.values():
            add_verbose_option(child, depth, verbose_help(name))
            _add_verbose_to_subcommands(child, depth + 1, verbose_help)


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse `argv`, and exit 2 with the usage of the given subcommand for an unknown flag.

    argparse hands a subcommand's unknown arguments up to the top-level parser, whose error
    would show the top-level usage instead.
    """
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def chosen_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """Return the parser of the innermost subcommand named in `args`, or `parser` itself."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        name = getattr(args, action.dest, None) if action.dest != argparse.SUPPRESS else None
        if name in action.choices:
            return chosen_parser(action.choices[name], args)
    return parser


def verbosity(args: argparse.Namespace) -> int:
    """Return the number of `-v` flags given before and after the subcommand names."""
    return sum(value for name, value in vars(args).items() if name.startswith(_VERBOSE_PREFIX))


def configure_logging(verbosity: int) -> None:
    """Set up the logging of an entry point: INFO, DEBUG from one `-v`, WARNING below 0."""
    level = logging.WARNING if verbosity < 0 else (logging.INFO, logging.DEBUG)[min(verbosity, 1)]
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
