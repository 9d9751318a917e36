"""The pygame reference client: play a world with keyboard, mouse and sound."""
