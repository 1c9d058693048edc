"""The runner skips jsonschema's unused format-checker imports, and notebooks are still
validated: in a fresh interpreter, since this one may have imported jsonschema already."""

import subprocess
import sys

CHECK = r'''
import sys
from sandbox_kernel.startup import UNUSED_FORMAT_CHECKER_MODULES, skip_unused_format_checkers
skip_unused_format_checkers()
import nbformat
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
nbformat.validate(nb)
nb.cells[0]["cell_type"] = "bogus"
try:
    nbformat.validate(nb)
except nbformat.ValidationError:
    print("invalid rejected")
print("loaded:", [m for m in UNUSED_FORMAT_CHECKER_MODULES if sys.modules.get(m) is not None])
'''


def test_notebooks_are_validated_without_the_unused_format_checkers():
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["invalid rejected", "loaded: []"]


def test_skipping_is_a_no_op_once_jsonschema_is_loaded():
    proc = subprocess.run([sys.executable, "-c", "import jsonschema, sys\nfrom sandbox_kernel.startup import "
                           "skip_unused_format_checkers as s\ns()\nprint(sys.modules.get('isoduration', 'absent'))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != "None"
