"""The package as a user gets it: the sdist built from the project's files, the wheel built from
that sdist (as ``python -m build`` does), the wheel installed into a new virtual environment,
and the installed command run from there, outside the source tree. Without extras: the bundled
demo replayed into Redis (the demo data, the Lua scripts), and ``serve`` saying in one line
what to install. With the ``service`` extra: ``serve`` (the templates, the static files).
Package data that pyproject.toml leaves out fails here, not on a user's machine.

About 15 s: the two builds' isolated environments and the installs take setuptools and the
dependencies from pip's cache (or PyPI), at the versions constraints.txt pins.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from .conftest import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.packaging


def _sources() -> list[str]:
    """What a build reads (the metadata, the README, the package), as git tracks it: what a
    fresh clone holds, not whatever else lies about in this tree (build/, *.egg-info)."""
    git = shutil.which("git")
    if git is not None:
        listed = subprocess.run(
            [git, "ls-files", "-z", "--", "pyproject.toml", "README.md", "src"],
            cwd=ROOT, capture_output=True, check=False,
        )  # fmt: skip
        if listed.returncode == 0 and listed.stdout:
            return sorted(listed.stdout.decode().split("\0")[:-1])
    files = [p for p in (ROOT / "src").rglob("*") if p.is_file()]
    kept = [p for p in files if "__pycache__" not in p.parts and ".egg-info" not in str(p)]
    return ["pyproject.toml", "README.md", *sorted(str(p.relative_to(ROOT)) for p in kept)]


def _env() -> dict[str, str]:
    """This environment, less what would let the source tree or the test's venv be imported."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=_env(), capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _wait_until_up(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None, "serve exited before it answered"
        assert time.monotonic() < deadline, "serve did not answer /healthz within 60 s"
        time.sleep(0.1)


def test_the_built_package_installs_and_runs_from_a_fresh_venv(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    sources = _sources()
    package = [s.removeprefix("src/") for s in sources if s.startswith("src/anomaly_counter/")]
    assert "anomaly_counter/stores/lua/record.lua" in package  # (the listing found the package)
    tree = tmp_path / "tree"
    for name in sources:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)

    # the sdist, then the wheel from it: a file the sdist lacks is missing from the wheel too
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, tree, cwd=tmp_path)
    (sdist,) = dist.glob("anomaly_counter-*.tar.gz")
    (wheel,) = dist.glob("anomaly_counter-*.whl")
    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz")
        in_sdist = {m.name.removeprefix(f"{top}/") for m in archive.getmembers() if m.isfile()}
    assert {f"src/{name}" for name in package} - in_sdist == set()
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= in_sdist
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    assert set(package) - in_wheel == set()

    # installed as a user installs it, at the versions CI tests: first without extras
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python, command = venv / "bin" / "python", venv / "bin" / "anomaly-counter"
    install = (python, "-m", "pip", "install", "--quiet", "--no-compile", "-c",
               ROOT / "constraints.txt")  # fmt: skip
    _run(*install, wheel, cwd=tmp_path)
    where = _run(python, "-c", "import anomaly_counter; print(anomaly_counter.__file__)",
                 cwd=tmp_path).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(venv), where  # not the source tree's

    # the bundled demo (data/k8s-alerts.jsonl), counted by the Lua scripts
    store = fresh_redis.url
    replay = _run(command, "--store", store, "--project", "demo", "replay", "--bundled",
                  cwd=tmp_path)  # fmt: skip
    assert "PERMANENT_FIX" in replay.stdout and "Top anomalies, last 24 hours" in replay.stdout
    bare = subprocess.run(
        [str(command), "--store", store, "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1, bare.stderr
    assert "pip install 'anomaly-counter[service]'" in bare.stderr

    _run(*install, f"{wheel}[service]", cwd=tmp_path)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(command), "--store", store, "--project", "demo", "serve", "--port", str(port),
         "--demo-token"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(4)]
        said = [line for line in printed if line.startswith("a token of project")]
        if not said:  # (it stopped at start: what it said is the failure's reason)
            process.kill()
            pytest.fail("serve printed no token:\n" + "".join(printed) + process.communicate()[1])
        token = said[0].rsplit(" ", 1)[1].strip()
        _wait_until_up(process, url)
        with httpx.Client(base_url=url, timeout=10, follow_redirects=True) as http:
            page = http.get("/")  # (the sign-in page: templates/signin.html and base.html)
            assert page.status_code == 200 and "<form" in page.text, page.text[:500]
            linked = set(re.findall(r'(?:href|src)="(/static/[^"?#]+)', page.text))
            docs = http.get("/docs")  # the API's docs, from the vendored swagger-ui files
            assert docs.status_code == 200
            linked |= set(re.findall(r"""['"](/static/swagger-ui/[^'"?#]+)""", docs.text))
            assert any(p.endswith(".css") for p in linked) and any(
                p.startswith("/static/swagger-ui/") for p in linked
            ), linked
            for path in sorted(linked):
                served = http.get(path)
                assert served.status_code == 200 and served.content, path
            signed_in = http.post("/signin", data={"token": token}, headers={"Origin": url})
            assert signed_in.url.path == "/projects/demo", signed_in.url
            assert signed_in.status_code == 200 and "HTTP5xxRate" in signed_in.text
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=15)
    assert "Traceback" not in errors, errors
