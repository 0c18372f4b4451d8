"""lora_tui: the terminal wizard (arrives with the wizard issue). Never imports torch."""
