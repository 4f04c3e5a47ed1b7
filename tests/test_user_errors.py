"""A user's mistake on the command line (CUDA asked for on a machine without it, a missing file, a
bad vocabulary or config key) is one message and exit status 1 in tools/demo.py,
tools/web_demo.py, tools/pseudo_label.py and tools/train_net.py; a bug keeps its traceback."""

import os
import subprocess
import sys

import pytest
import torch

from vilseg_d2.errors import UserError, run_tool

from helpers import ROOT, TINY_CONFIG, load_script

CUDA_MESSAGE = "error: CUDA was requested (MODEL.DEVICE=cuda) but is not available"
CPU_HINT = "or pass MODEL.DEVICE cpu to run on CPU."


def test_demo_without_cuda_is_one_message(tmp_path):
    """As a new user tries it: the tiny config asks for CUDA (Detectron2's default)."""
    cmd = [sys.executable, "tools/demo.py", "--config-file", "configs/vilseg_tiny.yaml",
           "--input", "README.md", "--vocabulary", "cat; dog",
           "--output", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine with one
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"demo.py: {CUDA_MESSAGE}") and last.endswith(CPU_HINT)


def run_cli(tool: str, argv: list, capsys) -> str:
    """``tools/<tool>.py argv`` as its ``__main__`` runs it; the one line it prints."""
    module = load_script(f"tools/{tool}.py", f"vilseg_{tool}_cli")
    entry = getattr(module, "launch_main", module.main)
    with pytest.raises(SystemExit) as exit_:
        run_tool(entry, argv, prog=f"{tool}.py")
    assert exit_.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines, f"{tool}: nothing printed"
    return lines[-1]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def tool_argv(tool: str, tmp_path) -> list:
    """The least each tool takes besides its config."""
    return {
        "demo": ["--input", f"{ROOT}/README.md", "--vocabulary", "cat", "--output", str(tmp_path)],
        "web_demo": [],
        "pseudo_label": ["--images", str(tmp_path), "--name", "x", "--output", str(tmp_path)],
        "train_net": [],
    }[tool]


TOOLS = ("demo", "web_demo", "pseudo_label", "train_net")


@pytest.mark.parametrize("tool", TOOLS)
def test_no_cuda_is_one_message(tool, tmp_path, capsys, no_cuda):
    line = run_cli(tool, ["--config-file", TINY_CONFIG, *tool_argv(tool, tmp_path)], capsys)
    assert line.startswith(f"{tool}.py: {CUDA_MESSAGE}") and line.endswith(CPU_HINT)


@pytest.mark.parametrize("tool", TOOLS)
def test_missing_config_file_is_one_message(tool, tmp_path, capsys):
    config = str(tmp_path / "no_such.yaml")
    line = run_cli(tool, ["--config-file", config, *tool_argv(tool, tmp_path)], capsys)
    assert line.startswith(f"{tool}.py: error: --config-file {config}: no such file")


def test_other_mistakes_are_one_message(tmp_path, capsys):
    cpu = ["--opts", "MODEL.DEVICE", "cpu"]
    missing = tmp_path / "missing.png"
    demo = ["--config-file", TINY_CONFIG, "--output", str(tmp_path), "--input"]
    line = run_cli("demo", [*demo, str(missing), "--vocabulary", "cat", *cpu], capsys)
    assert line == f"demo.py: error: --input {missing}: no such file or folder."
    line = run_cli("demo", [*demo, f"{ROOT}/README.md", "--vocabulary", "cat; Cat", *cpu], capsys)
    assert line.startswith("demo.py: error: The vocabulary names these classes more than once")
    weights = tmp_path / "missing.pth"
    line = run_cli("web_demo", ["--config-file", TINY_CONFIG, *cpu, "MODEL.WEIGHTS", str(weights)],
                   capsys)  # fmt: skip
    assert line.startswith(f"web_demo.py: error: Checkpoint {weights} not found (MODEL.WEIGHTS")
    folder = tmp_path / "no_images_here"
    argv = ["--config-file", TINY_CONFIG, "--images", str(folder), "--name", "x", "--output",
            str(tmp_path), "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(weights)]  # fmt: skip
    assert run_cli("pseudo_label", argv, capsys) == (
        f"pseudo_label.py: error: --images {folder} is not a folder."
    )
    argv = ["--config-file", TINY_CONFIG, "MODEL.DEVICE", "cpu", "MODEL.VILSEG.NUM_CLUSTER", "3"]
    assert run_cli("train_net", argv, capsys).startswith(
        "train_net.py: error: Unknown config key MODEL.VILSEG.NUM_CLUSTER. Did you mean "
        "MODEL.VILSEG.NUM_CLUSTERS?"
    )


def test_web_demo_without_gradio_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio: ModuleNotFoundError
    for name in ("vilseg_d2.app.page", "vilseg_d2.app.server"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    line = run_cli("web_demo", ["--config-file", TINY_CONFIG, "--opts", "MODEL.DEVICE", "cpu"],
                   capsys)  # fmt: skip
    assert line == (
        "web_demo.py: error: The web demo needs Gradio: pip install -e '.[app]' in the "
        "repository (`make app` does it)."
    )


def test_a_bug_keeps_its_traceback(capsys):
    def broken():
        return {}["no such key"]

    with pytest.raises(KeyError, match="no such key"):
        run_tool(broken)

    def mistaken(name):
        raise UserError(f"{name} is not a class")

    with pytest.raises(SystemExit):
        run_tool(mistaken, "dgo", prog="tool.py")
    assert capsys.readouterr().err == "tool.py: error: dgo is not a class\n"
