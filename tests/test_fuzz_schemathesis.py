"""schemathesis over the service's OpenAPI, every check, against a real server, bounded.

Three passes. Reads and deletes get every check. The listings skip positive_data_acceptance:
their `filter` is JSON text, which a query parameter's schema cannot state, so a schema-valid
string that is not a filter gets its 422. The POST operations skip two checks that
multipart image bodies cannot satisfy: positive_data_acceptance (a schema-valid `format: binary`
string is random bytes, not an image, so 422 is right) and negative_data_rejection (a multipart
text field carries no JSON type, so "5" and 5 are the same field). Every pass includes
ignored_auth: with keys, every data or compute route without one must get 401. The server
keeps reads private (the default), unlike the other modules' `module_server`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.server import API_KEY, Server, running


@pytest.fixture(scope="module")
def module_server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server whose reads need the key too."""
    data_dir = tmp_path_factory.mktemp("server") / "data"
    with running(artifact, data_dir, LOOKALIKE_PUBLIC_READS="false") as server:
        yield server


LISTINGS = "/images$"  # GET /images and GET /collections/{collection}/images
PASSES = {
    "reads and deletes": ["--exclude-method", "POST", "--exclude-path-regex", LISTINGS],
    "listings": [
        *("--include-path-regex", LISTINGS, "--exclude-method", "POST"),
        *("--exclude-checks", "positive_data_acceptance"),
    ],
    "posts": [
        "--include-method",
        "POST",
        "--exclude-checks",
        "positive_data_acceptance,negative_data_rejection",
    ],
}


@pytest.mark.parametrize("name", PASSES)
def test_schemathesis_finds_no_server_errors_or_schema_violations(
    module_server: Server, name: str
) -> None:
    beside_python = Path(sys.executable).parent / "st"
    st = str(beside_python) if beside_python.exists() else shutil.which("st")
    assert st, "schemathesis is a dev dependency"
    command = [
        st,
        "run",
        f"{module_server.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--no-color",
        "-H",
        f"Authorization: Bearer {API_KEY}",
        *PASSES[name],
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout and "failed" not in done.stdout.split("SUMMARY")[-1]
