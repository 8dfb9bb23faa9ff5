"""The documentation: the site builds strictly, and what it names (commands, flags, node parameters) exists."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "scripts" / "check_docs.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_docs", CHECKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_site_builds_strict(tmp_path):
    """`mkdocs build --strict` as CI runs it: broken links, anchors, snippets or API references fail it."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    for page in ("getting-started", "cameras", "calibrate", "synthesize", "pretrain", "finetune", "evaluate", "model-zoo",
                 "export", "node", "replay", "troubleshooting", "measured", "design", "api"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "StereoCamera" in api and "disparity_to_depth" in api  # rendered from the docstrings
    measured = (site / "measured" / "index.html").read_text(encoding="utf-8")
    assert "bench_node_delivery.py" in measured and "--8&lt;--" not in measured  # the snippets were included
    import re

    assert not re.search(r":(class|func|meth|mod|data|attr|exc):", re.sub(r"<[^>]+>", "", api))  # no raw Sphinx roles


def markdown_problems(text: str, name: str = "page") -> list[str]:
    """Source lines that Markdown renders otherwise than they read: a sentence cut by a blank line (the rest
    becomes a new paragraph, or a list's bullet collapses into the one before), and a number at the start of a
    line inside a paragraph ("... exits\n2. For ...": an ordered list starts there)."""
    problems, fence = [], False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fence = not fence
        if fence or i == 0:
            continue
        before = lines[i - 1]
        if line.strip() == "" and i + 1 < len(lines):
            after = lines[i + 1].strip()
            prose = before.strip() and not before.lstrip().startswith(("|", "#", "<", "```", "!", "-->", "--8<--"))
            if prose and not re.search(r"[.:;!?)`*>]$|^\s*[-*] |\d\.$", before.strip()) and \
                    (after[:1].islower() or after.startswith("|") or re.match(r"\d+\. ", after)) \
                    and not after.startswith(("| ", "|-")):
                problems.append(f"{name}:{i}: a sentence cut by a blank line: '...{before.strip()[-40:]}' / '{after[:40]}...'")
        previous = next((p for p in reversed(lines[:i]) if p.strip()), "")  # the line this one continues
        in_list = bool(re.match(r"^\s*(\d+\.|[-*]) ", previous)) or previous.startswith((" ", "\t"))
        if in_list and (re.match(r"^ {1,3}(\d+\.|[-*]) ", line) or (
                re.match(r"^ {1,3}\S", line) and before.strip() == "" and not line.lstrip().startswith(("|", "<", "```")))):
            problems.append(f"{name}:{i + 1}: '{line.strip()[:30]}' is indented {len(line) - len(line.lstrip())} spaces: "
                            "a nested list or a paragraph inside a list item needs 4 (Python-Markdown), else it "
                            "leaves the list")
        if re.match(r"^([-*]|\d+\.) ", line) and before.strip():  # a list item right after a paragraph line
            k = i - 1
            while k > 0 and lines[k - 1].strip():
                k -= 1
            first = lines[k]
            if not re.match(r"^\s*([-*]|\d+\.) ", first) and not first.lstrip().startswith(("|", "<", "```", "#", "!")):
                problems.append(f"{name}:{i + 1}: '{line[:30]}' follows a paragraph without a blank line: "
                                "Python-Markdown reads it as more of that paragraph, not as a list item")
        if re.match(r"^\d+\. ", line) and before.strip() and not before.startswith((" ", "\t")) \
                and not re.match(r"^(\d+\.|[-*]) ", before) and not before.startswith(("|", "#", "<")):
            problems.append(f"{name}:{i + 1}: '{line[:30]}' starts an ordered list inside the paragraph above it")
    return problems


def test_markdown_renders_as_written():
    import re  # noqa: F401  (markdown_problems uses the module's import)

    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    problems = [p for page in pages for p in markdown_problems(page.read_text(encoding="utf-8"), page.name)]
    assert problems == []


