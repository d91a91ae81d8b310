"""The command-line interface: parse, build settings, make one call, render."""
