"""Docs that stay true: every command, flag and node parameter the README and docs/ name must exist.

    python scripts/check_docs.py [FILE.md ...]     # default: README.md and docs/**/*.md; exit 1 on a problem
    python scripts/check_docs.py --parameter-table  # the node page's parameter table, from m2s_stereo.params

What is checked, in fenced code blocks and in inline code spans:

- ``m2s-*`` tools (and ``torchrun ... -m m2s_train.cli``): the tool is one of the package's console scripts,
  its subcommand exists, and every ``--flag`` appears in that tool's (subcommand's) real ``--help``, run as a
  subprocess as a user would;
- ``python benchmarks/X.py`` / ``scripts/X.py`` with flags: the script exists and takes them (its ``--help``);
- node parameters: ``-p NAME:=`` after ``m2s-stereo-node --ros-args``, ``--param NAME=`` of ``m2s-eval-bag``
  and the ``NAME:=`` arguments of ``ros2 launch m2s_stereo stereo.launch.py`` are declared by the node
  (``m2s_stereo.params``) or by the launch file;
- the parameter table of docs/node.md lists every parameter the node declares, with its default, and no other.

A tool whose ``--help`` cannot run here (an extra that is not installed) is reported as unchecked, not as a
problem.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "ros2_ws" / "src" / "m2s_stereo" / "launch" / "stereo.launch.py"
NODE_DOC = ROOT / "docs" / "node.md"
DIST = "mono2stereo"
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)")
SUBCOMMANDS = re.compile(r"\{([\w,-]+)\}")
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}


@dataclass(frozen=True)
class Use:
    """One command line (or inline span) of a doc, with where it is."""

    doc: str
    line: int
    text: str


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    checked: int = 0


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md"] + sorted((root / "docs").rglob("*.md"))


def command_uses(path: Path) -> Iterator[Use]:
    """Command lines of fenced code blocks (continuations joined) and inline code spans of the prose (a span may
    run over a line break, as Markdown allows)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    fence = None
    pending, start = "", 0
    prose: list[tuple[int, str]] = []

    def spans() -> Iterator[Use]:
        text = " ".join(line for _, line in prose)
        offsets, at = [], 0
        for number, line in prose:
            offsets.append((at, number))
            at += len(line) + 1
        for m in re.finditer(r"`([^`]+)`", text):
            yield Use(name, max(n for o, n in offsets if o <= m.start()), m.group(1))
        prose.clear()

    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            yield from spans()
            fence = None if fence else stripped
            pending = ""
            continue
        if fence:
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            yield Use(name, start, pending + stripped)
            pending = ""
        elif stripped:
            prose.append((number, stripped))
        else:
            yield from spans()
    yield from spans()


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in a prose span
        return text.split("#")[0].split()


def _segments(tokens: list[str]) -> Iterator[list[str]]:
    """Split at shell operators; drop usage brackets ([--steps 200]) and a trailing ';'."""
    segment: list[str] = []
    for token in tokens:
        if token in SEPARATORS:
            if segment:
                yield segment
            segment = []
            continue
        segment.append(token.strip("[](){}").rstrip(";"))
    if segment:
        yield segment


def console_scripts() -> dict[str, str]:
    """name -> module of this package's console scripts (as installed)."""
    try:
        eps = metadata.distribution(DIST).entry_points
    except metadata.PackageNotFoundError:
        return {}
    return {ep.name: ep.value.split(":")[0] for ep in eps if ep.group == "console_scripts"}


class HelpCache:
    """The real ``--help`` of a tool or script, run once per command as a subprocess."""

    def __init__(self) -> None:
        self._text: dict[tuple[str, ...], tuple[int, str]] = {}

    def command(self, argv: tuple[str, ...]) -> list[str]:
        if argv[0].endswith(".py"):
            return [sys.executable, str(ROOT / argv[0]), *argv[1:], "--help"]
        return [str(Path(sys.executable).parent / argv[0]), *argv[1:], "--help"]

    def prefetch(self, argvs: Iterable[tuple[str, ...]]) -> None:
        todo = [a for a in dict.fromkeys(argvs) if a not in self._text]
        with ThreadPoolExecutor(4) as pool:
            for argv, result in zip(todo, pool.map(self._run, todo)):
                self._text[argv] = result

    def _run(self, argv: tuple[str, ...]) -> tuple[int, str]:
        try:
            done = subprocess.run(self.command(argv), capture_output=True, text=True, timeout=120, cwd=ROOT)
        except (OSError, subprocess.TimeoutExpired) as e:
            return 127, str(e)
        return done.returncode, done.stdout + done.stderr

    def get(self, argv: tuple[str, ...]) -> tuple[int, str]:
        if argv not in self._text:
            self._text[argv] = self._run(argv)
        return self._text[argv]


