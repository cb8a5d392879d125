"""Exports of the compiled table for other tools (a Wireshark plugin)."""

from __future__ import annotations

from portwatch.export.wireshark import PLUGIN_FILENAME, plugin_bytes, render_plugin

__all__ = ["PLUGIN_FILENAME", "plugin_bytes", "render_plugin"]
