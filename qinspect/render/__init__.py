"""Rendering: report objects -> rich renderables or JSON. Never imports torch."""
