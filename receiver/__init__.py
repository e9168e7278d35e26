"""A webhook-driven receiver for Kling 3.0 video jobs on Apiframe and Runbase."""

__version__ = "0.1.0"
