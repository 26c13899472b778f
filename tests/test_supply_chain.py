"""Supply chain: installed versions clear the security floors; nothing loads pickle."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {
    "python-multipart": "0.0.27",
    "pillow": "12.3",
    "pillow-heif": "1.4",
    "starlette": "1.3.1",
}


def test_pyproject_floors_exclude_the_known_cves() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for package, floor in FLOORS.items():
        declared = re.search(rf'"{package}>=([0-9.]+)"', text, re.IGNORECASE)
        assert declared, f"{package} has no floor in pyproject.toml"
        assert Version(declared.group(1)) >= Version(floor)


def test_installed_versions_clear_the_floors() -> None:
    for package, floor in FLOORS.items():
        assert Version(version(package)) >= Version(floor), package


def test_no_code_loads_pickle() -> None:
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|torch\.load\(|allow_pickle=True")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("training", "service", "bench", "testkit")
        for path in (ROOT / folder).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []
