"""Registers the harness plugin when running from a checkout (the installed package registers it via pytest11)."""

pytest_plugins = ["harness.plugin"]
