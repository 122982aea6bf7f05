"""Built-in TOML configs of the ablation study and the demo."""
