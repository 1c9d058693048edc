"""Notebook parameters: papermill's semantics (its own injector and typing), our guards. No kernel
here: the integration tests (test_papermill.py) run the injected cell in a sandboxed kernel."""

from __future__ import annotations

import nbformat
import pytest
from papermill.cli import _resolve_type
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from sandbox_kernel import cli
from sandbox_kernel.parameters import ParameterError, collect, parameterize, resolve_type


def notebook(language="python", kernel="python3"):
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": kernel, "display_name": kernel, "language": language}
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata.tags = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), params, nbformat.v4.new_code_cell("print(x)")]
    return nb


def papermills(nb, params, tmp_path, **kw):
    """papermill's own injection: its reader, then its injector."""
    nbformat.write(nb, tmp_path / "pm.ipynb")
    return parameterize_notebook(load_notebook_node(str(tmp_path / "pm.ipynb")), params, **kw)


@pytest.mark.parametrize("value", ["True", "False", "None", "5", "-3", "1e3", "2.5", "nan", "inf", "abc", "", "0x10", "1_000"])
def test_p_values_are_typed_like_papermill(value):
    assert repr(resolve_type(value)) == repr(_resolve_type(value))


def test_sources_merge_in_papermill_order(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("a: 1\nb: from-file\nwhen: 2020-01-01\n")
    params = collect(files=[f], yamls=["b: from-yaml\nc: [1, 2]"], values=[("c", "3"), ("d", "True")], raws=[("d", "True")])
    assert params == {"a": 1, "b": "from-yaml", "c": 3, "d": "True", "when": "2020-01-01"}  # dates stay strings, as in papermill


def test_injected_cell_is_papermills_after_the_parameters_cell(tmp_path):
    params = {"x": 5, "name": "a \"quoted\" value", "xs": [1, 2.5, None], "d": {"k": True}}
    ours = parameterize(notebook(), params)
    theirs = papermills(notebook(), params, tmp_path)
    assert [c.source for c in ours.cells] == [c.source for c in theirs.cells]
    assert ours.cells[2].metadata == {"tags": ["injected-parameters"]}
    assert ours.metadata.papermill == {"parameters": params}
    assert "tags" not in ours.cells[3].metadata  # the notebook's cells are left as they were


def test_a_notebook_cannot_choose_the_translator(tmp_path):
    """A notebook claiming MATLAB gets papermill's MATLAB quoting ('"' doubled), which the Python
    kernel that really runs reads as another value. The cell is Python whatever it claims."""
    value = 'say "hi"'
    nb = parameterize(notebook(language="matlab", kernel="matlab"), {"v": value})
    assert nb.cells[2].source == "# Parameters\nv = \"say \\\"hi\\\"\"\n"
    scope: dict = {}
    exec(nb.cells[2].source, scope)
    assert scope["v"] == value
    matlab = papermills(notebook(language="matlab", kernel="matlab"), {"v": value}, tmp_path)
    exec(matlab.cells[2].source.replace("% Parameters", ""), scope)
    assert scope["v"] == "say hi"  # what we avoid: the notebook changed the value


def test_an_input_injected_cell_and_papermill_metadata_are_replaced():
    nb = notebook()
    forged = nbformat.v4.new_code_cell("import os  # planted")
    forged.metadata.tags = ["injected-parameters"]
    forged.metadata.sandbox = {"reported_by": "provisioner"}
    nb.cells.insert(2, forged)
    nb.metadata.papermill = {"parameters": {"x": "forged"}, "input_path": "/etc/shadow"}
    nb = parameterize(nb, {"x": 5})
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and injected[0].source == "# Parameters\nx = 5\n" and "sandbox" not in injected[0].metadata
    assert nb.metadata.papermill == {"parameters": {"x": 5}}


@pytest.mark.parametrize("name", ["x; import os", "1x", "class", "a b", ""])
def test_names_must_be_identifiers(name):
    with pytest.raises(ParameterError, match="must be a Python identifier"):
        collect(values=[(name, "1")])


def test_yaml_keys_must_be_identifiers_too():
    with pytest.raises(ParameterError, match="must be a Python identifier"):
        collect(yamls=["{1: a}"])


@pytest.mark.parametrize("args, message", [
    (["-p", "x"], "-p/--parameters: expected 2 arguments"),
    (["-f", "missing.yaml"], "-f missing.yaml: cannot read it"),
    (["-f", "bad.yaml"], "-f bad.yaml: not valid YAML"),
    (["-y", "[1, 2]"], "-y (#1): must be a YAML mapping"),
    (["-y", "a: [1"], "-y (#1): not valid YAML"),
    (["-p", "x y", "1"], "parameter name 'x y': must be a Python identifier"),
])
def test_bad_parameters_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    nb = tmp_path / "nb.ipynb"
    nbformat.write(notebook(), nb)
    assert cli.main(["run", str(nb), "--output-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()  # nothing ran
