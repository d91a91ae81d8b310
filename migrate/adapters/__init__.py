"""Adapters: the only modules that touch files, programs and networks outside the tool."""
