"""An adapter with no tools (neither the module nor the class)."""


class Empty:
    def not_a_tool(self):
        return None
