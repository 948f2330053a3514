"""Every Python block of README.md runs against the default model, in order, in one namespace."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # blocks may write files (norms.csv)
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)


def test_readme_obsprop_commands_run(tmp_path, monkeypatch, capsys):
    """Every ``obsprop`` line of the README's bash blocks (the demo without figures, into a temp folder)."""
    import shlex

    from refimpl.commands import cli

    monkeypatch.chdir(tmp_path)
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S))
    lines = [line.split("#  ")[0].strip() for line in bash.splitlines() if line.startswith("obsprop ")]
    assert len(lines) >= 7
    for line in lines:
        argv = shlex.split(line, comments=True)[1:]
        if argv[0] == "demo":
            argv += ["--no-figures"]
        assert cli.main(argv) == 0, line
    assert (tmp_path / "obsprop-demo" / "summary.md").exists()
