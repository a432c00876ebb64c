"""Every `sendvae <command> --flag` the reproduction guide and the README show must exist.

The docs are read as a user would copy them: fenced code blocks line by line (with `\\`
continuations joined, `&&` / `;` / `|` splitting one line into several commands), plus inline
code spans that start with `sendvae `. `torchrun ... -m sendvae_cli CMD` and
`python -m sendvae_cli CMD` count as `sendvae CMD`. Each command must be registered, and each
option token (`--flag`, `--flag=value`, `-n`, optional ones written `[--flag]`) must be one of
its options, as Typer's command tree holds them (no subprocess).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from sendvae_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "reproduce.md", ROOT / "README.md"]
# The paper's recipe, one command per stage: the guide must show each of them.
RECIPE = {"train-vae", "cache-latents", "train-sit", "sample", "fid", "recon", "probe"}

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`(sendvae [^`]+)`(?!`)")
PROGRAM = re.compile(r"(?:^|\s)(?:sendvae|-m sendvae_cli)\s+(.*)$")


def command_lines(text: str) -> list[str]:
    """The shell commands of a markdown text that run sendvae, as `CMD ARGS...` strings."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)  # shell comment
            for part in re.split(r"&&|;|\|", line):
                match = PROGRAM.search(part.strip())
                if match:
                    found.append(" ".join(match.group(1).split()))
    for span in INLINE.findall(text):
        found.append(span[len("sendvae "):].strip())
    return [line for line in found if line]


def click_commands() -> dict:
    group = typer.main.get_command(app)
    return dict(group.commands)


def options_of(command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":  # Typer ships its own click: no isinstance
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def problems_in(line: str, commands: dict) -> list[str]:
    tokens = shlex.split(line)
    name = tokens[0]
    if name.startswith("-"):  # `sendvae --help`, `sendvae --version`
        return [] if name in options_of(typer.main.get_command(app)) else [f"sendvae {name}: no such option"]
    if name not in commands:
        return [f"sendvae {name}: no such command (known: {', '.join(sorted(commands))})"]
    known = options_of(commands[name])
    bad = []
    for token in tokens[1:]:
        flag = token.strip("[]").split("=", 1)[0]
        if re.fullmatch(r"--?[A-Za-z][\w-]*", flag) and flag not in known:
            bad.append(f"sendvae {name}: no option {flag}")
    return bad


def test_parser_reads_blocks_continuations_chains_torchrun_and_inline_spans():
    text = (
        "Run `sendvae probe shapes --vae a` then:\n\n"
        "```bash\n"
        "pip install x && sendvae train-vae shapes \\\n  --steps 3   # comment --not-a-flag\n"
        "torchrun --nproc-per-node 8 -m sendvae_cli sample runs/sit -n 4\n"
        "echo sendvaex\n"
        "```\n"
    )
    assert command_lines(text) == ["train-vae shapes --steps 3", "sample runs/sit -n 4", "probe shapes --vae a"]


def test_checker_catches_unknown_commands_and_flags():
    commands = click_commands()
    assert problems_in("train-vae shapes --steps 3 [--no-noise]", commands) == []
    assert problems_in("train-vae shapes --stepz 3", commands) == ["sendvae train-vae: no option --stepz"]
    assert problems_in("train-vea shapes", commands)[0].startswith("sendvae train-vea: no such command")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_and_flag_in_the_docs_exists(doc):
    commands = click_commands()
    lines = command_lines(doc.read_text())
    assert lines, f"{doc.name} shows no sendvae command"
    bad = [problem for line in lines for problem in problems_in(line, commands)]
    assert not bad, f"{doc.name}:\n" + "\n".join(bad)


def test_the_guide_shows_every_stage_of_the_recipe():
    shown = {shlex.split(line)[0] for line in command_lines(DOCS[0].read_text())}
    assert RECIPE <= shown, f"docs/reproduce.md lacks: {', '.join(sorted(RECIPE - shown))}"
