"""What can be checked about the container image without a Docker engine.

No engine is available here (nor in CI), so the image is never built in tests. The Dockerfile is
read with BuildKit's own parser (the ``dockerfile`` package wraps it), then: every file it copies
exists and is not hidden by ``.dockerignore``, the entrypoint is a command the real CLI parser
accepts, and the final stage runs as a non-root user without compilers.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

from crmcli import build_parser

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|cargo|rustc)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    # (instruction, flags, values, exec form)
    instructions: list[tuple[str, tuple[str, ...], tuple[str, ...], bool]] = field(
        default_factory=list
    )

    def values(self, cmd: str) -> list[tuple[str, ...]]:
        return [values for c, _, values, _ in self.instructions if c == cmd]

    def runs(self) -> str:
        return " ".join(
            " ".join(flags + values) for c, flags, values, _ in self.instructions if c == "RUN"
        )


def stages_of(text: str) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_string(text):
        cmd = command.cmd.upper()
        if cmd == "ARG" and not stages:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif cmd == "FROM":
            words = command.value
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[0])
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        else:
            assert stages, f"{cmd} before FROM"
            stages[-1].instructions.append((cmd, command.flags, command.value, command.json))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return stages_of(DOCKERFILE.read_text())


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern hides a path if it matches it or one of its parents
    (``**/`` matches at any depth); a later ``!pattern`` re-includes it."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    hidden = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").strip("/")
        if pat.startswith("**/"):
            matched = any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        else:
            matched = any(fnmatch.fnmatch(prefix, pat) for prefix in prefixes)
        if matched:
            hidden = not negate
    return hidden


def test_is_multi_stage_on_a_slim_python_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "a builder stage and a final stage"
    assert stages[0].name, "the builder stage is named, so the final stage can refer to it"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stages[-1].base), stages[-1].base


def test_every_copied_file_exists_and_reaches_the_build_context(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    checked = 0
    for stage in stages:
        for cmd, flags, values, _ in stage.instructions:
            if cmd not in {"COPY", "ADD"} or any(f.startswith("--from") for f in flags):
                continue
            for source in values[:-1]:
                assert (REPO / source).exists(), f"{cmd} {source}: no such file in the repo"
                assert not _ignored(source.rstrip("/"), patterns), (
                    f"{cmd} {source}: excluded by .dockerignore"
                )
                checked += 1
    assert checked >= 4, "expected the project files to be copied"
    # Local state must stay out of the build context.
    for private in (".venv", "var", ".git", "tests", "crmstream/__pycache__"):
        assert _ignored(private, patterns), f"{private} would be sent to the Docker daemon"


def test_schemas_are_copied_where_crm_schema_dir_points(stages: list[Stage]) -> None:
    final = stages[-1]
    env: dict[str, str] = {}
    for values in final.values("ENV"):
        env.update(zip(values[::2], values[1::2], strict=True))
    assert "CRM_SCHEMA_DIR" in env, "the final stage must set CRM_SCHEMA_DIR"
    copies = final.values("COPY")
    assert ("schemas/avro", env["CRM_SCHEMA_DIR"]) in copies, copies
    assert list((REPO / "schemas" / "avro").glob("*.avsc")), "no Avro schema to ship"


def test_entrypoint_is_a_real_cli_command(stages: list[Stage]) -> None:
    final = stages[-1]
    entry = [i for i in final.instructions if i[0] == "ENTRYPOINT"]
    cmd = [i for i in final.instructions if i[0] == "CMD"]
    assert entry, "the final stage needs an ENTRYPOINT"
    assert entry[-1][3], "exec form, so signals reach crm-stream (PID 1) directly"
    argv = list(entry[-1][2]) + (list(cmd[-1][2]) if cmd else [])
    assert argv[0] == "crm-stream", argv
    # The real parser: an unknown subcommand would raise SystemExit here.
    args = build_parser().parse_args(argv[1:])
    assert callable(args.func)
    assert args.command == "worker"


@pytest.mark.parametrize(
    "argv",
    [["worker"], ["settings"], ["topics", "create"], ["connect", "segment", "--port", "8088"]],
)
def test_commands_the_image_documents_parse(argv: list[str]) -> None:
    assert callable(build_parser().parse_args(argv).func)


def test_final_stage_is_non_root_without_compilers(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.values("USER")
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1][0].split(":")[0]
    assert user not in {"root", "0"}
    # Numeric, so that Kubernetes' runAsNonRoot can check it (the chart sets the same uid).
    assert user.isdigit() and int(user) >= 1000, user
    runs = final.runs()
    assert not COMPILERS.search(runs), f"compiler in the final stage: {COMPILERS.search(runs)}"
    builder_runs = stages[0].runs()
    assert "build-essential" in builder_runs, "wheels are built in the first stage"
    assert "pip wheel" in builder_runs
    # The final stage installs only the builder's wheels: nothing is fetched or compiled there.
    assert "--no-index" in runs and f"from={stages[0].name}" in runs, runs


def test_the_checks_can_fail() -> None:
    """A single-stage root image with a compiler is caught by the same helpers."""
    parsed = stages_of(
        "ARG BASE=python:3.11\nFROM ${BASE} AS b\nRUN apt-get install \\\n  gcc\nUSER root\n"
    )
    assert [s.base for s in parsed] == ["python:3.11"]
    assert COMPILERS.search(parsed[0].runs())
    assert parsed[0].values("USER") == [("root",)]
    assert _ignored("tests/unit", ["tests"]) and not _ignored("crmstream", ["tests"])
    assert _ignored("a/__pycache__/x.pyc", ["**/__pycache__"])
    assert not _ignored("schemas/avro", ["*", "!schemas"])
    assert _ignored(".venv", ["*", "!schemas"])
