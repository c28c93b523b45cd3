"""Agentic rollouts: tool calls parsed from model turns (``tool_calls``), tools run with
timeouts (``tools``) and the sandboxed ``python`` tool (``python_tool``)."""
