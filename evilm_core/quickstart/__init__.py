"""`evilm quickstart`: the bundled small recipes and the stage runner."""
