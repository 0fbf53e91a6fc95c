"""HTTP handlers: thin. Parse and validate, call one service method, write."""
