"""Build step that pyproject.toml cannot declare: a wheel carries copies of the repository files
crm-stream reads at run time (``crmstream.resources``), under ``crmstream/_shipped/`` with their
repository paths, so an installed ``crm-stream demo`` works without a checkout. The originals stay
where they are (``schemas/avro``, ``config``); editable installs read them there."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Repository folder -> the files of it that ship (crmstream/resources.py reads them).
SHIPPED = {"schemas/avro": "*.avsc", "config": "tansu-dev.env"}


class BuildPyWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "crmstream" / "_shipped"
        for folder, pattern in SHIPPED.items():
            files = sorted((HERE / folder).glob(pattern))
            if not files:
                raise SystemExit(f"setup.py: no {folder}/{pattern} to ship in the wheel")
            (target / folder).mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copyfile(path, target / folder / path.name)


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
