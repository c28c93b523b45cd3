"""``python -m grpokit.config`` prints the config reference (docs/config.md is this output)."""

from grpokit.config.load import reference_markdown

print("| key | default | meaning |\n|---|---|---|\n" + reference_markdown())
