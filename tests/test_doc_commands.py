"""The documented commands work: every ``ray exec`` in README.md, docs/, sweeps/ and the cluster
files' headers changes into a directory that the named cluster file mounts (inside the
container, for a file with a ``docker`` section), every ``ray up`` / ``ray exec`` names a
cluster file of the repository root, and docs/cli.md documents every flag of every tool."""

from __future__ import annotations

import argparse
import importlib
import posixpath
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                    *(ROOT / "sweeps").glob("*.yaml"), *(ROOT / "sweeps").glob("*.md"),
                    *ROOT.glob("cluster*.yaml")])
# HOME of the images a cluster file may name (Ray expands "~" in a mount target to it).
IMAGE_HOMES = {"rayproject/ray": "/home/ray"}
RAY_COMMAND = re.compile(r"\bray (exec|up)\b")


def ray_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, shell words) of every ``ray exec`` / ``ray up`` on a line of ``path`` that
    names a ``.yaml`` file (prose such as "a real `ray up`" names none and is left out)."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for match in RAY_COMMAND.finditer(line):
            text = line[match.start():]
            if line[:match.start()].endswith("`"):  # inline code: up to its closing backtick
                text = text.split("`")[0]
            try:
                words = shlex.split(text, comments=True)
            except ValueError:  # an unbalanced quote: not a command
                continue
            if any(w.endswith(".yaml") for w in words):
                out.append((number, words))
    return out


def container_home(cluster: dict) -> str:
    """The home directory ``~`` means where ``ray exec`` runs its command."""
    docker = cluster.get("docker") or {}
    image = docker.get("image") or docker.get("head_image")
    if image is None:
        return f"/home/{cluster['auth']['ssh_user']}"
    for prefix, home in IMAGE_HOMES.items():
        if image.startswith(prefix):
            return home
    raise AssertionError(f"unknown HOME of the image {image}: add it to IMAGE_HOMES")


def mount_targets(cluster: dict) -> dict[str, str]:
    """Absolute target -> source of the cluster file's ``file_mounts`` and docker volumes, as
    seen where ``ray exec`` runs its command."""
    home = container_home(cluster)

    def expand(p: str) -> str:
        return posixpath.normpath(home + p[1:] if p.startswith("~") else p)

    targets = {expand(t): s for t, s in (cluster.get("file_mounts") or {}).items()}
    for option in (cluster.get("docker") or {}).get("run_options", []):
        if option.startswith(("--volume=", "-v ")):
            source, target = re.split(r"[= ]", option, maxsplit=1)[1].split(":")[:2]
            targets[expand(target)] = source
    return targets


def exec_problems(words: list[str], root: Path = ROOT) -> list[str]:
    """Why the ``ray exec`` / ``ray up`` command ``words`` would fail (empty: it would not)."""
    cluster_name = next(w for w in words if w.endswith(".yaml"))
    cluster_file = root / cluster_name
    if "/" in cluster_name or not cluster_file.is_file():
        return [f"{cluster_name}: not a cluster file of the repository root"]
    if words[1] == "up":
        return []
    after = words[words.index(cluster_name) + 1:]
    remote = next((w for w in after if not w.startswith("-")), None)
    if remote is None:
        return ["no command to run"]
    cluster = yaml.safe_load(cluster_file.read_text())
    targets = mount_targets(cluster)
    shell = shlex.split(remote)
    if "cd" not in shell:
        return [f"{remote!r}: no cd into the repository"]
    cwd = shell[shell.index("cd") + 1]
    home = container_home(cluster)
    resolved = posixpath.normpath(home + cwd[1:] if cwd.startswith("~") else cwd)
    problems = []
    if targets.get(resolved) != ".":
        repo = [t for t, s in targets.items() if s == "."]
        problems.append(f"cd {cwd}: {resolved} is not where {cluster_name} mounts the "
                        f"repository ({', '.join(repo) or 'it mounts no .'})")
    # Absolute paths given to the sweep (--data, --storage) must be mounted too.
    for flag in ("--data", "--storage"):
        if flag in shell:
            path = shell[shell.index(flag) + 1]
            if path.startswith("/") and not any(
                    path == t or path.startswith(t + "/") for t in targets):
                problems.append(f"{flag} {path}: not under a mount of {cluster_name}")
    return problems


COMMANDS = [(f"{p.relative_to(ROOT)}:{n}", w) for p in DOC_FILES for n, w in ray_commands(p)]


