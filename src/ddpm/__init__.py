"""DDPM training framework."""
