"""Kernel side of the sandbox: runs inside the confined child process, standard library only."""
