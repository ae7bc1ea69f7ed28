"""Where sessions live: implementations of the core's session directory.

`memory` keeps them in the process (nothing survives a restart).
"""
