"""The wheel ships all-MiniLM-L6-v2's files (see scripts/vendor_minilm.py): building it copies them in first, so a
wheel built from a clean checkout is complete. Everything else is in pyproject.toml."""
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithModelFiles(build_py):
    def run(self):
        script = HERE / "scripts" / "vendor_minilm.py"
        spec = importlib.util.spec_from_file_location("vendor_minilm", script)
        vendor_minilm = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(vendor_minilm)
        vendor_minilm.vendor()
        super().run()


setup(cmdclass={"build_py": BuildWithModelFiles})
