"""The dashboard under /ui: jobs live, one job's history, dead letters, a submit form, budget and health."""

from receiver.ui.pages import routes

__all__ = ["routes"]
