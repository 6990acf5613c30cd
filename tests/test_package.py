"""The package's public surface: importing it is cheap, and every exported name resolves."""

from __future__ import annotations

import subprocess
import sys

import facesearch


def test_import_loads_no_heavy_library():
    code = "import facesearch, facesearch.cli, sys; print(sorted(m for m in ('torch', 'faiss', 'sqlalchemy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_exported_name_resolves():
    for name in facesearch.__all__:
        assert getattr(facesearch, name) is not None, name
