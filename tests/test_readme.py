"""The README's commands cannot rot: every `python -m` module it names exists and takes every flag the
README gives it, every `make` target and DVC stage it names exists. (`dvc exp run` commands are run
with --dry in tests/test_pipeline.py.)"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flows.dag import read_stages

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def commands() -> list[str]:
    """Shell commands of the README: indented code lines and `inline code` spans (comments removed)."""
    found = [ln.strip() for ln in README.splitlines() if ln.startswith("    ") and not ln.startswith("     ")]
    found += re.findall(r"`([^`]+)`", README)
    return [c.split(" # ")[0].strip() for c in found]


def python_m() -> list[list[str]]:
    """Each `python -m MODULE args...` (also inside `torchrun ... -m` and `$(...)`), placeholders dropped."""
    out = []
    for cmd in commands():
        for m in re.finditer(r"(?:python -m|torchrun[^$]*? -m) ([\w.]+)((?: [^$&|)]*)?)", cmd):
            args = shlex.split(m.group(2).split("$(")[0]) if m.group(2) else []
            if "<" not in m.group(0) and not m.group(1).endswith("."):  # `stages.<stage>`: a placeholder
                out.append([m.group(1), *args])
    return out


def help_text(module: str) -> str:
    """`--help` of a module, in-process (argparse prints and exits 0)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code in (0, None), module
    return buf.getvalue()


def test_the_readme_names_commands():
    modules = {c[0] for c in python_m()}
    assert {"flows.pipeline", "flows.stage", "flows.tracking", "flows.dag", "stages.evaluate",
            "reasoning.chat", "reasoning.generate", "bench.decode"} <= modules


@pytest.mark.parametrize("command", python_m(), ids=lambda c: " ".join(c)[:60])
def test_every_python_m_command_takes_its_flags(command):
    module, *args = command
    if module == "flows.stage":  # flows.stage <stage> [flags]: the flags are the stage's own
        stage, *args = args
        assert stage in read_stages(ROOT), stage
        module = f"stages.{stage}"
    elif module == "flows.dag":
        assert args[0] == "args" and args[1] in read_stages(ROOT)
        return
    text = help_text(module)
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", text), f"README: `python -m {module}` does not take {flag}"


def test_flows_dag_args_give_each_stage_its_dvc_arguments(capsys):
    from flows import dag

    for stage in ("evaluate", "distill_sft", "grpo"):  # what the README's torchrun command takes
        assert dag.main(["args", stage]) == 0
        printed = shlex.split(capsys.readouterr().out)
        for flag in (a for a in printed if a.startswith("--")):
            assert flag in help_text(f"stages.{stage}"), (stage, flag)


def test_make_targets_and_dvc_stages_named_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"\bmake ([\w-]+)", README)):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"README names `make {target}`"
    stages = read_stages(ROOT)
    for cmd in commands():
        for m in re.finditer(r"dvc (?:repro|commit|exp run)((?: [\w-]+)*)", cmd):
            for word in m.group(1).split():
                if word.startswith("-"):
                    break  # the stage names come before the options
                assert word in stages, f"README: `{m.group(0)}` names no stage of dvc.yaml"


def test_the_readme_transformers_snippet_chats_with_an_export(tiny_ckpt):
    """The README's `python -c` that loads a trained model in transformers runs as written on an export."""
    pytest.importorskip("transformers")
    text = README
    start = text.index('    python -c "\n    from transformers')
    block = text[start:text.index('"\n', start + 20) + 1]
    code = "\n".join(line[4:] for line in block.splitlines())  # the README indents code by 4 spaces
    snippet = code.removeprefix('python -c "').removesuffix('"').replace("data/models/sft", str(tiny_ckpt))
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
