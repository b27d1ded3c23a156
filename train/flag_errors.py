"""Command-line mistakes as one line naming the flag and the fix, with exit status 2.

absl and ml_collections report a misspelt `--config.<field>`, an unknown variant, a missing
config file or a value of the wrong type as a traceback or a FATAL block of many lines (a
misspelt field as a chain of three exceptions). `parse_flags` is absl's flag parser with those
turned into one `error: ...` line; a run then starts nothing and writes nothing.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from absl import flags

USAGE_EXIT = 2


def parse_flags(argv: list[str]) -> list[str]:
    """`flags.FLAGS(argv)`, exiting with status 2 and one line on any mistake in a flag."""
    try:
        rest = flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # --config.<field> the config does not have
        fail(unknown_field_message(argv, e))
    except flags.Error as e:
        fail(flag_error_message(str(e)))
    if "config" in flags.FLAGS:
        check_config_loaded("config")
    return rest


def check_config_loaded(name: str) -> None:
    """A config file that does not load (a missing file among others) is not a parsing error to
    ml_collections: the flag holds a stand-in that raises when first read. Read it here."""
    config = flags.FLAGS[name].value
    try:
        if config is not None:
            config.to_dict()
    except Exception as e:
        given = flags.FLAGS[name].serialize()
        if "No such file or directory" in str(e):
            fail(f"{given}: no such config file; pass configs/<name>.py:<variant> (configs/ lists them)")
        fail(f"{given}: the config file does not load: {str(e).strip().splitlines()[-1]}")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def unknown_field_message(argv: list[str], error: Exception) -> str:
    """The first `--config.KEY` whose field does not exist, with ml_collections' suggestion."""
    text = str(error).encode().decode("unicode_escape")
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    missing = suggestion.group(2) if suggestion else text.strip("'\"").splitlines()[0].strip("'\"")
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and missing in a), "--config")
    hint = f"; did you mean {suggestion.group(1)}?" if suggestion else ""
    return f"{flag}: the config has no field {missing!r}{hint} (docs/running.md lists the fields)"


def flag_error_message(text: str) -> str:
    """absl's FATAL text reduced to the flag and the reason: for a config file that failed to
    load, the last line of its traceback (the exception's own message)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    head = re.sub(r"^flag ", "", lines[0])
    if head.endswith(": Error whilst parsing config file:"):
        reason = re.sub(r"^[A-Za-z.]*Error: ", "", lines[-1])
        return f"{head.removesuffix(': Error whilst parsing config file:')}: {reason}"
    return "; ".join([head, *lines[1:]])
