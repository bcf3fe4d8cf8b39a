"""The running parts of the system, each ensured, started, stopped and checked through a connector."""
