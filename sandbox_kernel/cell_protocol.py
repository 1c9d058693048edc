"""What the kernel side and the supervisor side of the cell service share, kept free of heavy
imports: the kernel loads it at every start."""

from __future__ import annotations

SOCKET_NAME = "cells.sock"
SOCKET_ENV = "SANDBOX_KERNEL_CELL_SOCKET"

# Cell options -> policy fields, so an error names what the author typed.
OPTION_FIELDS = {
    "--network": "network.mode", "--allow": "network.allow", "--memory": "resources.memory_bytes",
    "--cpu": "resources.cpu_seconds", "--timeout": "resources.wall_seconds",
    "--max-output": "resources.max_output_bytes", "--processes": "resources.max_processes",
    "--fs": "filesystem.mode",
}
FIELD_OPTIONS = {v: k for k, v in OPTION_FIELDS.items()}


def option_problems(error, override: dict) -> list[list[str]]:
    """(option, message) pairs for a PolicyError: each field named as the option that set it."""
    allow_given = bool(override.get("network", {}).get("allow"))

    def option(field: str) -> str:
        field = field.split("[")[0]
        if field == "network.mode" and allow_given:
            return "--allow"
        return FIELD_OPTIONS.get(field, field)

    return [[option(f), m] for f, m in error.problems]
