"""Launchers: a fresh process per cell (local pool, fork server, child, lifeline, Ray) and the shared sweep."""
