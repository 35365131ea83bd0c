"""The apps depend one way: dms builds on devices, devices never imports dms
(it reaches the mailbox through devices.mailbox, registered by dms)."""
import ast
from pathlib import Path

from devices.mailbox import mailbox
from dms import services as dms_services

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_devices_never_imports_dms():
    for path in (BASE_DIR / "devices").rglob("*.py"):
        if "migrations" not in path.parts:
            assert not {n for n in _imports(path) if n == "dms" or n.startswith("dms.")}, path


def test_dms_registers_itself_as_the_mailbox():
    assert mailbox() is dms_services
