from dmclient.cli import entry

entry()
