"""The command line without a server: help everywhere, usage errors, and
errors as JSON for scripts."""
import argparse
import json

import pytest

from dmclient import Client, cli


def commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from commands(sub, (*prefix, name))


def test_help_everywhere(capsys):
    names = list(commands(cli.build_parser()))
    assert {("init",), ("device", "add"), ("device", "list"), ("device", "revoke"), ("dm", "new"), ("dm", "list"),
            ("dm", "send"), ("dm", "read"), ("dm", "listen"), ("dm", "history"), ("dm", "retention")} <= set(names)
    for name in [(), *names]:
        with pytest.raises(SystemExit) as exc:
            cli.main([*name, "--help"])
        assert exc.value.code == 0
        assert "usage: python -m dmclient" in capsys.readouterr().out


def test_errors_are_json_with_a_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", "x")
    assert cli.main(["--home", str(tmp_path / "none"), "dm", "list", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "no_store"
    # a store for a server that is not there (port 9: discard, nothing listens)
    Client.init(tmp_path / "home", "x", server="http://127.0.0.1:9", name="laptop", kdf="min", register=False).close()
    home = ["--json", "--home", str(tmp_path / "home")]
    assert cli.main([*home, "dm", "new", "not-a-key"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "invalid_user_id"
    assert cli.main([*home, "dm", "list"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "network_error"
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", "y")
    assert cli.main([*home, "whoami"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "wrong_passphrase"


def test_options_before_or_after_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", "x")
    for argv in (["--json", "--home", str(tmp_path), "whoami"], ["whoami", "--json", "--home", str(tmp_path)]):
        assert cli.main(argv) == 1
        assert json.loads(capsys.readouterr().out)["error"] == "no_store"
