"""What the CLI writes to a terminal: control characters escaped, and a reader that went away tolerated."""
from __future__ import annotations

import os
import re
import sys


def silence_stdout() -> None:
    """Point stdout at /dev/null: its reader went away, and Python would raise again when it
    flushes stdout at exit ("Exception ignored ... BrokenPipeError")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# Control characters other than newline and tab, C1 included: a file name holding ESC sequences
# would otherwise drive the operator's terminal (retitle it, rewrite lines, OSC 52 clipboard writes).
_TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str, is_json: bool = False) -> str:
    """text with control characters shown as \\xNN for a human, or as \\u00NN in JSON (the same
    string to a JSON reader: json.dumps escapes C0 controls itself, but not C1 ones)."""
    escape = "\\u{:04x}" if is_json else "\\x{:02x}"
    return _TERMINAL_CONTROLS.sub(lambda m: escape.format(ord(m.group())), text)


def print_stdout(text: str) -> None:
    """Print to stdout. A reader that stops early (`ffleet run job.json | head`) is not a failure of
    the command: the rest of the text is dropped and the command's own exit code stands."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