def test_the_documents_hold_the_cluster_commands():
    places = {where.split(":")[0] for where, _ in COMMANDS}
    assert {"README.md", "docs/cluster.md", "sweeps/paper_table1.yaml", "cluster.yaml",
            "cluster.local.yaml"} <= places
    assert sum(w[1] == "exec" for _, w in COMMANDS) >= 5


@pytest.mark.parametrize("where,words", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_cluster_command_runs_in_a_mounted_directory(where, words):
    assert exec_problems(words) == [], f"{where}: {shlex.join(words)}"


def test_the_check_catches_the_container_home_and_unmounted_data():
    bad = ["ray", "exec", "--tmux", "cluster.yaml",
           "cd ~/hytver_dist && python -m hytver_dist.sweep --data /data/msseg2"]
    problems = exec_problems(bad)
    assert len(problems) == 2
    assert problems[0].startswith("cd ~/hytver_dist: /home/ray/hytver_dist is not where "
                                  "cluster.yaml mounts the repository (/home/ubuntu/hytver_dist)")
    assert problems[1] == "--data /data/msseg2: not under a mount of cluster.yaml"
    # Without a container, "~" is the SSH user's home: /home/hytver/src is not mounted.
    assert exec_problems(["ray", "exec", "cluster.local.yaml", "cd ~/src && ls"])
    assert exec_problems(["ray", "up", "-y", "elsewhere/cluster.yaml"])


# ------------------------------------------------------------------ every CLI flag in docs/cli.md

CLI_DOC = ROOT / "docs" / "cli.md"
# Each tool's main(); its parser is taken from the parse_args call (no tool runs).
CLIS = {
    "sweep": "hytver_dist.sweep.driver", "train": "hytver_dist.run.train_cli",
    "evaluate": "hytver_dist.run.evaluate", "predict": "hytver_dist.run.predict",
    "report": "hytver_dist.report.build", "synth": "hytver_dist.data.synth",
    "losses": "hytver_dist.losses.__main__",
}


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def cli_parser(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The argparse parser that ``module.main`` builds."""
    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as parsed:
        importlib.import_module(module).main([])
    return parsed.value.parser


def cli_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string (``--help`` aside) and positional (as its upper-case name)."""
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        out |= set(action.option_strings) or {action.dest.upper()}
    return out


def doc_section(tool: str) -> str:
    text = CLI_DOC.read_text()
    start = text.index(f"## `python -m hytver_dist.{tool}`")
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else len(text)]


def undocumented(flags: set[str], section: str) -> list[str]:
    """The flags that ``section`` of docs/cli.md does not name."""
    return sorted(f for f in flags if not re.search(rf"`{re.escape(f)}[` ,]", section))


@pytest.mark.parametrize("tool", sorted(CLIS))
def test_every_flag_of_the_tool_is_documented(tool, monkeypatch):
    flags = cli_flags(cli_parser(CLIS[tool], monkeypatch))
    section = doc_section(tool)
    missing = undocumented(flags, section)
    assert missing == [], f"docs/cli.md, python -m hytver_dist.{tool}: undocumented {missing}"
    # and nothing documented that the tool does not take
    documented = set(re.findall(r"^\| `(-{1,2}[a-z][a-z0-9-]*|[A-Z_]+)", section, re.M))
    documented |= set(re.findall(r"\(alias `(--[a-z-]+)`\)", section))
    assert documented - flags == set()
    assert flags <= documented | {f for f in flags if f.startswith("-") and
                                  re.search(rf"`--[a-z-]+`, `{f}`", section)}


def test_the_flag_check_sees_an_undocumented_flag(monkeypatch):
    parser = cli_parser(CLIS["report"], monkeypatch)
    parser.add_argument("--not-in-the-docs")
    assert undocumented(cli_flags(parser), doc_section("report")) == ["--not-in-the-docs"]


# ---------------------------------------------------------------- links between the documents

LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation other than ``-`` and
    ``_`` dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings in code
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    out = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            out.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target}: no heading with that anchor")
    return out


@pytest.mark.parametrize("path", [p for p in DOC_FILES if p.suffix == ".md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_the_documents_resolve(path):
    assert broken_links(path) == []


def test_the_link_check_sees_a_missing_heading(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Title\n## The default sweep (2026-12-03)\n[x](#the-default-sweep-2026-12-03)"
                    " [y](#nothing) [z](b.md)\n")
    assert broken_links(page) == ["#nothing: no heading with that anchor", "b.md: no such file"]
