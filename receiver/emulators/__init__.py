"""Local stand-ins for Apiframe and Runbase, faithful to their public documentation."""
