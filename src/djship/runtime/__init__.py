"""Code that runs inside each release, beside the generated production settings."""
