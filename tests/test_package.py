"""The package's public surface: importing it is cheap, and every exported name resolves."""

from __future__ import annotations

import subprocess
import sys

import facesearch


def test_import_loads_no_heavy_library():
    code = "import facesearch, facesearch.cli, sys; print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_exported_name_resolves_to_its_stage_module():
    from facesearch import _EXPORTS

    for name in facesearch.__all__:
        obj = getattr(facesearch, name)
        assert getattr(obj, "__name__", None) == name, name
        assert obj.__module__.startswith(_EXPORTS[name]), (name, obj.__module__)  # that module, or one it re-exports
