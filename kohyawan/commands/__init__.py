"""The click commands, one module per command group: thin skins that parse options, call the library and
print. ``kohyawan/cli.py`` names them, imports one only when it is invoked, and is the only place that
turns errors into exit codes (see docs/architecture.md, "Errors and exit codes").
"""
