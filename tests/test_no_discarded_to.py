"""No project code calls ``.to(...)`` and throws the result away.

``tensor.to(device)`` returns a new tensor and leaves the original where it was, so a bare ``x.to(device)``
statement is a silent placement bug (``nn.Module.to`` happens to work in place, but the rule is the same
everywhere: ``m = m.to(device)``). Every ``.py`` file of the project is parsed with ``ast``.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("server", "streaming", "clients", "benchmarks", "scripts", "tests")


def discarded_to_calls(source: str, filename: str = "<snippet>") -> list[int]:
    """Line numbers of expression statements whose call chain includes ``.to(...)`` (``x.to(d)``,
    ``m.to(d).eval()``…): the value is computed and dropped."""
    lines = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Expr):
            continue
        value = node.value.value if isinstance(node.value, ast.Await) else node.value
        while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            if value.func.attr == "to":
                lines.append(node.lineno)
                break
            value = value.func.value
    return lines


def project_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        files = [ROOT / name for name in listed]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the project's folders
        files = [p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")] + list(ROOT.glob("*.py"))
    return sorted(p for p in files if p.is_file() and ".venv" not in p.parts)


def test_detector_flags_discarded_results_only() -> None:
    snippet = (
        "import torch\n"
        "x = torch.zeros(1)\n"
        "x.to('cpu')\n"  # 3: flagged
        "model.to(device).eval()\n"  # 4: flagged (the moved module is dropped after eval())
        "x = x.to('cpu')\n"
        "self.net = net.to(device)\n"
        "y = [t.to(device) for t in ts]\n"
        "return_value = f(x.to(device))\n"
        "def f(a):\n"
        "    return a.to('cpu')\n"
        "async def g(a):\n"
        "    await a.to('cpu')\n"  # 12: flagged
        "x.cpu()\n"
        "logger.info('to')\n"
    )
    assert discarded_to_calls(snippet) == [3, 4, 12]


def test_project_never_discards_a_to_result() -> None:
    files = project_files()
    assert any(p.name == "test_no_discarded_to.py" for p in files)  # the file walk really finds the project
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in files
                 for line in discarded_to_calls(p.read_text(encoding="utf-8"), str(p))]
    assert not offenders, "assign every .to() result (m = m.to(device)): " + ", ".join(offenders)
