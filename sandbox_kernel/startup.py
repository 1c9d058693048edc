"""Keeping the runner's start-up short: imports it would pay for and never use."""

from __future__ import annotations

import sys

# jsonschema imports, when it loads, every optional package its format checkers can use.
# nbformat validates notebooks without format checks (a plain Draft4Validator, or
# fastjsonschema), so on the runner's path these are pure start-up cost: rfc3987_syntax alone
# builds a grammar for about 1.7 s, isoduration pulls in arrow. Hidden from the import system,
# jsonschema just leaves those formats unchecked (it catches the ImportError).
UNUSED_FORMAT_CHECKER_MODULES = ("rfc3987_syntax", "isoduration")


def skip_unused_format_checkers() -> None:
    """Call before anything imports jsonschema (later it has no effect: they are loaded)."""
    if "jsonschema" in sys.modules:
        return
    for name in UNUSED_FORMAT_CHECKER_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "import fails"
