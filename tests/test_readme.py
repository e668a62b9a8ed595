"""The README's examples run as written, so that none can rot (a user copies them first).

The convention (the README's Development section says it too), for the README and the docs/
pages listed in DOCUMENTS:

- ```python blocks run each as a script of its own, in a temporary directory.
- ```sh and ```bash blocks, and the ``$ `` lines of ```console blocks, run in bash with
  ``set -euo pipefail``, one block after another in one temporary directory, as in a reader's
  terminal: the variables a block sets stay set for the blocks after it (its ``cd`` does not).
  The other lines of a ```console block are output it shows: each must be a line of the real
  output, in that order, with runs of spaces and of digits aside (a line ``...`` skips).
- A word after the fence's language marks a shell block: ```sh no-run is shown and never run
  (``make run``, which serves until Ctrl-C; ``make test``, which would run this test; a
  deployment's commands); ```sh service serves: it is started in the background, waited for
  until it answers on its port, and stopped at the next ``service`` block or at the end.
- ```toml blocks must each load as a settings file. Other fences (yaml, text) are not run.

The session: a temporary directory holding links to the checkout's ``.venv``, ``deploy`` and
``examples``, with the venv's ``bin`` first on the PATH and no ``ANOMALY_COUNTER_*`` variable of
the caller's. It starts as ``make run`` does: the Makefile's own commands (``make -n run``)
replay the demo into ``.run/demo.db`` and serve it, and ``TOKEN`` holds the token it printed.
What the examples say as a reader would type it is then pointed at the test's own servers:
``localhost:8080`` and ``127.0.0.1:8080`` at the service running now, ``--port 8080`` (in a
``service`` block) at a free port, ``localhost:6379`` at a redis-server of the test's own. A
failing block names its document and the line of the command that failed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from anomaly_counter.settings import load_settings

from .conftest import free_port, require_binary

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The README first, then the pages its reference moved to (their examples run in the same
# session, as read after the README).
DOCUMENTS = [
    "README.md",
    "docs/http-api.md",
    "docs/notices.md",
    "docs/metrics.md",
    "docs/spool.md",
    "docs/scale.md",
    "docs/settings.md",
    "docs/counting.md",
    "docs/repairs.md",
    "docs/incidents.md",
]
SHELLS = frozenset(("sh", "bash", "console"))
FLAGS = frozenset(("no-run", "service"))
LANGUAGES = SHELLS | {"python", "toml", "yaml", "text", "json", ""}
LINKED = (".venv", "deploy", "examples")  # the checkout's, as the examples see it
BLOCK_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # of its first line in the document (1-based)
    language: str
    flags: frozenset[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.document} line {self.line}"

    @property
    def runs(self) -> bool:
        return self.language in SHELLS and "no-run" not in self.flags


def blocks(document: str) -> list[Block]:
    """The fenced blocks of a document, with where each starts."""
    found: list[Block] = []
    lines = (ROOT / document).read_text(encoding="utf-8").splitlines()
    opened: tuple[int, str, frozenset[str]] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        fence = re.match(r"```(\S*)(.*)$", line)
        if fence is None:
            if opened is not None:
                body.append(line)
        elif opened is None:
            opened = (number + 1, fence[1], frozenset(fence[2].split()))
            body = []
        else:
            start, language, flags = opened
            found.append(Block(document, start, language, flags, "\n".join(body) + "\n"))
            opened = None
    assert opened is None, f"{document}: a fence opened on line {opened[0] - 1} is not closed"
    return found


def every_block() -> Iterator[Block]:
    for document in DOCUMENTS:
        yield from blocks(document)


# -- the convention -------------------------------------------------------------------------


def test_fences_follow_the_convention() -> None:
    """A misspelt marker (```sh norun) would run what must not run, or hide what must."""
    for block in every_block():
        assert block.language in LANGUAGES, f"{block.where}: unknown fence {block.language!r}"
        assert block.flags <= FLAGS, f"{block.where}: unknown marker {sorted(block.flags)}"
        if block.flags:
            assert block.language in {"sh", "bash"}, f"{block.where}: markers are for sh blocks"
        if "service" in block.flags:
            assert "--port 8080" in block.text, f"{block.where}: a service serves on --port 8080"
    assert any(b.language in SHELLS for b in blocks("README.md")), "the README has shell examples"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"#+ (.*)", line)
        if heading and not fenced:
            slug = _slug(heading[1])
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


# Pages that other branches bring: linked already, checked once they are here.
COMING = frozenset(("docs/backfill.md", "docs/import-reference.md"))


def test_links_between_the_documents_resolve() -> None:
    """Moving a section into docs/ must not break a link to it, or an anchor."""
    for document in DOCUMENTS:
        path = ROOT / document
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # (a web address)
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            shown = linked.relative_to(ROOT).as_posix()
            if not linked.exists() and shown in COMING:
                continue
            assert linked.exists(), f"{document}: a link to {target}: no such file"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{document}: a link to {target}: no anchor"


# -- Python ---------------------------------------------------------------------------------


def test_every_python_example_runs(tmp_path: Path) -> None:
    """Seen by a new user: the Python example did not run (`async with` outside a function),
    and its `# 3, "REPEAT"` could not happen with a fixed occurrence_id."""
    examples = [b for b in every_block() if b.language == "python"]
    assert examples, "the README has Python examples"
    for number, block in enumerate(examples, start=1):
        script = tmp_path / f"example{number}.py"
        script.write_text(block.text, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{block.where}:\n{done.stderr}"
        if "# 3 REPEAT" in block.text:  # (what its comments say it prints, it prints)
            lines = done.stdout.splitlines()
            assert "3 REPEAT" in lines, done.stdout
            assert lines[lines.index("3 REPEAT") + 1] == "REPEAT", done.stdout


# -- settings files -------------------------------------------------------------------------


def test_every_settings_example_loads(tmp_path: Path) -> None:
    examples = [b for b in every_block() if b.language == "toml"]
    assert examples
    for number, block in enumerate(examples, start=1):
        path = tmp_path / f"settings{number}.toml"
        path.write_text(block.text, encoding="utf-8")
        try:
            load_settings(path, environ={})
        except Exception as exc:  # (any error: the example is wrong)
            pytest.fail(f"{block.where}: {exc}")


# -- the shell ------------------------------------------------------------------------------


class Session:
    """A reader's terminal: one directory, one environment carried from block to block, and
    the service the examples talk to."""

    def __init__(self, directory: Path, request: pytest.FixtureRequest) -> None:
        self.directory = directory
        self.request = request
        binaries = Path(sys.executable).parent
        for name, source in zip(LINKED, (binaries.parent, ROOT / "deploy", ROOT / "examples"),
                                strict=True):  # fmt: skip
            (directory / name).symlink_to(source)
        keep = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_COUNTER_")}
        self.env = {**keep, "PATH": f"{binaries}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.service: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.port = 0
        self.redis = ""

    def local(self, text: str) -> str:
        """What a reader types, pointed at the test's servers."""
        if self.port:
            text = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", f"127.0.0.1:{self.port}", text)
        if "localhost:6379" in text:
            if not self.redis:
                server = self.request.getfixturevalue("fresh_redis")
                self.redis = f"127.0.0.1:{server.port}"
            text = text.replace("localhost:6379", self.redis)
        return text

    def script(self, block: Block, body: str) -> str:
        """Bash that runs the block with its lines where the document has them, so that an
        error's $LINENO is the document's line; it saves the environment it leaves."""
        prelude = (
            "set -euo pipefail; __ac_known=\" $(compgen -v | tr '\\n' ' ') \";"
            f" trap 'echo \"{block.document} line $LINENO: exit status $?\" >&2' ERR;"
            " trap __ac_save EXIT; __ac_save() { for __ac_v in $(compgen -v); do"
            ' case "$__ac_known" in *" $__ac_v "*) ;; *) case $__ac_v in [A-Za-z]*)'
            ' export "$__ac_v" 2>/dev/null || true;; esac;; esac; done;'
            ' env -0 > "$__AC_ENV"; }'
        )
        return prelude + "\n" * max(block.line - 1, 1) + body

    def run(self, block: Block, body: str) -> subprocess.CompletedProcess[str]:
        saved = self.directory.parent / "env"
        saved.unlink(missing_ok=True)
        done = subprocess.run(
            ["bash", "-c", self.script(block, self.local(body))], cwd=self.directory,
            env={**self.env, "__AC_ENV": str(saved)}, capture_output=True, text=True,
            timeout=BLOCK_TIMEOUT,
        )  # fmt: skip
        if done.returncode != 0:  # (the ERR trap said which line, on stderr's last line)
            said = re.findall(rf"^{re.escape(block.document)} line \d+: exit status \d+$",
                              done.stderr, re.M)  # fmt: skip
            pytest.fail(
                f"{said[-1] if said else block.where + ': exit status ' + str(done.returncode)}"
                f" (the example from {block.where})\n--- stdout\n{done.stdout[-3000:]}"
                f"\n--- stderr\n{done.stderr[-3000:]}"
            )
        carried = dict(item.split("=", 1) for item in saved.read_text().split("\0") if "=" in item)
        for name in ("_", "SHLVL", "PWD", "OLDPWD", "__AC_ENV"):
            carried.pop(name, None)
        self.env = carried
        return done

    def serve(self, block: Block, command: str, token: bool = False) -> None:
        """Start the service the examples talk to now (stopping the one before), and wait
        until it answers; with ``token``, keep the demo token it prints in ``TOKEN``."""
        self.stop()
        self.port = free_port()
        command = command.replace("--port 8080", f"--port {self.port}")
        self.output = []
        self.service = subprocess.Popen(
            ["bash", "-c", self.script(block, self.local(command))], cwd=self.directory,
            env={**self.env, "__AC_ENV": os.devnull}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, args=(self.service,), daemon=True).start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.service.poll() is None:
            said = "".join(self.output)
            if not token or "a token of project" in said:
                try:
                    if httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        else:
            self.stop()
            pytest.fail(f"{block.where}: the service did not start:\n{''.join(self.output)}")
        if token:
            (line,) = [x for x in self.output if x.startswith("a token of project")]
            self.env["TOKEN"] = line.rsplit(" ", 1)[1].strip()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)

    def stop(self) -> None:
        if self.service is not None:
            os.killpg(self.service.pid, signal.SIGTERM)  # (bash and the service it started)
            try:
                self.service.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.service.pid, signal.SIGKILL)
                self.service.wait()
            self.service = None
            self.port = 0


def _make_run(session: Session) -> None:
    """``make run``'s own commands, as the Makefile has them: all but the last run through,
    the last serves (with a token for the demo project)."""
    venv = Path(sys.executable).parent.parent
    listed = subprocess.run(
        [require_binary("make"), "-s", "-n", "--no-print-directory", "-o", f"{venv}/.installed",
         "run", f"VENV={venv}", "PORT=8080"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    commands = listed.stdout.strip().splitlines()
    assert len(commands) >= 2 and " serve " in commands[-1], listed.stdout
    assert "--demo-token" in commands[-1], "make run prints a token, as the README says"
    where = Block("Makefile", 1, "sh", frozenset(), "")
    for command in commands[:-1]:
        session.run(where, command)
    session.serve(where, commands[-1], token=True)


def _console(block: Block) -> tuple[str, list[str]]:
    """A console block's commands (at their lines) and the output it shows."""
    commands: list[str] = []
    shown: list[str] = []
    going_on = False
    for line in block.text.splitlines():
        if line.startswith("$ ") or going_on:
            commands.append(line.removeprefix("$ "))
            going_on = line.endswith("\\")
        else:
            commands.append("")
            shown.append(line)
    return "\n".join(commands) + "\n", [line for line in shown if line.strip()]


def _plain(line: str) -> str:
    return re.sub(r"\d+", "0", " ".join(line.split()))


def _check_output(block: Block, shown: list[str], stdout: str) -> None:
    real = [_plain(line) for line in stdout.splitlines()]
    at = 0
    for line in shown:
        if line.strip() == "...":
            continue
        if _plain(line) not in real[at:]:
            rest = "\n".join(stdout.splitlines()[at:])
            pytest.fail(f"{block.where}: the output shown has\n{line}\nbut the command printed"
                        f" (from there on):\n{rest}")  # fmt: skip
        at = real.index(_plain(line), at) + 1


def test_every_shell_example_runs(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    runnable = [b for b in every_block() if b.runs]
    for tool in ("curl", "promtool"):
        if any(re.search(rf"\b{tool}\b", b.text) for b in runnable):
            require_binary(tool)
    home = tmp_path / "checkout"
    home.mkdir()
    session = Session(home, request)
    try:
        _make_run(session)
        for block in runnable:
            if "service" in block.flags:
                session.serve(block, block.text)
            elif block.language == "console":
                commands, shown = _console(block)
                _check_output(block, shown, session.run(block, commands).stdout)
            else:
                session.run(block, block.text)
    finally:
        session.stop()
