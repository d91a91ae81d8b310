"""Pipeline stages of a migration: build (and later checkpoint, render, restore, verify)."""
