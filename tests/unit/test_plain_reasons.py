"""Reasons are plain text; a notebook's language is read from its metadata."""

import nbformat
import pytest

from sandbox_kernel.executor import _last_line, plain_text
from sandbox_kernel.intake import language_problem, notebook_language


def test_plain_text_strips_csi_osc_and_control_characters():
    assert plain_text("\x1b[31;1mValueError\x1b[0m: \x1b]0;title\x07x\ry\x00") == "ValueError: xy"
    assert plain_text("a\nb\tc") == "a\nb\tc"
    assert _last_line("Traceback\n\x1b[31mKeyError\x1b[39m: 'k'") == "KeyError: 'k'"


@pytest.mark.parametrize("metadata, language", [
    ({}, None),
    ({"kernelspec": {"name": "python3", "language": "python"}}, "python"),
    ({"kernelspec": {"name": "ir", "language": "R"}}, "r"),
    ({"language_info": {"name": "julia"}}, "julia"),
    ({"kernelspec": "junk", "language_info": {"name": 3}}, None),
])
def test_notebook_language(metadata, language):
    nb = nbformat.from_dict({"metadata": metadata, "cells": []})
    assert notebook_language(nb) == language
    assert (language_problem(nb) is None) == (language in (None, "python"))