def test_the_markdown_check_catches_what_broke_the_pages():
    assert markdown_problems("- **FP16** the union of\n  1. regions;\n  2. range.\n\n  The ranges come from\n")
    assert markdown_problems("- a\n    1. b\n\n    The ranges come from\n    this run.\n- **The check**\n")
    assert markdown_problems("- item one\n  goes on and the mean\n\n|Δconfidence| 1e-3. More\n")
    assert markdown_problems("the command exits\n\n2. For the model\n")  # "exits" + a list item "2."
    assert markdown_problems("the command exits\n2. For the model\n")
    assert markdown_problems("the command exits with\nstatus 2.\n\nFor the model's confidence\n") == []


def test_docs_name_only_real_commands_flags_and_parameters():
    checker = _checker()
    report = checker.check()
    assert report.problems == []
    assert report.checked > 150  # the README and the pages name this many flags and parameters
    if importlib.util.find_spec("torch"):  # the benchmarks' --help needs torch: everything is checked here
        assert report.unchecked == []


def test_a_wrong_flag_parameter_or_command_fails_the_check(tmp_path):
    """The check as a user runs it, on a page with one mistake of each kind: exit 1, each one named."""
    page = tmp_path / "wrong.md"
    page.write_text("""# A page with mistakes

```bash
m2s-train finetune --init runs/pre --dataset kitti2015:data/kitti --no-such-flag
m2s-stereo-node --ros-args -p model_path:=m.onnx -p confidence_treshold:=0.3
ros2 launch m2s_stereo stereo.launch.py engine_path:=m.engine
```

Fine-tune with `m2s-train fine-tune --init runs/pre`, evaluate with `m2s-eval-bag --bag b --model m --out r
--param temporal_filtr=true`, or time it with `python benchmarks/bench_node_delivery.py --seconds 5 --fps 3`.
""")
    done = subprocess.run([sys.executable, str(CHECKER), str(page)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    expected = ["m2s-train finetune has no flag --no-such-flag", "no parameter 'confidence_treshold'",
                "declares no argument 'engine_path'", "'m2s-train fine-tune': no such subcommand",
                "no parameter 'temporal_filtr'", "bench_node_delivery.py has no flag --fps"]
    for text in expected:
        assert any(text in e for e in errors), (text, errors)
    assert len(errors) == len(expected), errors


def test_parameter_table_matches_the_node(tmp_path):
    checker = _checker()
    declared = checker.node_parameters()
    assert checker.parameter_table_problems(declared) == []
    rows = (ROOT / "docs" / "node.md").read_text(encoding="utf-8").splitlines()
    edited = [line for line in rows if not line.startswith("| `temporal_confirm`")]
    edited = [line.replace("| `slop` | `0.01` |", "| `slop` | `0.02` |") for line in edited]
    edited.insert(edited.index("<!-- parameters -->") + 3, "| `fps_limit` | `30` | | | a parameter that went away |")
    page = tmp_path / "node.md"
    page.write_text("\n".join(edited))
    problems = checker.parameter_table_problems(declared, page)
    assert len(problems) == 3, problems
    assert any("declares 'temporal_confirm'" in p for p in problems)
    assert any("'slop' the default 0.02, the node 0.01" in p for p in problems)
    assert any("lists 'fps_limit'" in p for p in problems)


def test_no_page_installs_two_onnxruntimes_into_one_environment():
    """#36 item 6: the export page installed '.[export]' (CPU onnxruntime) and then onnxruntime-gpu into the same
    venv; both ship the onnxruntime module and the GPU providers came and went with the install order."""
    for page in sorted((ROOT / "docs").glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if re.search(r"pip install .*onnxruntime-gpu", line):  # commented-out commands are instructions too
                before = "\n".join(lines[max(0, i - 3):i])
                assert "pip uninstall -y onnxruntime" in before, f"{page.name}:{i + 1} adds onnxruntime-gpu beside onnxruntime"
