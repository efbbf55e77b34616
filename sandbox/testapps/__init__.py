"""Django apps that only tests install in the sandbox (SANDBOX_EXTRA_APPS), never `make run`."""