def node_parameters() -> dict[str, object]:
    """The node's declared parameters and their defaults (m2s_stereo.params, without rclpy)."""
    sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "m2s_stereo"))
    try:
        from m2s_stereo import params as P
    finally:
        sys.path.pop(0)
    return {p.name: p.default for p in P.PARAMS}


def launch_arguments(path: Path = LAUNCH_FILE) -> set[str]:
    """The launch file's DeclareLaunchArgument names, read from its source (no launch install needed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
            elif node.args and isinstance(node.args[0], ast.Name):  # one per entry of a literal dict: INPUTS
                for assign in ast.walk(tree):
                    if isinstance(assign, (ast.Assign, ast.AnnAssign)) and isinstance(assign.value, ast.Dict):
                        targets = assign.targets if isinstance(assign, ast.Assign) else [assign.target]
                        if any(getattr(t, "id", None) == "INPUTS" for t in targets):
                            names |= {k.value for k in assign.value.keys if isinstance(k, ast.Constant)}
    return names


@dataclass
class Invocation:
    use: Use
    argv: tuple[str, ...]  # the tool (or script) and its subcommand, as --help is asked
    flags: list[str]
    params: list[str]  # node parameters named (-p NAME:= / --param NAME=)


def _invocations(use: Use, scripts: dict[str, str], report: Report) -> Iterator[Invocation]:
    modules = {module: name for name, module in scripts.items()}
    for seg in _segments(_tokens(use.text)):
        for i, token in enumerate(seg):
            tool = None
            if token in scripts:
                tool = token
            elif token == "-m" and i + 1 < len(seg) and seg[i + 1] in modules:
                tool, i = modules[seg[i + 1]], i + 1
            elif re.fullmatch(r"m2s-[a-z-]+", token) and i == 0:
                report.problems.append(f"{use.doc}:{use.line}: '{token}' is not a command of this package "
                                       f"({', '.join(sorted(scripts))})")
                break
            elif re.fullmatch(r"(benchmarks|scripts)/[\w-]+\.py", token):
                tool = token
            if tool is None:
                continue
            rest = seg[i + 1:]
            yield Invocation(use, (tool,), [t.split("=")[0] for t in rest if FLAG.fullmatch(t.split("=")[0])],
                             _param_names(tool, rest))
            break


def _param_names(tool: str, rest: list[str]) -> list[str]:
    names = []
    for a, b in zip(rest, rest[1:]):
        if tool == "m2s-stereo-node" and a == "-p" and ":=" in b:
            names.append(b.split(":=")[0])
        elif tool == "m2s-eval-bag" and a == "--param" and "=" in b:
            names.append(b.split("=")[0])
    return names


def _launch_uses(use: Use) -> Iterator[tuple[str, str]]:
    """(argument, 'launch') for each NAME:= of `ros2 launch m2s_stereo stereo.launch.py`."""
    for seg in _segments(_tokens(use.text)):
        if seg[:4] == ["ros2", "launch", "m2s_stereo", "stereo.launch.py"]:
            for token in seg[4:]:
                if ":=" in token:
                    yield token.split(":=")[0], token


def _subcommands(help_text: str) -> list[str]:
    """The subcommands argparse lists under "positional arguments" (`COMMAND ...` in the usage), if any."""
    usage, _, rest = help_text.partition("positional arguments:")
    if not re.search(r"(\S+) \.\.\.", usage.split("\n\n")[0]):
        return []
    section = rest.split("\n\n")[0].splitlines()
    names = [m.group(1) for line in section if (m := re.match(r"^    ([\w][\w-]*)", line))]
    if not names:
        names = [n for line in section if (m := re.match(r"^  \{([\w,-]+)\}", line)) for n in m.group(1).split(",")]
    return names


def check(files: Iterable[Path] | None = None) -> Report:
    report = Report()
    scripts = {name: module for name, module in console_scripts().items() if name.startswith("m2s-")}
    if not scripts:
        report.unchecked.append(f"the '{DIST}' package is not installed: no commands checked")
        return report
    helps = HelpCache()
    files = list(files) if files is not None else None
    uses = [u for f in (files or doc_files()) for u in command_uses(Path(f))]
    invocations = [inv for u in uses for inv in _invocations(u, scripts, report)]
    helps.prefetch(inv.argv for inv in invocations if inv.flags or inv.argv[0] in scripts)
    # subcommands: the first word after a tool that has them
    resolved: list[Invocation] = []
    for inv in invocations:
        tool = inv.argv[0]
        if tool.endswith(".py") and not (ROOT / tool).is_file():
            report.problems.append(f"{inv.use.doc}:{inv.use.line}: {tool} does not exist")
            continue
        if not inv.flags and tool.endswith(".py"):
            continue
        rc, text = helps.get(inv.argv)
        subs = _subcommands(text) if rc == 0 else []
        if subs:
            words = [t for t in _segment_after(inv) if not t.startswith("-")]
            if words and all(w in subs for w in words[0].split("/")):  # `m2s-train pretrain/finetune`
                inv.argv = (tool, words[0].split("/")[0])
            elif words and words[0] not in ("...",):
                report.problems.append(f"{inv.use.doc}:{inv.use.line}: '{tool} {words[0]}': no such subcommand "
                                       f"({', '.join(subs)})")
                continue
        resolved.append(inv)
    helps.prefetch(inv.argv for inv in resolved)
    declared = node_parameters()
    for inv in resolved:
        where = f"{inv.use.doc}:{inv.use.line}"
        rc, text = helps.get(inv.argv)
        missing = re.search(r"No module named '([\w.]+)'", text)
        if rc != 0 and missing:
            report.unchecked.append(f"{where}: {' '.join(inv.argv)} --help needs {missing.group(1)} "
                                    "(not installed here)")
            continue
        if rc != 0:
            last = (text.strip().splitlines() or ["no output"])[-1]
            report.problems.append(f"{where}: {' '.join(inv.argv)} --help failed: {last}")
            continue
        known = set(FLAG.findall(text)) | {"--help"}
        for flag in inv.flags:
            report.checked += 1
            if flag not in known:
                report.problems.append(f"{where}: {' '.join(inv.argv)} has no flag {flag} (see its --help)")
        for name in inv.params:
            report.checked += 1
            if name not in declared:
                report.problems.append(f"{where}: the node declares no parameter '{name}'")
    launch_args = launch_arguments()
    for use in uses:
        for name, token in _launch_uses(use):
            report.checked += 1
            if name not in launch_args:
                report.problems.append(f"{use.doc}:{use.line}: stereo.launch.py declares no argument '{name}' "
                                       f"({token}; it has {', '.join(sorted(launch_args))})")
    if files is None or NODE_DOC.resolve() in {Path(f).resolve() for f in files}:
        report.problems += parameter_table_problems(declared)
    return report


def _segment_after(inv: Invocation) -> list[str]:
    for seg in _segments(_tokens(inv.use.text)):
        for i, token in enumerate(seg):
            if token == inv.argv[0] or (token == "-m" and i + 1 < len(seg)
                                         and seg[i + 1] == console_scripts().get(inv.argv[0])):
                return seg[i + 1 + (token == "-m"):]
    return []


def parameter_table(path: Path = NODE_DOC) -> dict[str, str]:
    """The rows of the node page's parameter table: name -> default as written (`` `x` ``)."""
    rows = {}
    text = path.read_text(encoding="utf-8")
    table = text.split("<!-- parameters -->")
    if len(table) < 3:
        return rows
    for line in table[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def format_default(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def parameter_table_problems(declared: dict[str, object], path: Path = NODE_DOC) -> list[str]:
    rows = parameter_table(path)
    doc = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    if not rows:
        return [f"{doc}: no parameter table between '<!-- parameters -->' markers"]
    problems = [f"{doc}: the node declares '{n}' but the parameter table does not list it"
                for n in declared if n not in rows]
    problems += [f"{doc}: the parameter table lists '{n}', which the node does not declare" for n in rows
                 if n not in declared]
    problems += [f"{doc}: the parameter table gives '{n}' the default {rows[n]}, the node {format_default(v)}"
                 for n, v in declared.items() if n in rows and rows[n] != format_default(v)]
    return problems


def markdown_parameter_table() -> str:
    """The node page's parameter table from m2s_stereo.params (``--parameter-table`` prints it to paste)."""
    sys.path.insert(0, str(ROOT / "ros2_ws" / "src" / "m2s_stereo"))
    try:
        from m2s_stereo import params as P
    finally:
        sys.path.pop(0)
    lines = ["| parameter | default | values | at start only | what |", "|---|---|---|---|---|"]
    for p in P.PARAMS:
        values = " \\| ".join(p.choices) if p.choices else (f"{p.range[0]} .. {p.range[1]}" if p.range else
                                                             "true \\| false" if isinstance(p.default, bool) else "")
        lines.append(f"| `{p.name}` | `{format_default(p.default)}` | {values} | {'yes' if p.read_only else ''} | "
                     f"{p.description.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", help="markdown files (default: README.md and docs/**/*.md)")
    parser.add_argument("--parameter-table", action="store_true",
                        help="print the node page's parameter table (from m2s_stereo.params) and exit")
    args = parser.parse_args(argv)
    if args.parameter_table:
        print(markdown_parameter_table())
        return 0
    files = [Path(a).resolve() for a in args.files] or None
    report = check(files)
    for line in report.unchecked:
        print(f"unchecked: {line}")
    for line in report.problems:
        print(f"error: {line}")
    print(f"{report.checked} flags/parameters checked, {len(report.problems)} problem(s), "
          f"{len(report.unchecked)} unchecked")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
