"""First-party depthsel plugins.

They register through the ``depthsel`` entry-point group exactly like a
third-party package; the core (``depthsel``) never imports this package.
"""
