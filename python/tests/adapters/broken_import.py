"""An adapter module whose import fails."""

raise RuntimeError("import exploded")
