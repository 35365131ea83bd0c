"""`pip install ./dmclient` into a fresh virtual environment (no Django, no
server code) gives a `dmc` that completes the README's walkthrough against a
live daphne."""
import shutil
import subprocess
import sys

import pytest

from tests.client.conftest import BASE_DIR, Cli

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def dmc(tmp_path_factory):
    root = tmp_path_factory.mktemp("standalone")
    # A copy of ./dmclient, so the build's own files (build/, *.egg-info) never land in the worktree.
    source = root / "src" / "dmclient"
    shutil.copytree(BASE_DIR / "dmclient", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # no --system-site-packages
    subprocess.run([venv / "bin" / "pip", "install", "-q", str(source)], check=True, capture_output=True, timeout=300)
    python = str(venv / "bin" / "python")
    root = root / "run"  # where the commands run: nothing to import here
    root.mkdir()
    assert subprocess.run([python, "-c", "import django"], capture_output=True).returncode != 0
    assert subprocess.run([python, "-c", "import decentcom"], capture_output=True, cwd=root).returncode != 0
    where = subprocess.run([python, "-c", "import dmclient.protocol as p; print(p.__file__)"], cwd=root,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv))
    return root, venv / "bin" / "dmc"


def test_pip_install_gives_a_dmc_that_runs_the_walkthrough_without_django(dmc, daphne_server, tmp_path):
    root, command = dmc
    person = lambda name: Cli(tmp_path / name, command=[str(command)], cwd=root)  # noqa: E731
    alice_phone = person("alice-phone").init(daphne_server.url, "Alice's phone")
    alice_laptop = alice_phone.add_device(tmp_path / "alice-laptop", "Alice's laptop")
    bob = person("bob").init(daphne_server.url, "Bob's laptop")
    assert bob.run("whoami")["user_id"] == bob.user_id
    cid = alice_phone.run("dm", "new", bob.user_id, "--policy", "ttl", "--ttl-days", "7")["conversation"][
        "conversation_id"]
    listening = alice_laptop.listen()
    listening.wait_event("connected")
    alice_phone.run("dm", "send", cid, "Hi Bob, lunch on Friday?")
    listening.wait_body("Hi Bob, lunch on Friday?")  # self-sync of what Alice sends from her phone
    assert bob.bodies() == ["Hi Bob, lunch on Friday?"]
    bob.run("dm", "send", cid[:8], "Friday works.")
    assert alice_phone.bodies() == ["Friday works."]
    listening.wait_body("Friday works.")
    devices = alice_phone.run("device", "list")["devices"]
    assert sorted(d["name"] for d in devices) == ["Alice's laptop", "Alice's phone"]
    history = alice_laptop.run("dm", "history", cid)["messages"]
    assert [m["body"] for m in history] == ["Hi Bob, lunch on Friday?", "Friday works."]
    shown = alice_phone.text("--help")
    assert shown.returncode == 0 and "jsonrpc" in shown.stdout
