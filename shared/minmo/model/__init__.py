"""The MinMo model: one module per paper component, each streaming through `init_state` / `step`."""
