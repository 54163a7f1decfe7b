"""What can be checked about the container image without a Docker engine.

No engine is available here (nor in CI), so the image is never built in tests. Instead: every file
the Dockerfile copies exists and is not hidden by ``.dockerignore``, the entrypoint is a command
the real CLI parser accepts, and the final stage runs as a non-root user without compilers.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crmstream.cli import build_parser

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|cargo|rustc)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Instructions per stage, with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), words[0])
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        else:
            assert stages, f"instruction before FROM: {line}"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        parsed = json.loads(value)
        assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)
        return parsed
    return shlex.split(value)


def _copy_sources(rest: str) -> tuple[list[str], bool]:
    """COPY's source paths, and whether they come from another stage (``--from``)."""
    words = _exec_form(rest)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"COPY needs a source and a destination: {rest}"
    return paths[:-1], any(f.startswith("--from") for f in flags)


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
    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    assert final.name is None or final.name != stages[0].name


def test_every_copied_file_exists_and_reaches_the_build_context(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    checked = 0
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword not in {"COPY", "ADD"}:
                continue
            sources, from_stage = _copy_sources(rest)
            if from_stage:
                continue
            for source in sources:
                assert (REPO / source).exists(), f"{keyword} {source}: no such file in the repo"
                assert not _ignored(source.rstrip("/"), patterns), (
                    f"{keyword} {source}: excluded by .dockerignore"
                )
                checked += 1
    assert checked >= 4, "expected the project files to be copied"
    # Local state must stay out of the build context.
    for private in (".venv", "var", ".git", "tests", "crmstream/__pycache__"):
        assert _ignored(private, patterns), f"{private} would be sent to the Docker daemon"


def test_schemas_are_copied_where_crm_schema_dir_points(stages: list[Stage]) -> None:
    final = stages[-1]
    env = " ".join(rest for keyword, rest in final.instructions if keyword == "ENV")
    match = re.search(r"CRM_SCHEMA_DIR=(\S+)", env)
    assert match, "the final stage must set CRM_SCHEMA_DIR"
    copies = [
        _copy_sources(rest)[0] + [_exec_form(rest)[-1]]
        for k, rest in final.instructions
        if k == "COPY"
    ]
    assert any(c[0] == "schemas/avro" and c[-1] == match.group(1) for c in copies), copies


def test_entrypoint_is_a_real_cli_command(stages: list[Stage]) -> None:
    final = stages[-1]
    entry = [_exec_form(rest) for keyword, rest in final.instructions if keyword == "ENTRYPOINT"]
    cmd = [_exec_form(rest) for keyword, rest in final.instructions if keyword == "CMD"]
    assert entry, "the final stage needs an ENTRYPOINT"
    argv = entry[-1] + (cmd[-1] if cmd else [])
    assert argv[0] == "crm-stream", argv
    # The real parser: an unknown subcommand would raise SystemExit here.
    args = build_parser().parse_args(argv[1:])
    assert callable(args.func)
    assert args.command == "worker"


@pytest.mark.parametrize("argv", [["worker"], ["settings"], ["topics", "create"]])
def test_commands_the_chart_runs_parse(argv: list[str]) -> None:
    assert callable(build_parser().parse_args(argv).func)


def test_final_stage_is_non_root_without_compilers(stages: list[Stage]) -> None:
    final = stages[-1]
    users = [rest for keyword, rest in final.instructions if keyword == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # Numeric, so that Kubernetes' runAsNonRoot can check it (the chart sets the same uid).
    assert user.isdigit() and int(user) >= 1000, user
    runs = " ".join(rest for keyword, rest in final.instructions if keyword == "RUN")
    assert not COMPILERS.search(runs), f"compiler in the final stage: {COMPILERS.search(runs)}"
    builder_runs = " ".join(rest for keyword, rest in stages[0].instructions if keyword == "RUN")
    assert "build-essential" in builder_runs, "wheels are built in the first stage"
    assert "pip wheel" in builder_runs
    # The final stage installs only the builder's wheels: nothing is fetched or compiled there.
    assert "--no-index" in runs and f"from={stages[0].name}" in runs, runs


def test_parser_sees_continuations_and_stages() -> None:
    """The parser above must be able to fail: a single-stage root image is caught."""
    args, parsed = parse_dockerfile(
        "ARG BASE=python:3.11\nFROM ${BASE} AS b\nRUN apt-get install \\\n  gcc\nUSER root\n"
    )
    assert args == {"BASE": "python:3.11"}
    assert [s.base for s in parsed] == ["python:3.11"]
    assert parsed[0].instructions == [("RUN", "apt-get install gcc"), ("USER", "root")]
    assert COMPILERS.search(parsed[0].instructions[0][1])
    assert _ignored("tests/unit", ["tests"]) and not _ignored("crmstream", ["tests"])
    assert _ignored("a/__pycache__/x.pyc", ["**/__pycache__"])
    assert not _ignored("schemas/avro", ["*", "!schemas"])
    assert _ignored(".venv", ["*", "!schemas"])
