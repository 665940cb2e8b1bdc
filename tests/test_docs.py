"""The README stays true to the code: every flag is documented, and CI runs the README's test command."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

import train
import tune
import visualize

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("parser", [train.build_parser(), visualize.build_parser(), tune.build_parser()],
                         ids=["train", "visualize", "tune"])
def test_every_flag_is_in_the_readme(parser):
    flags = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    flags -= {"--help", "--no-double-dqn"}  # documented beside --double-dqn
    missing = sorted(flag for flag in flags if f"`{flag}`" not in README)
    assert not missing, f"flags not documented in README.md: {missing}"


def test_ci_runs_the_readmes_test_command():
    commands = re.findall(r"```bash\n(.+?)\n```", README)
    test_command = next(command for command in commands if "pytest" in command)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_the_readmes_python_example_runs(tmp_path, capsys, monkeypatch):
    (example,) = re.findall(r"```python\n(.+?)\n```", README, re.DOTALL)
    monkeypatch.chdir(ROOT)
    exec(compile(example.replace("/tmp/my-run", str(tmp_path / "my-run")), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("CartPole-v1 [500. 500. 500. 500. 500.]")
    assert printed[1].split()[0] == "5000"
    assert (tmp_path / "my-run.weights.h5").exists()
