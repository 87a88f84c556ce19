"""The README as GitHub shows it: every table renders, with every row as wide as its header."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import markdown_tables

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_render():
    """A ``|`` in a cell (``max |Δ|``, ``--precision fp16|int8``) split it, and shifted or hid the row."""
    text = README.read_text()
    expected_tables = sum(1 for line in text.splitlines() if line.lstrip().startswith(("|---", "| ---")))
    tables = markdown_tables(text)
    assert len(tables) == expected_tables
    for rows in tables:
        assert len(set(rows)) == 1, rows


def commands_block(text: str) -> dict[str, str]:
    """The README's "Commands" block, as the text of each command's line and its continuations."""
    block = text.split("## Commands\n\n```\n", 1)[1].split("```", 1)[0]
    found: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        if line.startswith("flexiexport "):
            name = line.split()[1]
            found[name] = found.get(name, "") + line + "\n"
        elif line.startswith(" ") and name:
            found[name] += line + "\n"
    return found


def test_the_cpu_only_install_line_installs_a_torch_pyproject_accepts():
    """An unpinned CPU line could install torch 2.13.0, which the pin refuses: pip then pulled the
    6 GB CUDA build. The README also says why 2.13.0 is excluded."""
    import re
    import sys

    from packaging.specifiers import SpecifierSet

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    text = README.read_text()
    lines = [line for line in text.splitlines() if "download.pytorch.org/whl/cpu" in line]
    assert lines, "the README has no CPU-only torch line"
    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    (torch,) = [d for d in pyproject["project"]["dependencies"] if re.match(r"torch\b", d)]
    accepted = SpecifierSet(torch.removeprefix("torch"))
    for line in lines:
        pinned = re.search(r'pip install "?torch==([0-9][0-9a-z.+]*)"?', line)
        assert pinned, f"the CPU line names no torch version: {line.strip()}"
        assert pinned[1] in accepted, (pinned[1], str(accepted))
    assert "!=2.13.0" in torch and "Why not 2.13.0" in text


def test_the_commands_block_names_every_command_and_option():
    """predict, build's --labels and --seed were missing: a new user reads this block first."""
    import click

    from exporter.cli import app  # noqa: F401 - registers the commands
    from exporter.cli.group import cli

    block = commands_block(README.read_text())
    missing = []
    for name, command in cli.commands.items():
        text = block.get(name)
        if text is None:
            missing.append(name)
            continue
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden or param.name in ("debug", "help"):
                continue
            names = param.opts + param.secondary_opts  # -ps as well as --patch-size
            flag_pair = [f"--[no-]{o.removeprefix('--')}" for o in param.opts if param.secondary_opts]
            if not any(re.search(r"(?<![\w-])" + re.escape(o) + r"(?![\w-])", text) for o in names + flag_pair):
                missing.append(f"{name} {names[0]}")
    assert not missing, missing


def test_the_readmes_predict_lines_run_as_written(tmp_path_factory, monkeypatch):
    """``flexiexport predict bundles/flexivit-demo docs/digit.png ...``, from the repository root,
    on the demo bundle (this machine's latencies written in, so the budget's answer is known)."""
    import json
    import shlex

    from exporter.core.machine import machine_key

    from conftest import build_demo, copy_into, run_cli

    bundle = copy_into(build_demo(tmp_path_factory), tmp_path_factory.mktemp("readme"))
    rows = [
        {"backend": "ort-cpu", "variant": k, "batch": 1, "p50_ms": 0.1, "p99_ms": 0.2} for k in ("p8", "p16", "p32")
    ]
    (bundle / "bench.json").write_text(json.dumps({"machine": {"cpu": machine_key()["cpu"]}, "timings": rows}))
    monkeypatch.chdir(README.parent)
    lines = [line for line in README.read_text().splitlines() if line.startswith("flexiexport predict bundles/flex")]
    assert len(lines) >= 3
    for line in lines:
        args = shlex.split(line, comments=True)[1:]
        assert args[1] == "bundles/flexivit-demo", line
        result = run_cli(*args[:1], str(bundle), *args[2:])
        assert result.exit_code == 0, (line, result.output, result.stderr)
        if "--json" in args:
            assert json.loads(result.stdout)["results"][0]["top"][0]["label"] == "3", line
        else:
            assert "docs/digit.png: 3 (" in result.stdout, (line, result.stdout)
