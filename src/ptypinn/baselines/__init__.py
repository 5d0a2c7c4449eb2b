"""Reconstruction arms we compare against: the iterative solver pty-chi (:mod:`.ptychi`).

Importing this package imports nothing heavy; pty-chi itself is imported only when a
reconstruction runs.
"""
