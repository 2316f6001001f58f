"""The CLI's commands, one module per group: thin click adapters that build a config and call
the library (medvit_edge.cli holds the group, logging and error handling)."""
