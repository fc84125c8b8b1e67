"""Optional integrations (import the submodule you need; each depends on an optional extra)."""
